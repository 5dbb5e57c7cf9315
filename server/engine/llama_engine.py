"""The llama.cpp engine: loads the model and serves many requests at once (continuous batching).

`prepare()` runs on the asyncio side: it renders and tokenises the prompt (tokenising reads only
the vocabulary), checks it fits one sequence's context, compiles a grammar, and takes a place in
the engine's bounded capacity (`parallel` running + `queue_size` waiting), answering `EngineBusy`
when there is none, before any stream starts. Iterating the generation's `events()` submits it
to the engine thread (`scheduler.Scheduler`), the only code that touches the llama.cpp context.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from pathlib import Path

import llama_cpp

from server.engine import image_marker
from server.engine.chat_template import START_OF_TURN, ChatTemplate, Segment, TemplateRejected
from server.engine.contract import (
    EngineBusy,
    EngineInfo,
    EngineStats,
    EngineUnavailable,
    GenerationRequest,
    ImageInput,
    Refused,
    RequestRejected,
)
from server.engine.generation import Announcement, LlamaGeneration, Reservation
from server.engine.grammar import compile_json_format
from server.engine.loading import N_BATCH, EngineLoadError, LoadParams, load
from server.engine.scheduler import Scheduler
from server.engine.vision import Projector, ProjectorError, PromptImage, image_token_id

__all__ = ["EngineLoadError", "LlamaEngine"]

log = logging.getLogger("gemma_serve.engine")

BOS = "<bos>"
# How long close() waits for the step in flight (a long prefill chunk cannot be interrupted).
CLOSE_TIMEOUT = 30.0


class LlamaEngine:
    """Loads a GGUF with llama.cpp and generates from it, up to `parallel` sequences at once.

    With `parallel_trials` (a CPU plan's), `parallel` is the floor and the count is measured as
    the model loads (server/engine/calibration.py). A set `cancel` stops the load
    (LoadCancelled): the server is shutting down.
    `cache_ram`: MiB of host memory for sequence states saved when their sequence is taken for
    another prompt (`prompt_cache.PromptCache`); 0 keeps only what the sequences hold."""

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
        flash_attn: bool = True,
        template_choice: str = "pinned",
        parallel: int = 4,
        parallel_trials: Sequence[int] = (),
        queue_size: int = 64,
        request_timeout: float | None = None,
        mmproj_path: Path | None = None,
        cache_ram: int = 0,
        cancel: threading.Event | None = None,
    ) -> None:
        params = LoadParams(
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_seq=parallel,
            n_gpu_layers=n_gpu_layers,
            tensor_split=tuple(tensor_split) if tensor_split else None,
            kv_cache_type=kv_cache_type,
            flash_attn=flash_attn,
        )
        self._loaded = load(model_path, params, cancel=cancel, parallel_trials=parallel_trials)
        parallel = self._loaded.n_seq  # `parallel` or more, as measured on the CPU
        self._model = self._loaded.model
        try:
            self._start_of_turn = self._special_token(START_OF_TURN)
            self._bos = self._special_token(BOS)
            self._template = self._choose_template(template_choice)
        except EngineLoadError:
            self._loaded.close()
            raise
        # Layers go to the GPU only if asked for and this llama.cpp build can offload at all.
        on_gpu = n_gpu_layers != 0 and bool(llama_cpp.llama_supports_gpu_offload())
        self._projector: Projector | None = None
        if mmproj_path is not None:
            try:
                self._projector = Projector(
                    mmproj_path,
                    self._model.model,
                    n_threads=n_threads,
                    use_gpu=on_gpu,
                    max_tokens=N_BATCH,
                )
            except ProjectorError as exc:
                self._loaded.close()
                raise EngineLoadError(str(exc)) from exc
        self._parallel = parallel
        self._capacity = parallel + queue_size
        self.info = EngineInfo(
            model_id=model_id,
            n_ctx=self._loaded.n_ctx,
            capacity=self._capacity,
            device="gpu" if on_gpu else "cpu",
            vision=self._projector is not None,
            flash_attn=params.uses_flash_attn,
        )
        self._reserved = 0
        self._lock = threading.Lock()
        self._closed = False
        self._scheduler = Scheduler(
            self._loaded,
            parallel=parallel,
            start_of_turn=self._start_of_turn,
            request_timeout=request_timeout,
            projector=self._projector,
            cache_bytes=cache_ram << 20,
        )

    # --- the asyncio side -------------------------------------------------------------------

    async def prepare(self, request: GenerationRequest) -> LlamaGeneration:
        """Tokenise, check the prompt fits, compile the grammar and take a place; nothing is
        generated until the generation's `events()` is iterated."""
        announcement = self._scheduler.announce()
        try:
            return await self._prepare(request, announcement)
        except BaseException:
            announcement.settle()  # refused: nothing will arrive
            raise

    async def _prepare(
        self, request: GenerationRequest, announcement: Announcement
    ) -> LlamaGeneration:
        images: tuple[PromptImage, ...] = ()
        if request.images and self._projector is None:
            raise RequestRejected(
                f"The model {self.info.model_id} does not take images (it is served without a "
                "vision projector); send text only.",
                Refused.NO_IMAGE_INPUT,
                index=0,
            )
        if request.prompt is not None:
            tokens = await asyncio.to_thread(self._tokenize_prompt, request.prompt)
            what = "prompt"
        else:
            segments = self._template.render_segments(request.messages)
            tokens, images = await asyncio.to_thread(
                self._tokenize_segments, segments, request.images
            )
            what = "messages"
        n_vocab = int(llama_cpp.llama_vocab_n_tokens(self._model.vocab))
        for entry, (token, _) in enumerate(request.sampling.logit_bias):
            # NOTE: llama.cpp's logit-bias sampler indexes the logits with these ids unchecked.
            if not 0 <= token < n_vocab:
                raise RequestRejected(
                    f"logit_bias names token {token}, but this model's vocabulary has "
                    f"{n_vocab} tokens (ids 0 to {n_vocab - 1}).",
                    Refused.LOGIT_BIAS,
                    index=entry,
                )
        grammar = None
        if request.json_format is not None:
            grammar = await asyncio.to_thread(
                compile_json_format, request.json_format, self._model.vocab
            )
        n_ctx = self.info.n_ctx
        completion = request.max_tokens or 0
        # Without max_tokens the completion gets whatever is left, but at least one token.
        if len(tokens) + max(completion, 1) > n_ctx:
            raise RequestRejected(
                f"This model's maximum context length is {n_ctx} tokens. However, you requested "
                f"{len(tokens) + completion} tokens ({len(tokens)} in the {what}, {completion} "
                f"in the completion). Please reduce the length of the {what} or completion.",
                Refused.CONTEXT_LENGTH,
            )
        return LlamaGeneration(
            request,
            tokens,
            grammar=grammar,
            n_ctx=n_ctx,
            reservation=self._reserve(),
            submit=self._scheduler.submit,
            images=images,
            announcement=announcement,
        )

    def stats(self) -> EngineStats:
        active = self._scheduler.active
        return EngineStats(
            active=active,
            queued=max(0, self._reserved - active),
            parallel=self._parallel,
            prompt_cache=self._scheduler.prompt_cache.stats(),
        )

    def reused_prompt_tokens(self) -> int:
        """Prompt tokens served from the prefix cache since start (tests and logs read it)."""
        return self._scheduler.prompt_cache.stats().reused_tokens

    def close(self) -> None:
        """End every running and queued generation, then free the model once the engine thread is
        out of llama.cpp."""
        with self._lock:
            # NOTE: two threads may close at once (the drain, then the lifespan): one frees.
            if self._closed:
                return
            self._closed = True
        if not self._scheduler.close(CLOSE_TIMEOUT):
            # NOTE: a decode step cannot be interrupted; freeing the model under a running
            # llama_decode would crash, so leave it to the process exit.
            log.warning(
                "the engine is still busy after %.0f s; not freeing the model", CLOSE_TIMEOUT
            )
            return
        if self._projector is not None:
            self._projector.close()
        self._loaded.close()

    def _reserve(self) -> Reservation:
        with self._lock:
            if self._closed:
                raise EngineUnavailable("the server is shutting down")
            if self._reserved >= self._capacity:
                active = self._scheduler.active
                raise EngineBusy(
                    f"all {self._capacity} places are taken ({active} generating, "
                    f"{self._reserved - active} accepted and waiting)",
                    retry_after=1,
                )
            self._reserved += 1
        return Reservation(self._unreserve)

    def _unreserve(self) -> None:
        with self._lock:
            self._reserved -= 1

    # --- tokenising (reads the vocabulary only: safe beside the engine thread) ---------------

    def _tokenize_segments(
        self, segments: list[Segment], images: tuple[ImageInput, ...] = ()
    ) -> tuple[list[int], tuple[PromptImage, ...]]:
        # The template writes <bos> itself. Only the template's own text may hold special tokens:
        # "<end_of_turn>" typed by a user is just text. An image's place in a message holds its
        # marker: the projector's tokens go there.
        tokens: list[int] = []
        placed: list[PromptImage] = []
        for segment in segments:
            pieces = [segment.text] if segment.trusted else image_marker.split(segment.text)
            for piece in pieces:
                if isinstance(piece, str):
                    tokens += self._model.tokenize(
                        piece.encode(), add_bos=False, special=segment.trusted
                    )
                    continue
                image = images[piece] if piece < len(images) else None
                if image is None or self._projector is None:
                    continue
                before, chunk, after = self._projector.tokenize(image, piece)
                tokens += before
                placed.append(PromptImage(len(tokens), chunk))
                tokens += [image_token_id(image.digest)] * chunk.n_pos
                tokens += after
        return tokens, tuple(placed)

    def _tokenize_prompt(self, prompt: str) -> list[int]:
        """Raw text (/v1/completions): special tokens parsed, <bos> first unless written."""
        tokens: list[int] = self._model.tokenize(prompt.encode(), add_bos=False, special=True)
        return tokens if prompt.startswith(BOS) else [self._bos, *tokens]

    def _special_token(self, text: str) -> int:
        ids = self._model.tokenize(text.encode(), add_bos=False, special=True)
        if len(ids) != 1:
            raise EngineLoadError(f"this model has no {text} token: it is not a Gemma 3 model")
        return int(ids[0])

    def _choose_template(self, choice: str) -> ChatTemplate:
        if choice == "gguf":
            source = self._model.metadata().get("tokenizer.chat_template")
            if source:
                try:
                    return ChatTemplate(source, origin="model file's")
                except TemplateRejected as exc:
                    raise EngineLoadError(str(exc)) from exc
            log.warning("the model file has no chat template; using the pinned Gemma 3 template")
        return ChatTemplate.pinned()
