"""The instrumented gemma-serve that bench/step_cost.py talks to: `python bench/step_probe.py
OUT.json serve ...` runs the real server (`server.cli.main`) with timing wrappers around the engine
thread's stages, installed by monkeypatching in this process only (the server carries no hooks).

Stages of one engine step (`Scheduler._step`), wall time (perf_counter) unless named CPU:

| stage | what is timed |
|---|---|
| decode | `llama_decode` |
| sample | `SamplerChain.sample` (the greedy argmax, or llama.cpp's chain) |
| detokenise | `Scheduler._piece` (`llama_token_to_piece`) |
| text | `Sequence.accept` less the pushes inside it (UTF-8 assembly, stop strings, state) |
| deliver | `LlamaGeneration.push` and the step's one hand-off to the event loop after it |
| build | the rest of `_step`: building the batch, the per-row loop, bookkeeping |
| between | `Scheduler._drop_cancelled` (run before every step) |

The engine thread's CPU outside `llama_decode` is its thread CPU time over `_step` less that over
`llama_decode` (llama.cpp runs worker 0 of its pool on the calling thread). The event loop's CPU
is the main thread's (uvicorn runs the loop there) `time.thread_time()`.

STEP_PROBE_PROFILE=1 also profiles the event loop thread (see `_profile`).

SIGUSR1 writes the counters since the last SIGUSR1 to OUT.json (then renamed into place) and
resets them; the signal handler runs on the main thread, so it reads the event loop's CPU time.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

STAGES = ("decode", "sample", "detokenise", "text", "deliver", "build", "between")

wall: dict[str, float] = defaultdict(float)
counts: dict[str, int] = defaultdict(int)
engine_cpu = {"step": 0.0, "decode": 0.0}
_loop_cpu_at = [time.thread_time()]


def _loop_rusage() -> tuple[float, float]:
    """The calling (event loop) thread's user and kernel CPU seconds: the kernel's share is
    mostly the loopback TCP send of every chunk, which any server pays per chunk."""
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime, usage.ru_stime


_loop_rusage_at = [_loop_rusage()]
_pushes_in_accept = [0.0]


def _timed(stage: str, function: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            wall[stage] += time.perf_counter() - started
            counts[stage] += 1

    return wrapper


def install() -> None:
    import llama_cpp

    from server.engine import generation, scheduler, sequence
    from server.engine.sampling import SamplerChain

    real_decode = llama_cpp.llama_decode

    def decode(*args: Any) -> Any:
        cpu, started = time.thread_time(), time.perf_counter()
        try:
            return real_decode(*args)
        finally:
            wall["decode"] += time.perf_counter() - started
            engine_cpu["decode"] += time.thread_time() - cpu
            counts["decode"] += 1

    llama_cpp.llama_decode = decode

    real_step = scheduler.Scheduler._step

    def step(self: Any, batch: Any) -> None:
        cpu, started = time.thread_time(), time.perf_counter()
        try:
            real_step(self, batch)
        finally:
            wall["step"] += time.perf_counter() - started
            engine_cpu["step"] += time.thread_time() - cpu
            counts["step"] += 1

    scheduler.Scheduler._step = step  # type: ignore[method-assign]
    scheduler.Scheduler._drop_cancelled = _timed(  # type: ignore[method-assign]
        "between", scheduler.Scheduler._drop_cancelled
    )
    scheduler.Scheduler._piece = _timed("detokenise", scheduler.Scheduler._piece)  # type: ignore[method-assign]
    SamplerChain.sample = _timed("sample", SamplerChain.sample)  # type: ignore[method-assign]

    real_push = generation.LlamaGeneration.push

    def push(self: Any, item: object) -> None:
        started = time.perf_counter()
        try:
            real_push(self, item)
        finally:
            spent = time.perf_counter() - started
            wall["deliver"] += spent
            _pushes_in_accept[0] += spent
            counts["deliver"] += 1

    generation.LlamaGeneration.push = push  # type: ignore[method-assign]

    real_deliver = getattr(generation, "_deliver", None)
    if real_deliver is not None:  # the step's held events, handed over once after `_step`

        def deliver(*args: Any) -> None:
            cpu, started = time.thread_time(), time.perf_counter()
            try:
                real_deliver(*args)
            finally:
                spent = time.perf_counter() - started
                wall["deliver"] += spent
                wall["step"] += spent
                engine_cpu["step"] += time.thread_time() - cpu

        generation._deliver = deliver

    real_accept = sequence.Sequence.accept

    def accept(self: Any, *args: Any) -> Any:
        _pushes_in_accept[0] = 0.0
        started = time.perf_counter()
        try:
            return real_accept(self, *args)
        finally:
            wall["text"] += time.perf_counter() - started - _pushes_in_accept[0]
            counts["tokens"] += 1

    sequence.Sequence.accept = accept  # type: ignore[method-assign]


def _loop_kind() -> str:
    """The event loop class and HTTP parser in use (uvloop and httptools, or asyncio and h11)."""
    import asyncio

    try:
        loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    except RuntimeError:
        loop = "?"
    return f"{loop}, {'httptools' if 'httptools' in sys.modules else 'h11'}"


_profiler: list[Any] = []


def _profile(out: Path) -> None:
    """With STEP_PROBE_PROFILE set, the event loop thread runs under cProfile between dumps and
    each dump writes the top functions by own time beside OUT.json (slower: for finding where the
    loop's time goes, not for the figures)."""
    if not os.environ.get("STEP_PROBE_PROFILE"):
        return
    import cProfile
    import io
    import pstats

    if _profiler:
        _profiler[0].disable()
        text = io.StringIO()
        pstats.Stats(_profiler[0], stream=text).sort_stats("tottime").print_stats(30)
        stamp = time.strftime("%H%M%S")
        out.with_name(f"{out.stem}-profile-{stamp}.txt").write_text(text.getvalue())
        _profiler.clear()
    _profiler.append(cProfile.Profile())
    _profiler[0].enable()


def dump(out: Path) -> None:
    _profile(out)
    now = time.thread_time()
    user, kernel = _loop_rusage()
    record = {
        "loop": _loop_kind(),
        "wall_s": dict(wall),
        "counts": dict(counts),
        "engine_cpu_s": dict(engine_cpu),
        "loop_cpu_s": now - _loop_cpu_at[0],
        "loop_user_s": user - _loop_rusage_at[0][0],
        "loop_kernel_s": kernel - _loop_rusage_at[0][1],
    }
    wall.clear()
    counts.clear()
    engine_cpu.update(step=0.0, decode=0.0)
    _loop_cpu_at[0] = time.thread_time()
    _loop_rusage_at[0] = (user, kernel)
    partial = out.with_suffix(".partial")
    partial.write_text(json.dumps(record))
    os.replace(partial, out)


def main() -> int:
    out = Path(sys.argv[1])
    install()
    signal.signal(signal.SIGUSR1, lambda *_: dump(out))
    from server.cli import main as serve

    return serve(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
