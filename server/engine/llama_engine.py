"""The llama.cpp engine: the only module of gemma-serve that imports llama_cpp.

One engine thread owns the llama.cpp context and runs one generation at a time; the asyncio side
never calls into llama_cpp except to tokenise (which reads the vocabulary only). Requests wait
in a FIFO queue. Tokens travel back to the event loop with `call_soon_threadsafe`, so a long
generation never blocks `/health` or other requests' I/O.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import queue
import random
import threading
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
import numpy.typing as npt
from llama_cpp.llama_grammar import LlamaGrammar

from server.engine.chat_template import (
    BOS_TOKEN,
    START_OF_TURN,
    ChatTemplate,
    Segment,
    TemplateRejected,
)
from server.engine.grammar import compile_json_format
from server.engine.text import TextAssembler
from server.engine.types import (
    EngineInfo,
    EngineStats,
    EngineUnavailable,
    Event,
    Finished,
    FinishReason,
    GenerationRequest,
    RequestRejected,
    TextDelta,
    Usage,
)

log = logging.getLogger("gemma_serve.engine")

_DONE = object()  # end-of-events marker on a job's asyncio queue
_GGML_TYPES = {"f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0}


class EngineLoadError(RuntimeError):
    """The model could not be loaded; the message is one line for the user."""


class _Job:
    """One accepted generation: its prompt, limits and the queue its events go to."""

    def __init__(
        self,
        engine: LlamaEngine,
        request: GenerationRequest,
        tokens: list[int],
        grammar: LlamaGrammar | None = None,
    ):
        self._engine = engine
        self.request = request
        self.tokens = tokens
        self.grammar = grammar
        self.prompt_tokens = len(tokens)
        self.max_new_tokens = request.max_tokens or engine.info.n_ctx - len(tokens)
        self.cancelled = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[object] = asyncio.Queue()

    def push(self, item: object) -> None:
        """Called from the engine thread."""
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self.cancelled.set()

    async def events(self) -> AsyncGenerator[Event, None]:
        """Start generation and yield its events; leaving early cancels it.

        NOTE: the `finally` runs when the consumer stops iterating (client disconnect, error), as
        long as the consumer closes this generator (`contextlib.aclosing`); the engine thread
        checks `cancelled` before every token, so the sequence stops within one decode step.
        """
        self._loop = asyncio.get_running_loop()
        self._engine.submit(self)
        try:
            while True:
                item = await self._queue.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, TextDelta | Finished)
                yield item
        finally:
            self.cancelled.set()


def _logit_bias_processor(
    logit_bias: Sequence[tuple[int, float]],
) -> llama_cpp.LogitsProcessorList | None:
    """Adds each (token id, bias) to the raw logits before any other sampler (OpenAI's
    `logit_bias`): llama-cpp-python hands the processor the whole vocabulary in id order."""
    if not logit_bias:
        return None
    ids = np.array([token for token, _ in logit_bias], dtype=np.intc)
    biases = np.array([bias for _, bias in logit_bias], dtype=np.single)

    def add_bias(input_ids: npt.NDArray[np.intc], scores: npt.NDArray[np.single]) -> Any:
        scores[ids] += biases
        return scores

    return llama_cpp.LogitsProcessorList([add_bias])


def llama_params(
    *,
    n_ctx: int,
    n_threads: int,
    n_gpu_layers: int = 0,
    tensor_split: Sequence[float] | None = None,
    kv_cache_type: str = "f16",
) -> dict[str, Any]:
    """The `llama_cpp.Llama` arguments gemma-serve loads a model with (tests load with these too,
    to compare llama.cpp's reported buffers with the planner's estimate)."""
    kv_type = _GGML_TYPES[kv_cache_type]
    return {
        "n_ctx": n_ctx,
        "n_threads": n_threads,
        "n_threads_batch": n_threads,
        "n_gpu_layers": n_gpu_layers,
        "tensor_split": list(tensor_split) if tensor_split else None,
        # On a GPU, flash attention keeps the attention scores out of the compute buffer; a
        # quantised V cache needs it on any device.
        "flash_attn": n_gpu_layers != 0 or kv_cache_type != "f16",
        "type_k": kv_type,
        "type_v": kv_type,
        # Sliding-window layers keep only their window, not the whole context: what the planner
        # estimates, and up to ~10x less KV cache at long contexts.
        "swa_full": False,
    }


class LlamaEngine:
    """Loads a GGUF with llama-cpp-python and generates chat completions from it."""

    def __init__(
        self,
        *,
        model_path: Path,
        model_id: str,
        n_ctx: int,
        n_threads: int,
        n_gpu_layers: int = 0,
        tensor_split: Sequence[float] | None = None,
        kv_cache_type: str = "f16",
        template_choice: str = "pinned",
    ) -> None:
        params = llama_params(
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_gpu_layers=n_gpu_layers,
            tensor_split=tensor_split,
            kv_cache_type=kv_cache_type,
        )
        try:
            self._llama = llama_cpp.Llama(model_path=str(model_path), verbose=False, **params)
        except (ValueError, RuntimeError, OSError) as exc:
            raise EngineLoadError(f"llama.cpp could not load {model_path}: {exc}") from exc
        self._vocab = self._llama._model.vocab
        self._start_of_turn = self._special_token(START_OF_TURN)
        self._template = self._choose_template(template_choice)
        # Layers go to the GPU only if asked for and this llama.cpp build can offload at all.
        on_gpu = n_gpu_layers != 0 and bool(llama_cpp.llama_supports_gpu_offload())
        self.info = EngineInfo(
            model_id=model_id, n_ctx=self._llama.n_ctx(), device="gpu" if on_gpu else "cpu"
        )
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._current: _Job | None = None
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gemma-serve-engine", daemon=True)
        self._thread.start()

    # --- the asyncio side -------------------------------------------------------------------

    async def prepare(self, request: GenerationRequest) -> _Job:
        """Render and tokenise the prompt, check it fits; nothing is generated yet."""
        if request.prompt is not None:
            tokens = await asyncio.to_thread(self._tokenize_prompt, request.prompt)
            source = "prompt"
        else:
            segments = self._template.render_segments(request.messages)
            tokens = await asyncio.to_thread(self._tokenize, segments)
            source = "messages"
        n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        for token, _ in request.sampling.logit_bias:
            if not 0 <= token < n_vocab:
                raise RequestRejected(
                    f"logit_bias names token {token}, but this model's vocabulary has "
                    f"{n_vocab} tokens (ids 0 to {n_vocab - 1}).",
                    code="invalid_value",
                    param="logit_bias",
                )
        grammar = None
        if request.json_format is not None:
            grammar = await asyncio.to_thread(compile_json_format, request.json_format, self._vocab)
        n_ctx = self.info.n_ctx
        completion = request.max_tokens or 0
        # Without max_tokens the completion gets whatever is left, but at least one token.
        if len(tokens) + max(completion, 1) > n_ctx:
            raise RequestRejected(
                f"This model's maximum context length is {n_ctx} tokens. However, you requested "
                f"{len(tokens) + completion} tokens ({len(tokens)} in the {source}, {completion} "
                f"in the completion). Please reduce the length of the {source} or completion.",
                code="context_length_exceeded",
                param=source,
            )
        return _Job(self, request, tokens, grammar)

    def stats(self) -> EngineStats:
        return EngineStats(
            active=int(self._current is not None), queued=self._jobs.qsize(), parallel=1
        )

    def submit(self, job: _Job) -> None:
        if self._closing.is_set():
            raise EngineUnavailable("the server is shutting down")
        self._jobs.put(job)

    def close(self) -> None:
        """Stop the engine thread (ending the generation in flight) and free the model."""
        self._closing.set()
        current = self._current
        if current is not None:
            current.cancelled.set()
        self._jobs.put(None)
        self._thread.join(timeout=30)
        if self._thread.is_alive():
            # NOTE: a long prefill is not interruptible; freeing the model under a running
            # llama_decode would crash, so leave it to the process exit.
            log.warning("the engine is still busy after 30 s; not freeing the model")
            return
        self._llama.close()

    # --- the engine thread ------------------------------------------------------------------

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            self._current = job
            try:
                if self._closing.is_set():
                    job.push(EngineUnavailable("the server is shutting down"))
                elif not job.cancelled.is_set():
                    self._generate(job)
            except Exception as exc:  # a broken model or a bug: report it to this request only
                log.exception("generation failed")
                job.push(exc)
            finally:
                self._current = None
                job.push(_DONE)

    def _generate(self, job: _Job) -> None:
        sampling = job.request.sampling
        llama = self._llama
        # No KV reuse between requests yet: with swa_full=False the sliding-window layers may no
        # longer hold a shared prefix, so every request starts from an empty cache.
        llama.reset()  # type: ignore[no-untyped-call]
        llama.set_seed(sampling.seed if sampling.seed is not None else random.getrandbits(32))
        text = TextAssembler(job.request.stop)
        generated = 0
        reason: FinishReason = "length"
        tokens = llama.generate(
            job.tokens,
            temp=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            min_p=sampling.min_p,
            typical_p=1.0,
            repeat_penalty=1.0,
            presence_penalty=sampling.presence_penalty,
            frequency_penalty=sampling.frequency_penalty,
            grammar=job.grammar,
            logits_processor=_logit_bias_processor(sampling.logit_bias),
        )
        try:
            for token in tokens:
                if job.cancelled.is_set():
                    return
                if llama_cpp.llama_vocab_is_eog(self._vocab, token) or (
                    token == self._start_of_turn
                ):
                    reason = "stop"
                    break
                generated += 1
                piece = text.add(self._piece(token))
                if piece:
                    job.push(TextDelta(piece))
                if text.stopped:
                    reason = "stop"
                    break
                if generated >= job.max_new_tokens:
                    break
        finally:
            tokens.close()
        if not text.stopped:
            tail = text.finish()
            if tail:
                job.push(TextDelta(tail))
            if text.stopped:
                reason = "stop"
        job.push(Finished(reason, Usage(job.prompt_tokens, generated)))

    # --- helpers ----------------------------------------------------------------------------

    def _tokenize(self, segments: list[Segment]) -> list[int]:
        # The template writes <bos> itself. Only the template's own text may hold special tokens:
        # "<end_of_turn>" typed by a user is just text.
        tokens: list[int] = []
        for segment in segments:
            tokens += self._llama.tokenize(
                segment.text.encode(), add_bos=False, special=segment.trusted
            )
        return tokens

    def _tokenize_prompt(self, prompt: str) -> list[int]:
        # A raw prompt (/v1/completions) is the client's own text: special tokens such as
        # <start_of_turn> are parsed, and <bos> is added unless the client wrote it.
        add_bos = not prompt.startswith(BOS_TOKEN)
        return list(self._llama.tokenize(prompt.encode(), add_bos=add_bos, special=True))

    def _piece(self, token: int) -> bytes:
        """The token's bytes. (llama-cpp-python's detokenize asserts on pieces over 32 bytes.)"""
        size = 64
        while True:
            buffer = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, size, 0, False)
            if n >= 0:
                return buffer.raw[:n]
            size = -n

    def _special_token(self, text: str) -> int:
        ids = self._llama.tokenize(text.encode(), add_bos=False, special=True)
        if len(ids) != 1:
            raise EngineLoadError(f"this model has no {text} token: it is not a Gemma 3 model")
        return int(ids[0])

    def _choose_template(self, choice: str) -> ChatTemplate:
        if choice == "gguf":
            source = self._llama.metadata.get("tokenizer.chat_template")
            if source:
                try:
                    return ChatTemplate(source, origin="model file's")
                except TemplateRejected as exc:
                    raise EngineLoadError(str(exc)) from exc
            log.warning("the model file has no chat template; using the pinned Gemma 3 template")
        return ChatTemplate.pinned()
