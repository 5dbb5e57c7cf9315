"""The embedding engine on llama.cpp's real embedding path, with the tiny EmbeddingGemma
(tests/embedding_model.py: the real `gemma-embedding` architecture and the real tokenizer,
random weights): vectors against a numpy reference of mean pooling and normalisation, batching
that changes no vector beyond float noise, refusals before any work, and cancellation."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from server.engine.compute_threads import on_passing_thread
from server.engine.contract import EngineBusy
from server.engine.embedding_contract import EmbeddingRejected, shorten
from server.engine.embedding_engine import LlamaEmbeddingEngine
from tests.embedding_model import WIDTH

TEXTS = [
    "hello world",
    "The quick brown fox jumps over the lazy dog.",
    "x",
    "Embeddings put similar sentences near each other.",
    "¿Dónde está la biblioteca?",
]
NOISE = 1e-4  # float noise between batch shapes (llama.cpp's kernels differ by shape)


@pytest.fixture(scope="module")
def engine(embedding_model_path: Path) -> Iterator[LlamaEmbeddingEngine]:
    loaded = LlamaEmbeddingEngine(
        model_path=embedding_model_path,
        model_id="tiny-embeddinggemma",
        n_threads=2,
        matryoshka=(512, 256, 128),
        n_seq=4,
    )
    yield loaded
    loaded.close()


def embed(engine: LlamaEmbeddingEngine, texts: list[str]) -> np.ndarray:
    return np.array(asyncio.run(engine.embed([engine.tokenize(t) for t in texts])))


def native_threads() -> int:
    """OS threads Python did not start: llama.cpp's OpenMP workers."""
    return len(os.listdir("/proc/self/task")) - threading.active_count()


def test_embedding_batches_leave_no_compute_threads_behind(engine: LlamaEmbeddingEngine) -> None:
    """Batches decode on a thread of their own, which waits for the next batch while nothing else
    computes and ends once another thread does: a thread of asyncio's pool would keep its OpenMP
    team for the life of the server, one more than the chat engine's, and every chat decode step
    would then sleep at its barriers (server/engine/compute_threads.py)."""

    async def embed_and_count() -> tuple[int, int, int]:
        before = native_threads()
        for _ in range(3):
            await engine.embed([engine.tokenize(t) for t in TEXTS])
        lingering = native_threads()  # the embedding thread's team waits for the next batch
        await asyncio.to_thread(on_passing_thread, lambda: None)  # another thread computes
        deadline = time.monotonic() + 30  # a team's workers end shortly after its thread
        while native_threads() != before and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return before, lingering, native_threads()  # the loop's worker threads still live

    before, lingering, after = asyncio.run(embed_and_count())
    assert lingering > before
    assert after == before


def test_requests_beyond_the_queue_are_refused_at_once(embedding_model_path: Path) -> None:
    """One request is embedded and `max_waiting` wait behind it; the next is refused (the API
    answers 503 with Retry-After), never queued without bound."""
    small = LlamaEmbeddingEngine(
        model_path=embedding_model_path, model_id="tiny", n_threads=2, max_waiting=1
    )
    inputs = [small.tokenize(text) for text in TEXTS * 8]

    async def three_at_once() -> list[object]:
        return await asyncio.gather(
            *(small.embed(inputs) for _ in range(3)), return_exceptions=True
        )

    try:
        first, second, third = asyncio.run(three_at_once())
        assert isinstance(first, list) and isinstance(second, list)
        assert len(first) == len(second) == len(inputs)
        assert isinstance(third, EngineBusy) and third.retry_after == 1
        assert len(asyncio.run(small.embed(inputs[:1]))) == 1  # the places come back
    finally:
        small.close()


def test_info_reads_the_model(engine: LlamaEmbeddingEngine) -> None:
    info = engine.info
    assert (info.width, info.n_ctx, info.vocab_size) == (WIDTH, 2048, 262144)
    assert info.matryoshka == (128,)  # 512 and 256 are not shorter than this model's 256


def test_tokenisation_is_the_gemma_tokenizers(engine: LlamaEmbeddingEngine) -> None:
    assert engine.tokenize("hello world") == [2, 23391, 1902]  # <bos> hello ▁world


def test_vectors_match_a_numpy_reference_of_mean_pooling(
    engine: LlamaEmbeddingEngine, embedding_model_path: Path
) -> None:
    """llama.cpp's per-token outputs (pooling none, through llama-cpp-python's own high-level
    path), averaged and normalised in numpy, are the engine's vector: the dense projections are
    linear, so pooling before or after them is the same."""
    from llama_cpp import Llama

    tokens_out = Llama(
        str(embedding_model_path),
        embedding=True,
        pooling_type=0,
        n_ctx=2048,
        n_batch=2048,
        n_ubatch=2048,
        n_threads=2,
        verbose=False,
    )
    try:
        for text in TEXTS[:3]:
            per_token = np.array(tokens_out.embed(text, normalize=False))
            assert per_token.shape == (len(engine.tokenize(text)), WIDTH)
            mean = per_token.mean(axis=0)
            reference = mean / np.linalg.norm(mean)
            [vector] = embed(engine, [text])
            assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-6)
            assert float(np.dot(vector, reference)) > 0.999
            assert np.allclose(vector, reference, atol=5e-3)
    finally:
        tokens_out.close()


def test_batching_and_order_do_not_change_a_vector(engine: LlamaEmbeddingEngine) -> None:
    alone = np.array([embed(engine, [text])[0] for text in TEXTS])
    together = embed(engine, TEXTS)  # 5 inputs in batches of at most 4 sequences
    backwards = embed(engine, TEXTS[::-1])[::-1]
    assert np.allclose(alone, together, atol=NOISE)
    assert np.allclose(alone, backwards, atol=NOISE)
    twice = embed(engine, [TEXTS[1], TEXTS[1]])
    assert np.allclose(twice[0], twice[1], atol=NOISE)
    assert np.allclose(twice[0], alone[1], atol=NOISE)
    # Different texts are different vectors (the model is noise, but not constant noise).
    assert float(np.dot(alone[0], alone[1])) < 0.99


def test_shortening_keeps_the_head_and_renormalises(engine: LlamaEmbeddingEngine) -> None:
    [vector] = embed(engine, [TEXTS[0]])
    short = np.array(shorten(vector.tolist(), 128))
    assert short.shape == (128,)
    assert np.linalg.norm(short) == pytest.approx(1.0, abs=1e-9)
    assert np.allclose(short * np.linalg.norm(vector[:128]), vector[:128])


@pytest.mark.parametrize(
    ("inputs", "index", "words"),
    [
        ([[2, 100], []], 1, "empty"),
        ([[2, 100], [2] + [100] * 2048], 1, "2049 tokens"),
        ([[2, 262144]], 0, "outside the vocabulary"),
        ([[2, -1]], 0, "outside the vocabulary"),
    ],
)
def test_refusals_name_the_input(
    engine: LlamaEmbeddingEngine, inputs: list[list[int]], index: int, words: str
) -> None:
    with pytest.raises(EmbeddingRejected, match=words) as refused:
        asyncio.run(engine.embed(inputs))
    assert refused.value.index == index


def test_a_cancelled_request_stops_between_batches(
    engine: LlamaEmbeddingEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    many = [engine.tokenize(f"sentence number {i}") for i in range(400)]  # 100 batches of 4
    # The first batch is decoded, the second waits in its thread until the request is cancelled:
    # the cancellation lands mid-request, with a batch in flight, whatever the CPU's speed.
    decode, decoded, in_flight, gate = engine._decode, [0], threading.Event(), threading.Event()

    def gated_decode(inputs: list[list[int]]) -> list[list[float]]:
        if decoded[0] == 1:
            in_flight.set()
            assert gate.wait(60)
        vectors = decode(inputs)
        decoded[0] += 1
        return vectors

    monkeypatch.setattr(engine, "_decode", gated_decode)

    async def cancel_soon() -> None:
        task = asyncio.create_task(engine.embed(many))
        assert await asyncio.to_thread(in_flight.wait, 60)
        task.cancel()
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The engine serves the next request at once (nothing left queued on its lock).
        [vector] = await asyncio.wait_for(engine.embed([many[0]]), timeout=30)
        assert len(vector) == WIDTH
        # Batches run one after another on one thread: the first, the one in flight when the
        # request was cancelled, then the next request's. The other 98 were never decoded.
        assert decoded[0] == 3

    asyncio.run(cancel_soon())
