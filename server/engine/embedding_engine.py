"""EmbeddingGemma (GGUF architecture `gemma-embedding`) through llama.cpp's embedding path.

The model gets its own llama.cpp context (embeddings on, mean pooling, no KV cache: the model is
bidirectional) and its own lock, so embedding never waits for a chat step nor holds one up: the
two share only the CPU (or GPU). Inputs are packed into llama.cpp batches of up to `n_seq`
sequences and `n_batch` tokens; each batch is one `llama_decode` in a worker thread, and a
cancelled request stops before its next batch. llama.cpp then pools each sequence (mean) and
applies the model's dense projections; the vector is L2-normalised here, as the model card's
sentence-transformers pipeline does.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import threading
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import llama_cpp
import numpy as np
from llama_cpp import _internals, _logger

from server.engine.compute_threads import LingeringThread
from server.engine.contract import EngineBusy
from server.engine.embedding_contract import EmbeddingInfo, EmbeddingRejected
from server.engine.loading import EngineLoadError

log = logging.getLogger("gemma_serve.engine")

__all__ = ["LlamaEmbeddingEngine", "pack"]

# Sequences one llama_decode pools at most: llama.cpp's own default n_seq_max for embeddings is
# 1; 16 keeps the output buffer small while amortising each decode's fixed cost.
N_SEQ = 16


def pack(lengths: Sequence[int], n_seq: int, n_batch: int) -> list[list[int]]:
    """Indices of the inputs grouped into batches, in order: at most `n_seq` inputs and
    `n_batch` tokens each (every length is at most `n_batch`)."""
    batches: list[list[int]] = []
    current: list[int] = []
    tokens = 0
    for index, length in enumerate(lengths):
        if current and (len(current) == n_seq or tokens + length > n_batch):
            batches.append(current)
            current, tokens = [], 0
        current.append(index)
        tokens += length
    if current:
        batches.append(current)
    return batches


class LlamaEmbeddingEngine:
    """Loads an embedding GGUF and embeds token lists (see the module docstring)."""

    def __init__(
        self,
        *,
        model_path: Path,
        model_id: str,
        n_threads: int,
        n_gpu_layers: int = 0,
        matryoshka: tuple[int, ...] = (),
        n_seq: int = N_SEQ,
        max_waiting: int = 64,
        verbose: bool = False,
    ) -> None:
        """`max_waiting`: requests that may wait behind the one being embedded (the server's
        `--queue-size`, the same bound as a chat model's queue); more are refused (503)."""
        _logger.set_verbose(verbose)
        self._max_requests = 1 + max_waiting
        self._requests = 0  # being embedded or waiting (read and written on the event loop)
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = n_gpu_layers
        try:
            self._model = _internals.LlamaModel(
                path_model=str(model_path), params=model_params, verbose=verbose
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise EngineLoadError(f"llama.cpp could not load {model_path}: {exc}") from exc
        model = self._model.model
        n_ctx = int(llama_cpp.llama_model_n_ctx_train(model))
        params = llama_cpp.llama_context_default_params()
        params.embeddings = True
        params.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_MEAN
        # A bidirectional model sees a whole input in one ubatch: the batch holds a longest one.
        params.n_ctx = params.n_batch = params.n_ubatch = n_ctx
        params.n_seq_max = n_seq
        params.n_threads = params.n_threads_batch = n_threads
        try:
            self._context = _internals.LlamaContext(
                model=self._model, params=params, verbose=verbose
            )
        except (ValueError, RuntimeError, OSError) as exc:
            self._model.close()  # type: ignore[no-untyped-call]
            raise EngineLoadError(
                f"llama.cpp could not create an embedding context: {exc}"
            ) from exc
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        width = int(llama_cpp.llama_model_n_embd(model))
        self.info = EmbeddingInfo(
            model_id=model_id,
            n_ctx=n_ctx,
            width=width,
            vocab_size=int(llama_cpp.llama_vocab_n_tokens(self._vocab)),
            matryoshka=tuple(d for d in matryoshka if d < width),
        )
        self._n_seq = n_seq
        self._batch = llama_cpp.llama_batch_init(n_ctx, 0, n_seq)
        self._lock = asyncio.Lock()  # one decode at a time on this context
        self._compute = LingeringThread("gemma-serve-embedding")
        self._thread_lock = threading.Lock()  # close() against a decode in its thread
        self._closed = False
        log.info(
            "embedding model %s is loaded (%d tokens an input, %d wide)", model_id, n_ctx, width
        )

    def tokenize(self, text: str) -> list[int]:
        data = text.encode("utf-8")
        room = len(data) + 8
        buffer = (llama_cpp.llama_token * room)()
        count = llama_cpp.llama_tokenize(self._vocab, data, len(data), buffer, room, True, False)
        if count < 0:  # cannot happen for room > bytes + BOS/EOS, but never read past the end
            room = -count
            buffer = (llama_cpp.llama_token * room)()
            count = llama_cpp.llama_tokenize(
                self._vocab, data, len(data), buffer, room, True, False
            )
        return list(buffer[:count])

    def check(self, inputs: Sequence[Sequence[int]]) -> None:
        """Raise EmbeddingRejected for the first input that cannot be embedded."""
        for index, tokens in enumerate(inputs):
            if not tokens:
                raise EmbeddingRejected("the input is empty", index)
            if len(tokens) > self.info.n_ctx:
                raise EmbeddingRejected(
                    f"the input has {len(tokens)} tokens; this model takes at most "
                    f"{self.info.n_ctx}",
                    index,
                )
            if not all(0 <= token < self.info.vocab_size for token in tokens):
                raise EmbeddingRejected(
                    f"the input holds a token id outside the vocabulary (0 to "
                    f"{self.info.vocab_size - 1})",
                    index,
                )

    async def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        self.check(inputs)
        if self._requests >= self._max_requests:
            raise EngineBusy(
                f"{self._requests} embedding requests are being served or waiting (at most "
                f"{self._max_requests}); try again shortly",
                retry_after=1,
            )
        self._requests += 1
        try:
            return await self._embed(inputs)
        finally:
            self._requests -= 1

    async def _embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        vectors: list[list[float]] = []
        for batch in pack([len(t) for t in inputs], self._n_seq, self.info.n_ctx):
            async with self._lock:
                # NOTE: a cancelled request stops here, between batches; the batch in flight
                # ends in its thread (a decode cannot be interrupted) and is dropped. A thread
                # of its own that ends when no batch comes for a moment, so that no OpenMP team
                # outlives an ingest and slows the chat engine's steps (compute_threads.py).
                work = partial(self._decode, [inputs[i] for i in batch])
                vectors += await self._compute.run(work)
        return vectors

    def _decode(self, inputs: list[Sequence[int]]) -> list[list[float]]:
        with self._thread_lock:
            if self._closed:
                raise RuntimeError("the embedding model is closed")
            batch = self._batch
            n = 0
            for seq, tokens in enumerate(inputs):
                for pos, token in enumerate(tokens):
                    batch.token[n] = token
                    batch.pos[n] = pos
                    batch.n_seq_id[n] = 1
                    batch.seq_id[n][0] = seq
                    batch.logits[n] = True
                    n += 1
            batch.n_tokens = n
            ctx = self._context.ctx
            status = llama_cpp.llama_decode(ctx, batch)
            if status != 0:
                raise RuntimeError(f"llama_decode failed for an embedding batch ({status})")
            vectors = []
            width = self.info.width
            for seq in range(len(inputs)):
                pointer = llama_cpp.llama_get_embeddings_seq(ctx, seq)
                raw = np.ctypeslib.as_array(
                    ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(width,)
                ).astype(np.float64)
                norm = float(np.linalg.norm(raw))
                vectors.append((raw / norm if norm > 0 else raw).tolist())
            return vectors

    def close(self) -> None:
        """Free the context and the model (idempotent; waits for a decode in flight)."""
        with self._thread_lock:
            if self._closed:
                return
            self._closed = True
            llama_cpp.llama_batch_free(self._batch)
            self._context.close()  # type: ignore[no-untyped-call]
            self._model.close()  # type: ignore[no-untyped-call]
