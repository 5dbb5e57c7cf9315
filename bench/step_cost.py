"""Per-step cost probe: where gemma-serve's time goes outside `llama_decode`.

Starts gemma-serve under bench/step_probe.py (the real server with timing wrappers installed by
monkeypatching in its process: the server itself carries no hooks), then for chat streaming and
non-streaming, with 1, 4 and 8 concurrent sequences, sends one round of greedy chat requests and
reads the counters of that round: the engine thread's wall time per step split by stage, its CPU
time outside `llama_decode` per step, and the event loop thread's CPU time per streamed token.
Thread CPU time is far less sensitive to other load on the machine than wall time.

    .venv/bin/python bench/step_cost.py                        # ~1 minute on 2 cores
    .venv/bin/python bench/step_cost.py --sequences 1,8 --max-tokens 64 --modes stream

Prints a markdown table and the projection of the measured Python cost onto GPU step times
(`--gpu`, from published single-stream tok/s); writes bench/out/step_cost.md and .json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import report
import systems
from step_probe import STAGES
from streaming import DEFAULT_PROMPT, numbered_prompt

log = logging.getLogger("step_cost")

# Published single-stream decode tok/s on an RTX 4090 (Q4 GGUF, llama.cpp), see
# /work/shared/REFERENCE.md: a step at 1 stream is 1000/tok_s ms.
GPU_SINGLE_STREAM = {"4B": 195.0, "12B": 93.0, "27B": 47.0}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/step_cost.py", description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", default="1,4,8", help="concurrent sequences per round")
    parser.add_argument("--modes", default="stream,whole", help="stream and/or whole (no stream)")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=1, help="rounds per case (counters summed)")
    parser.add_argument("--server-args", default="", help="extra gemma-serve flags")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    args.sequence_counts = [int(n) for n in args.sequences.split(",") if n.strip()]
    args.mode_list = [m.strip() for m in args.modes.split(",") if m.strip()]
    return args


class Probe:
    """The instrumented server and its counters (SIGUSR1: write and reset)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.counters = args.out / "step_probe.json"
        port = systems.free_port()
        parallel = max(args.sequence_counts)
        argv = [
            sys.executable,
            str(Path(__file__).parent / "step_probe.py"),
            str(self.counters),
            "serve",
            *("--host", "127.0.0.1", "--port", str(port), "--model", systems.MODEL_ID),
            *("--threads", str(args.threads), "--ctx", str(args.ctx)),
            *("--parallel", str(parallel), *args.server_args.split()),
        ]
        spec = systems.ServerSpec("step-probe", "gemma-serve (probed)", argv, "/health")
        self.server = systems.start(spec, f"http://127.0.0.1:{port}", args.out / "logs")
        self._sent = 0

    def read(self) -> dict[str, Any]:
        """The counters since the last read."""
        self.counters.unlink(missing_ok=True)
        os.kill(self.server.process.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 30
        while not self.counters.exists():
            if time.monotonic() > deadline:
                raise RuntimeError("the probed server wrote no counters")
            time.sleep(0.05)
        return dict(json.loads(self.counters.read_text()))

    async def round(self, sequences: int, stream: bool) -> None:
        limits = httpx.Limits(max_connections=sequences)
        async with httpx.AsyncClient(timeout=600, limits=limits) as client:
            await asyncio.gather(*(self._one(client, stream) for _ in range(sequences)))

    async def _one(self, client: httpx.AsyncClient, stream: bool) -> None:
        self._sent += 1
        body: dict[str, Any] = {
            "model": systems.MODEL_ID,
            "messages": [{"role": "user", "content": numbered_prompt(DEFAULT_PROMPT, self._sent)}],
            "max_tokens": self.args.max_tokens,
            "temperature": 0,
            "stream": stream,
        }
        url = f"{self.server.base_url}/v1/chat/completions"
        if not stream:
            (await client.post(url, json=body)).raise_for_status()
            return
        body["stream_options"] = {"include_usage": True}
        async with client.stream("POST", url, json=body) as response:
            response.raise_for_status()
            async for _ in response.aiter_lines():
                pass


def figures(counters: dict[str, Any]) -> dict[str, float]:
    """Per-step wall ms by stage, engine CPU ms per step outside decode, loop CPU ms per token."""
    wall, counts, cpu = counters["wall_s"], counters["counts"], counters["engine_cpu_s"]
    steps = max(counts.get("step", 0), 1)
    tokens = max(counts.get("tokens", 0), 1)
    per_step = {stage: 1000 * wall.get(stage, 0.0) / steps for stage in STAGES if stage != "build"}
    inside = sum(per_step[s] for s in ("decode", "sample", "detokenise", "text", "deliver"))
    per_step["build"] = max(1000 * wall.get("step", 0.0) / steps - inside, 0.0)
    return {
        "steps": counts.get("step", 0),
        "tokens": counts.get("tokens", 0),
        **{f"{stage}_ms": value for stage, value in per_step.items()},
        "outside_decode_ms": sum(v for k, v in per_step.items() if k != "decode"),
        "engine_cpu_outside_decode_ms": 1000 * (cpu["step"] - cpu["decode"]) / steps,
        "loop_cpu_per_token_ms": 1000 * counters["loop_cpu_s"] / tokens,
        "loop_user_per_token_ms": 1000 * counters.get("loop_user_s", 0.0) / tokens,
        "loop_kernel_per_token_ms": 1000 * counters.get("loop_kernel_s", 0.0) / tokens,
        "loop": counters.get("loop", "?"),
    }


COLUMNS = [
    ("mode", "mode"),
    ("sequences", "seqs"),
    ("steps", "steps"),
    ("tokens", "tokens"),
    ("decode_ms", "decode"),
    ("build_ms", "build + rest"),
    ("sample_ms", "sample"),
    ("detokenise_ms", "detokenise"),
    ("text_ms", "text"),
    ("deliver_ms", "deliver"),
    ("between_ms", "between steps"),
    ("outside_decode_ms", "outside decode (wall)"),
    ("engine_cpu_outside_decode_ms", "engine CPU outside decode"),
    ("loop_cpu_per_token_ms", "loop CPU / token"),
    ("loop_user_per_token_ms", "of it user"),
    ("loop_kernel_per_token_ms", "of it kernel"),
    ("loop", "loop, parser"),
]


def table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        cells = [
            f"{row[key]:.3f}" if isinstance(row[key], float) else str(row[key])
            for key, _ in COLUMNS
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def projection(rows: list[dict[str, Any]]) -> list[str]:
    """The measured per-step Python cost added to a GPU step of each model (the step at 8 streams
    taken as the single-stream one: a lower bound, so the cost's share is an upper bound)."""
    lines = [
        "| model (4090, 1-stream tok/s) | streams | GPU step ms | engine outside decode ms "
        "| share of step | event loop busy per step |",
        "|---|---|---|---|---|---|",
    ]
    streamed = {row["sequences"]: row for row in rows if row["mode"] == "stream"}
    for model, tok_s in GPU_SINGLE_STREAM.items():
        step = 1000 / tok_s
        for streams in (1, 8):
            row = streamed.get(streams)
            if row is None:
                continue
            outside = row["engine_cpu_outside_decode_ms"]
            loop = row["loop_cpu_per_token_ms"] * streams
            lines.append(
                f"| {model} ({tok_s:.0f}) | {streams} | {step:.1f} | {outside:.2f} | "
                f"{outside / (step + outside):.1%} | {loop / (step + outside):.0%} |"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    machine = report.machine()
    probe = Probe(args)
    rows: list[dict[str, Any]] = []
    try:
        systems.wait_ready(probe.server, 300)
        asyncio.run(probe.round(1, True))  # warm-up
        for mode in args.mode_list:
            for sequences in args.sequence_counts:
                probe.read()
                for _ in range(args.rounds):
                    asyncio.run(probe.round(sequences, mode == "stream"))
                row = {"mode": mode, "sequences": sequences, **figures(probe.read())}
                log.info("%s", row)
                rows.append(row)
    finally:
        systems.stop(probe.server)
    load = machine["load_average"]
    lines = [
        f"# gemma-serve per-step cost{': ' + args.note if args.note else ''}",
        "",
        f"- machine: {machine['cpu']}, {machine['usable_cpus']} usable CPUs, load average "
        f"before {'/'.join(f'{x:.2f}' for x in load) if load else '?'}, after "
        f"{'/'.join(f'{x:.2f}' for x in os.getloadavg())}; commit {machine['gemma_serve_commit']}",
        f"- settings: {args.threads} threads, max_tokens {args.max_tokens}, greedy chat, "
        f"{args.rounds} round(s) per case, --parallel {max(args.sequence_counts)}",
        "- per step, ms (wall unless CPU); loop CPU per generated token",
        "",
        *table(rows),
        "",
        *projection(rows),
    ]
    report.publish(args.out, "step_cost", lines, {"machine": machine, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
