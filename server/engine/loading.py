"""Loading a GGUF into a llama.cpp model and a context with gemma-serve's parameters.

The context holds `n_seq` sequences, each with its own KV stream of `n_ctx` cells
(`kv_unified=false`, llama.cpp's n_ctx = n_ctx x n_seq): a sequence can always use its whole
context, whatever the others hold, and attends only over its own cells. tests/e2e/test_memory.py
loads with these same parameters to hold the planner's estimate to llama.cpp's own report.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import llama_cpp
from llama_cpp import _internals, _logger

# One llama_decode takes at most N_BATCH tokens, and n_batch = n_ubatch = N_BATCH: the planner's
# compute buffer is sized by the same constant (server/memory.py).
from server.cancellation import Cancelled
from server.engine.calibration import TRIAL_CTX, measure_parallel
from server.engine.compute_threads import on_passing_thread
from server.memory import N_BATCH, flash_attn_needed_for

_log = logging.getLogger("gemma_serve.engine")

__all__ = ["N_BATCH", "EngineLoadError", "LoadCancelled", "LoadParams", "LoadedModel", "load"]

_GGML_TYPES = {"f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0}


class EngineLoadError(RuntimeError):
    """The model could not be loaded; the message is one line for the user."""


class LoadCancelled(Cancelled):
    """Loading was stopped through `cancel` (the server is shutting down)."""


@dataclass(frozen=True)
class LoadParams:
    """How to load: `n_ctx` tokens for each of `n_seq` sequences decoded together."""

    n_ctx: int
    n_threads: int
    n_seq: int = 1
    n_gpu_layers: int = 0
    tensor_split: tuple[float, ...] | None = None
    kv_cache_type: str = "f16"
    # Sliding-window layers keep only their window, not the whole context: what the planner
    # estimates, and up to ~10x less KV cache at long contexts.
    swa_full: bool = False

    # Off only where asked (settings.flash_attn) and possible: a GPU's memory plan and a
    # quantised V cache need it.
    flash_attn: bool = True

    @property
    def uses_flash_attn(self) -> bool:
        # Flash attention is faster on every device llama.cpp runs Gemma 3 on, and on a GPU it
        # keeps the attention scores out of the compute buffer (the memory plan counts on it).
        # Its CPU kernel's result depends on the batch, though: a lone sequence's cells are split
        # across threads, a prompt's are tiled, and several sequences go row by row, so a seeded
        # request decoded beside others (a list, `n`) may answer otherwise than alone, and a
        # state the prompt cache restores (its sliding-window cells packed at the start) moves
        # its logits more than without (bench/exactness.py, RESULTS.md). Without it
        # (--no-flash-attn), a seeded prompt gives the same text alone, in a list or as choice 0
        # of n (tests/e2e/test_exact_mode.py).
        needed = flash_attn_needed_for(self.kv_cache_type, on_gpu=self.n_gpu_layers != 0)
        return self.flash_attn or needed is not None


@dataclass
class LoadedModel:
    """A model and its context. `close()` frees the context before the model."""

    model: _internals.LlamaModel
    context: _internals.LlamaContext
    n_ctx: int  # per sequence, as llama.cpp really allocated it
    n_seq: int  # sequences decoded together (measured on the CPU when the plan left it open)
    # ctypes memory the model parameters point into; kept alive with the model.
    _keep: Any = None

    def close(self) -> None:
        self.context.close()  # type: ignore[no-untyped-call]
        self.model.close()  # type: ignore[no-untyped-call]


def model_params(
    params: LoadParams, cancel: threading.Event | None = None
) -> tuple[llama_cpp.llama_model_params, Any]:
    """llama.cpp's model parameters, and the ctypes objects they point into (keep them alive).
    With `cancel`, llama.cpp's progress callback stops the load once it is set."""
    model = llama_cpp.llama_model_default_params()
    model.n_gpu_layers = params.n_gpu_layers
    split: Any = None
    if params.tensor_split:
        split = (ctypes.c_float * llama_cpp.LLAMA_MAX_DEVICES)(*params.tensor_split)
        model.tensor_split = split
    if cancel is not None:
        # llama.cpp calls it as the tensors load; returning false aborts the load.
        callback = llama_cpp.llama_progress_callback(lambda _progress, _data: not cancel.is_set())
        model.progress_callback = callback
        split = (split, callback)
    return model, split


def context_params(params: LoadParams) -> llama_cpp.llama_context_params:
    context: llama_cpp.llama_context_params = llama_cpp.llama_context_default_params()
    context.n_ctx = params.n_ctx * params.n_seq
    context.n_seq_max = params.n_seq
    context.kv_unified = False
    context.n_batch = N_BATCH
    context.n_ubatch = N_BATCH
    context.n_threads = params.n_threads
    context.n_threads_batch = params.n_threads
    context.flash_attn_type = (
        llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        if params.uses_flash_attn
        else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    )
    kv_type = _GGML_TYPES[params.kv_cache_type]
    context.type_k = kv_type
    context.type_v = kv_type
    context.swa_full = params.swa_full
    context.no_perf = True
    return context


def load(
    path: Path,
    params: LoadParams,
    *,
    verbose: bool = False,
    cancel: threading.Event | None = None,
    parallel_trials: Sequence[int] = (),
) -> LoadedModel:
    """Load `path` as `params` say; llama.cpp's log goes to stderr only when `verbose`. A set
    `cancel` stops loading the weights (LoadCancelled): a big model takes a while to read, and a
    SIGTERM meanwhile should not wait for it. With `parallel_trials` (the CPU plan's), the
    sequence count is measured first (server/engine/calibration.py) and `params.n_seq` is only
    the floor."""
    _logger.set_verbose(verbose)
    try:
        model_p, keep = model_params(params, cancel)
        model = _internals.LlamaModel(path_model=str(path), params=model_p, verbose=verbose)
    except (ValueError, RuntimeError, OSError) as exc:
        if cancel is not None and cancel.is_set():
            raise LoadCancelled(str(path)) from exc
        raise EngineLoadError(f"llama.cpp could not load {path}: {exc}") from exc
    try:
        if parallel_trials:
            params = replace(params, n_seq=_measured_n_seq(model, params, parallel_trials))
        context = _internals.LlamaContext(
            model=model, params=context_params(params), verbose=verbose
        )
    except (ValueError, RuntimeError, OSError) as exc:
        model.close()  # type: ignore[no-untyped-call]
        raise EngineLoadError(
            f"llama.cpp could not create a context of {params.n_seq} x {params.n_ctx} tokens "
            f"for {path}: {exc}"
        ) from exc
    n_ctx = min(params.n_ctx, int(llama_cpp.llama_n_ctx_seq(context.ctx)))
    return LoadedModel(model, context, n_ctx, params.n_seq, keep)


def trial_context_params(params: LoadParams, trials: Sequence[int]) -> Any:
    """llama.cpp context parameters for timing `trials`: a small throwaway context of the largest
    trial's sequences, its batch only that large (so no 512-row logits buffer is reserved)."""
    largest = max(trials)
    trial = context_params(replace(params, n_ctx=TRIAL_CTX, n_seq=largest))
    trial.n_batch = trial.n_ubatch = largest
    return trial


def _measured_n_seq(model: _internals.LlamaModel, params: LoadParams, trials: Sequence[int]) -> int:
    """The sequence count worth decoding together here (server/engine/calibration.py)."""
    trial = trial_context_params(params, trials)
    try:
        # NOTE: not on this (loading) thread, which would keep an OpenMP team beside the engine
        # thread's and slow every later decode step (engine/compute_threads.py).
        chosen, _ = on_passing_thread(
            lambda: measure_parallel(model, trial, trials), "gemma-serve-calibration"
        )
    except (ValueError, RuntimeError) as exc:  # the measurement is an optimisation: serve anyway
        _log.warning(
            "could not measure the CPU's batching (%s); serving %d at once", exc, params.n_seq
        )
        return params.n_seq
    return chosen
