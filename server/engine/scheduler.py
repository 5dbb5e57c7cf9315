"""The engine thread: continuous batching over the sequences of one llama.cpp context.

Each step builds one `llama_batch` with the next token of every decoding sequence (its own
`seq_id`) plus a chunk of prompt tokens from sequences still prefilling, calls `llama_decode`
once, and samples every sequence whose logits it asked for with that sequence's own sampler chain.
New generations take free sequences between steps (`admission.admit`); a long prompt is prefilled
PREFILL_CHUNK tokens per step while others decode, so running streams keep flowing. Only this
thread calls into the context.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections import deque
from typing import Any

import llama_cpp

from server.engine.admission import admit
from server.engine.compute_threads import TEAMS
from server.engine.contract import EngineUnavailable, TokenLogprob, TopLogprob
from server.engine.generation import (
    DONE,
    Announcement,
    LlamaGeneration,
    one_delivery_per_step,
)
from server.engine.image_step import ImageSteps
from server.engine.loading import N_BATCH, LoadedModel
from server.engine.prompt_cache import PromptCache
from server.engine.sampling import SamplerChain, logprobs_of
from server.engine.sequence import Cells, Sequence, State
from server.engine.vision import Projector

log = logging.getLogger("gemma_serve.engine")

# Prompt tokens prefilled per step while other sequences decode: a step then costs about as much
# as a few decode steps, so streams slow down but never stall behind a long prompt.
PREFILL_CHUNK = 256
_PREFILL = (State.PREFILLING, State.AWAITING_IMAGE)
# Requests that reach an idle engine together (four clients at once) are submitted a few
# milliseconds apart, each after its own tokenisation. The first waits at most this long for
# the others announced with it, so that their prompts share the first step instead of waiting a
# whole prefill behind it; a request that comes alone waits for nothing.
ARRIVAL_WINDOW = 0.025


class Scheduler:
    """Owns the llama.cpp context on its own thread; `submit()` is the only way in."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        parallel: int,
        start_of_turn: int,
        request_timeout: float | None = None,
        projector: Projector | None = None,
        cache_bytes: int = 0,
    ) -> None:
        self._ctx: Any = loaded.context.ctx
        self._images = ImageSteps(projector, self._ctx, N_BATCH) if projector else None
        self._vocab: Any = loaded.model.vocab
        self._n_vocab = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        self._n_swa = int(llama_cpp.llama_model_n_swa(loaded.model.model))
        self._start_of_turn = start_of_turn
        self._timeout = request_timeout
        cells = Cells(self._ctx)
        self._sequences = [Sequence(seq_id, cells) for seq_id in range(parallel)]
        self._queue: deque[LlamaGeneration] = deque()
        self._announced = 0  # generations being prepared, not yet submitted
        self._wake = threading.Condition()
        self._closing = False
        self._piece_buffer = ctypes.create_string_buffer(256)
        self.prompt_cache = PromptCache(budget=cache_bytes, n_swa=self._n_swa)
        self._thread: threading.Thread | None = None  # started by the first submit

    # --- any thread -------------------------------------------------------------------------

    def announce(self) -> Announcement:
        """A generation is being prepared: an idle engine that receives another meanwhile
        gives this one a moment to arrive too (ARRIVAL_WINDOW)."""
        with self._wake:
            self._announced += 1
        return Announcement(self._settled)

    def _settled(self) -> None:
        with self._wake:
            self._announced -= 1
            self._wake.notify()

    def submit(self, generation: LlamaGeneration) -> None:
        with self._wake:  # a reentrant lock: settling takes it too
            generation.announcement.settle()  # arrived: no longer awaited
            if self._closing:
                raise EngineUnavailable("the server is shutting down")
            self._queue.append(generation)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="gemma-serve-engine", daemon=True
                )
                self._thread.start()
            self._wake.notify()

    @property
    def active(self) -> int:
        """Busy sequences (read from any thread; they change only on the engine thread)."""
        return sum(sequence.busy for sequence in self._sequences)

    def close(self, timeout: float) -> bool:
        """Stop after the current step, ending every generation; True once the thread has ended."""
        with self._wake:
            self._closing = True
            self._wake.notify()
            thread = self._thread
        if thread is None:  # idle: no thread, nothing running or queued
            return True
        thread.join(timeout)
        return not thread.is_alive()

    # --- the engine thread ------------------------------------------------------------------

    def _run(self) -> None:
        batch = llama_cpp.llama_batch_init(N_BATCH, 0, 1)
        idle = False
        TEAMS.work()
        try:
            while True:
                lingered = False
                with self._wake:
                    if not self._closing and not self._queue and not self.active:
                        idle = self._linger()
                        if idle:  # the next submit starts a new thread
                            return
                        lingered = True
                    if self._closing:
                        return
                    if not self.active:
                        self._await_announced()
                    free = sum(not sequence.busy for sequence in self._sequences)
                    arrivals = [self._queue.popleft() for _ in range(min(free, len(self._queue)))]
                if lingered:
                    TEAMS.work()  # NOTE: outside `_wake`: it takes other threads' locks
                for generation in arrivals:
                    self._admit(generation)
                self._drop_cancelled()
                if self.active:
                    with one_delivery_per_step():
                        self._step(batch)
        except Exception as exc:  # a bug or a broken model: end every generation rather than hang
            log.exception("the engine thread failed")
            self._end_all(exc)
        finally:
            TEAMS.leave()
            if not idle:
                self._end_all(EngineUnavailable("the server is shutting down"))
            llama_cpp.llama_batch_free(batch)

    def _linger(self) -> bool:
        """Called holding `_wake`, with no work: wait for some, keeping this thread (and its
        OpenMP team, so that the next request's first step starts at once) while no other
        thread computes. True when the thread ends instead: another thread computes, now or
        later (engine/compute_threads.py); the next submit starts a new one."""
        lingering = TEAMS.linger(self._wake)
        while not self._closing and not self._queue:
            if not lingering.alone or lingering.dismissed:
                self._thread = None
                return True
            self._wake.wait()
        return False

    def _await_announced(self) -> None:
        """Called idle, holding `_wake`, with a generation queued: wait up to ARRIVAL_WINDOW
        for the generations still being prepared."""
        deadline = time.monotonic() + ARRIVAL_WINDOW
        while self._announced > 0 and not self._closing:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._wake.wait(left)

    def _admit(self, generation: LlamaGeneration) -> None:
        if generation.cancelled.is_set():
            generation.push(DONE)
            generation.reservation.release()
            return
        sequence = admit(self._sequences, generation, self.prompt_cache, self._n_swa)
        try:
            seed = generation.request.sampling.seed
            sampler = SamplerChain(
                self._vocab, generation.request.sampling, grammar=generation.grammar, seed=seed
            )
        except Exception as exc:
            generation.push(exc)
            generation.push(DONE)
            generation.reservation.release()
            return
        sequence.start(generation, sampler, self._timeout)
        log.debug(
            "sequence %d: %d prompt tokens, %d from the prefix cache",
            sequence.seq_id,
            len(generation.tokens),
            sequence.reused,
        )

    def _drop_cancelled(self) -> None:
        # NOTE: a consumer that went away sets `cancelled` from the event loop thread; checking it
        # here, before every step, frees its sequence within one step.
        for sequence in self._sequences:
            if sequence.generation is not None and sequence.generation.cancelled.is_set():
                sequence.cancel()
            elif sequence.expired():
                sequence.expire()

    def _step(self, batch: Any) -> None:
        if self._images is not None and (image_sequence := self._images.due(self._sequences)):
            self._images.run(image_sequence)
            return
        rows: list[tuple[Sequence, int]] = []
        n = 0

        def put(token: int, pos: int, seq_id: int, logits: bool) -> None:
            nonlocal n
            batch.token[n] = token
            batch.pos[n] = pos
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = seq_id
            batch.logits[n] = logits
            n += 1

        decoding = [sequence for sequence in self._sequences if sequence.state is State.DECODING]
        for sequence in decoding:
            pos = len(sequence.cached)
            put(sequence.decode_token(), pos, sequence.seq_id, True)
            rows.append((sequence, n - 1))
        budget = N_BATCH - n if not decoding else min(PREFILL_CHUNK, N_BATCH - n)
        # Waiting for an image step counts as prefilling: a failed decode ends those too.
        prefilling = sorted(
            (sequence for sequence in self._sequences if sequence.state in _PREFILL),
            key=lambda sequence: sequence.generation.submitted_at if sequence.generation else 0.0,
        )
        chunks: list[tuple[Sequence, int, list[int]]] = []
        for sequence in prefilling:  # the budget goes first come, first served
            if budget <= 0:
                break
            if not sequence.prefilling:
                continue
            start = len(sequence.cached)
            chunk = sequence.prefill_chunk(budget)
            budget -= len(chunk)
            chunks.append((sequence, start, chunk))
        # NOTE: in increasing seq_id, as the decoding rows: llama.cpp puts sequences in one
        # micro-batch only while their ids follow each other in the batch (placement.py).
        chunks.sort(key=lambda taken: taken[0].seq_id)
        for sequence, start, chunk in chunks:
            for offset, token in enumerate(chunk):
                put(token, start + offset, sequence.seq_id, False)
            if chunk and sequence.prefilled:  # the prompt's last token: its logits start the answer
                batch.logits[n - 1] = True
                rows.append((sequence, n - 1))
        batch.n_tokens = n
        if n == 0:  # every prompt handed its last token to the next step
            return
        status = llama_cpp.llama_decode(self._ctx, batch)
        if status != 0:
            self._fail_batch(rows, decoding, prefilling, status)
            return
        for sequence, row in rows:
            self._sample(sequence, row)

    def _sample(self, sequence: Sequence, row: int) -> None:
        generation, sampler = sequence.generation, sequence.sampler
        assert generation is not None and sampler is not None
        if generation.cancelled.is_set():
            sequence.cancel()
            return
        token = sampler.sample(self._ctx, row)
        end_of_turn = bool(llama_cpp.llama_vocab_is_eog(self._vocab, token)) or (
            token == self._start_of_turn
        )
        piece = b"" if end_of_turn else self._piece(token)
        logprob = None
        if generation.request.logprobs is not None and not end_of_turn:
            logprob = self._logprob(row, token, piece, generation.request.logprobs)
        sequence.accept(token, piece, end_of_turn, logprob)

    def _logprob(self, row: int, token: int, piece: bytes, top: int) -> TokenLogprob:
        logits = llama_cpp.llama_get_logits_ith(self._ctx, row)
        chosen, best = logprobs_of(logits, self._n_vocab, token, top)
        alternatives = []
        for other, value in best:
            other_piece = self._piece(other)
            alternatives.append(
                TopLogprob(other_piece.decode("utf-8", errors="replace"), other_piece, value)
            )
        return TokenLogprob(
            piece.decode("utf-8", errors="replace"), piece, chosen, tuple(alternatives)
        )

    def _fail_batch(
        self,
        rows: list[tuple[Sequence, int]],
        decoding: list[Sequence],
        prefilling: list[Sequence],
        status: int,
    ) -> None:
        """llama_decode refused the batch: end the sequences in it and forget their KV."""
        log.error("llama_decode failed with status %d", status)
        for sequence in {*decoding, *prefilling, *(sequence for sequence, _ in rows)}:
            sequence.abort(RuntimeError(f"llama.cpp could not decode (status {status})"))

    def _end_all(self, error: BaseException) -> None:
        for sequence in self._sequences:
            if sequence.generation is not None:
                sequence.fail(error)
        with self._wake:
            self._closing = True
            waiting, self._queue = list(self._queue), deque()
        for generation in waiting:
            generation.push(error)
            generation.push(DONE)
            generation.reservation.release()

    def _piece(self, token: int) -> bytes:
        """The token's bytes. (llama-cpp-python's detokenize asserts on pieces over 32 bytes.)"""
        while True:
            size = len(self._piece_buffer)
            n = llama_cpp.llama_token_to_piece(
                self._vocab, token, self._piece_buffer, size, 0, False
            )
            if n >= 0:
                return self._piece_buffer.raw[:n]
            self._piece_buffer = ctypes.create_string_buffer(-n)
