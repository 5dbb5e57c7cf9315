"""Images through libmtmd: the projector and a picture's place in the prompt.

A projector (mmproj GGUF) turns a picture into embeddings the text model reads in place of
tokens: for Gemma 3, 256 positions between `<start_of_image>` and `<end_of_image>` (mtmd adds
both). `Projector.tokenize` runs on the asyncio side, as text tokenising does (llama-server does
the same from its HTTP threads); encoding and decoding run on the engine thread only.

In the prompt's token list an image's positions hold a negative stand-in id derived from the
image's content hash, so the prefix cache (plain token comparison) reuses an image's KV only when
the same picture sits at the same place; `safe_reuse` never lets a reused prefix end inside one.

The scheduler decodes an image in a step of its own (engine/image_step.py).
"""

from __future__ import annotations

import ctypes
import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
from llama_cpp import _logger
from llama_cpp import mtmd_cpp as mtmd

from server.engine.contract import ImageInput, Refused, RequestRejected
from server.engine.placement import MIN_REUSE
from server.gguf import GGUFError, read_header

log = logging.getLogger("gemma_serve.engine")


class ProjectorError(RuntimeError):
    """The projector file could not be loaded; the message is one line for the user."""


def image_token_id(digest: str) -> int:
    """The stand-in id of every position of an image with this content hash (negative: no
    vocabulary token has it)."""
    return -1 - int(digest[:15], 16)


class ImageChunk:
    """An owned mtmd image chunk (the picture, preprocessed for the projector); freed with the
    object."""

    def __init__(self, pointer: int) -> None:
        self.pointer = pointer
        self.n_tokens = int(mtmd.mtmd_input_chunk_get_n_tokens(pointer))
        self.n_pos = int(mtmd.mtmd_input_chunk_get_n_pos(pointer))
        weakref.finalize(self, mtmd.mtmd_input_chunk_free, pointer)


@dataclass(frozen=True)
class PromptImage:
    """An image in a tokenised prompt: its positions are `start` .. `end - 1`."""

    start: int
    chunk: ImageChunk

    @property
    def end(self) -> int:
        return self.start + self.chunk.n_pos


def safe_reuse(reused: int, images: Sequence[PromptImage]) -> int:
    """`reused` moved back to an image's start if it falls inside one: an image's KV is used
    whole or not at all (and what is left is reused only if it is still worth it)."""
    for image in images:
        if image.start < reused < image.end:
            return image.start if image.start >= MIN_REUSE else 0
    return reused


def check_projector_file(path: Path, text_width: int) -> None:
    """Refuse, with one line, a file that is not a complete Gemma 3 vision projector for a text
    model of this embedding width, before llama.cpp parses it (malformed GGUF files have crashed
    its loader)."""
    try:
        metadata = read_header(path).metadata
    except (GGUFError, OSError) as exc:
        raise ProjectorError(f"the vision projector {path} cannot be used: {exc}") from exc
    kind = metadata.get("clip.projector_type")
    if metadata.get("general.architecture") != "clip" or kind is None:
        raise ProjectorError(f"{path} is not a vision projector (mmproj) file; check --mmproj")
    if kind != "gemma3" or not metadata.get("clip.has_vision_encoder"):
        raise ProjectorError(f"{path} is a {kind} projector, not a Gemma 3 vision projector")
    width = metadata.get("clip.vision.projection_dim")
    if isinstance(width, int) and width != text_width:
        raise ProjectorError(
            f"{path} makes {width}-wide embeddings but the model reads {text_width}: it is the "
            "projector of another model size"
        )


class Projector:
    """An mtmd context: the projector file loaded beside the text model."""

    def __init__(
        self, path: Path, model: Any, *, n_threads: int, use_gpu: bool, max_tokens: int
    ) -> None:
        check_projector_file(path, int(llama_cpp.llama_model_n_embd(model)))
        # mtmd logs every image at INFO: route it through llama-cpp-python's logger, which
        # prints errors only unless loading verbosely.
        mtmd.mtmd_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
        mtmd.mtmd_helper_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = use_gpu
        params.n_threads = n_threads
        params.print_timings = False
        params.warmup = False
        if use_gpu:
            # The planner budgets the projector's compute buffer with flash attention (about
            # 121 MiB on CUDA); without it the attention scores alone take several times that.
            params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        self._ctx = mtmd.mtmd_init_from_file(str(path).encode(), model, params)
        if not self._ctx:
            raise ProjectorError(
                f"llama.cpp could not load the vision projector {path} (is it the projector of "
                "this model?); serve without images with --no-vision"
            )
        if not mtmd.mtmd_support_vision(self._ctx):
            self.close()
            raise ProjectorError(f"{path} is not a vision projector; check --mmproj")
        self._max_tokens = max_tokens

    def tokenize(self, image: ImageInput, index: int) -> tuple[list[int], ImageChunk, list[int]]:
        """The tokens before the image (`<start_of_image>`), the image, the tokens after;
        `index`: the request's image number, named in a refusal."""
        data = ctypes.cast(ctypes.c_char_p(image.rgb), ctypes.POINTER(ctypes.c_uint8))
        bitmap = mtmd.mtmd_bitmap_init(image.width, image.height, data)
        chunks = mtmd.mtmd_input_chunks_init()
        try:
            part = mtmd.mtmd_input_part(text=None, bitmap=bitmap)
            parts = (ctypes.POINTER(mtmd.mtmd_input_part) * 1)(ctypes.pointer(part))
            status = mtmd.mtmd_tokenize_from_parts(self._ctx, chunks, parts, 1, False)
            if status != 0:
                raise RequestRejected(
                    f"The image could not be prepared for the model (mtmd status {status}).",
                    Refused.IMAGE,
                    index=index,
                )
            before: list[int] = []
            after: list[int] = []
            chunk: ImageChunk | None = None
            for position in range(mtmd.mtmd_input_chunks_size(chunks)):
                item = mtmd.mtmd_input_chunks_get(chunks, position)
                if mtmd.mtmd_input_chunk_get_type(item) == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                    count = ctypes.c_size_t()
                    ids = mtmd.mtmd_input_chunk_get_tokens_text(item, ctypes.byref(count))
                    (after if chunk else before).extend(ids[i] for i in range(count.value))
                elif chunk is None:
                    chunk = ImageChunk(mtmd.mtmd_input_chunk_copy(item))
        finally:
            mtmd.mtmd_input_chunks_free(chunks)
            mtmd.mtmd_bitmap_free(bitmap)
        if chunk is None or chunk.n_pos != chunk.n_tokens or chunk.n_tokens > self._max_tokens:
            # NOTE: llama.cpp aborts the process on a non-causal batch larger than n_ubatch.
            raise RequestRejected(
                "This model's projector makes an image layout gemma-serve cannot decode.",
                Refused.IMAGE,
                index=index,
            )
        return before, chunk, after

    def encode(self, chunk: ImageChunk) -> int:
        return int(mtmd.mtmd_encode_chunk(self._ctx, chunk.pointer))

    def decode(self, lctx: Any, chunk: ImageChunk, pos: int, seq_id: int, n_batch: int) -> int:
        """Decode the last encoded image into `seq_id` at positions pos..; 0 on success."""
        embeddings = mtmd.mtmd_get_output_embd(self._ctx)
        new_pos = ctypes.c_int32()
        return int(
            mtmd.mtmd_helper_decode_image_chunk(
                self._ctx,
                lctx,
                chunk.pointer,
                embeddings,
                pos,
                seq_id,
                n_batch,
                ctypes.byref(new_pos),
                mtmd.mtmd_helper_post_decode_callback(),  # NULL: no callback
                None,
            )
        )

    def close(self) -> None:
        if self._ctx:
            mtmd.mtmd_free(self._ctx)
            self._ctx = None
