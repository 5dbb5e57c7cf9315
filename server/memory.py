"""How much device memory llama.cpp allocates for a model: pure arithmetic on registry figures.

The estimate follows what llama.cpp really allocates (src/llama-kv-cache-iswa.cpp,
src/llama-context.cpp), checked against llama.cpp's own reports in tests/e2e/test_memory.py:
- weights: the GGUF file's size (Gemma 3 ties its output head to the token embeddings, which
  llama.cpp keeps on the CPU for the input lookup *and* copies to the GPU for the output, so the
  GPU holds about the whole file);
- KV cache: n_ctx is padded to 256 cells; global layers (every `swa_pattern`-th) keep n_ctx cells,
  sliding-window layers keep pad(min(n_ctx, window + n_ubatch), 256) cells (`swa_full=False`, as
  gemma-serve loads), or n_ctx with `swa_full=True`; a cell of a layer holds K and V for every KV
  head;
- parallel sequences: gemma-serve gives each of its sequences its own KV stream
  (`kv_unified=false`, llama.cpp's n_ctx = context x parallel), so the KV cache above is allocated
  once per sequence; the compute buffer does not grow with them;
- compute buffers: dominated by the logits of one micro-batch (vocab x n_ubatch x 4 bytes: 512 MiB
  for Gemma's 262,144-token vocabulary), plus a small allowance for activations;
- a vision model's projector (unless served with --no-vision): its file, loaded whole on the
  first GPU, and its own compute buffer (`projector_memory`).

`N_BATCH` is the one batch size: the loader (server/engine/loading.py) gives llama.cpp
n_batch = n_ubatch = N_BATCH, and the compute buffer and sliding-window cells here are sized by
the same number, so the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from server.registry import Architecture, ModelSpec

MiB = 1 << 20
GiB = 1 << 30

# Tokens one llama_decode takes at most; the loader's n_batch and n_ubatch both.
# NOTE: a 256-token micro-batch would be faster on the CPU (the sliding-window ring shrinks from
# 1024 to 768 cells: 7-16% faster prefill at 2-3.5k tokens), but in that ring a restored state of
# tests/e2e/test_prompt_cache.py's conversations answers differently from the kept one, and that
# test fails (bench/RESULTS.md).
N_BATCH = 512

KvType = Literal["f16", "q8_0"]
# Bytes per element as ggml stores them: q8_0 packs 32 values in 34 bytes.
KV_BYTES_PER_ELEMENT: dict[str, float] = {"f16": 2.0, "q8_0": 34 / 32}
CELL_PADDING = 256
ACTIVATIONS_ALLOWANCE = 64 * MiB


def flash_attn_needed_for(kv_type: str, on_gpu: bool) -> Literal["kv_cache", "gpu"] | None:
    """Why attention cannot run without flash attention here (None: it can, on the CPU with an
    f16 cache): llama.cpp's quantised V cache needs it, and on a GPU these estimates count on it
    (it keeps the attention scores out of the compute buffer). The loader and the start-up check
    of --no-flash-attn both follow this."""
    if kv_type != "f16":
        return "kv_cache"
    if on_gpu:
        return "gpu"
    return None


def pad(value: int, to: int = CELL_PADDING) -> int:
    return -(-value // to) * to


def gib(n: int | float) -> str:
    return f"{n / GiB:.1f} GiB"


@dataclass(frozen=True)
class KvCache:
    global_bytes: int
    swa_bytes: int

    @property
    def total(self) -> int:
        return self.global_bytes + self.swa_bytes


def global_layers(arch: Architecture) -> int:
    return sum(1 for i in range(arch.block_count) if i % arch.swa_pattern == arch.swa_pattern - 1)


def kv_cache(
    arch: Architecture,
    n_ctx: int,
    *,
    n_ubatch: int = N_BATCH,
    kv_type: KvType = "f16",
    swa_full: bool = False,
) -> KvCache:
    """KV cache bytes llama.cpp allocates for one sequence of `n_ctx` tokens."""
    cells = pad(n_ctx)
    swa_cells = cells if swa_full else pad(min(cells, arch.sliding_window + n_ubatch))
    per_cell = arch.head_count_kv * (arch.key_length + arch.value_length)
    bytes_per_cell_layer = per_cell * KV_BYTES_PER_ELEMENT[kv_type]
    n_global = global_layers(arch)
    n_swa = arch.block_count - n_global
    return KvCache(
        global_bytes=round(n_global * cells * bytes_per_cell_layer),
        swa_bytes=round(n_swa * swa_cells * bytes_per_cell_layer),
    )


def compute_buffer(arch: Architecture, n_ubatch: int = N_BATCH) -> int:
    return arch.vocab_size * n_ubatch * 4 + ACTIVATIONS_ALLOWANCE


# A Gemma 3 projector (mmproj-model-f16: SigLIP in f16) whose registry entry records no size: the
# 4B's is 851,251,104 bytes; the 12B's and 27B's differ only by their wider input projection
# (1152 x 3840 and 1152 x 5376 f16 weights instead of 1152 x 2560: +3 and +6.5 MB).
PROJECTOR_SIZE_ESTIMATE = 860 * 10**6
# Its compute buffer for Gemma 3's 896 x 896 input on CUDA with flash attention (as llama.cpp
# reports it when the projector loads; without flash attention it would be several times larger).
PROJECTOR_COMPUTE = 121 * MiB


def projector_memory(spec: ModelSpec) -> int:
    """Device memory a vision model's projector takes (0 for a text-only model)."""
    if not spec.has_vision:
        return 0
    return (spec.vision_projector_size or PROJECTOR_SIZE_ESTIMATE) + PROJECTOR_COMPUTE


@dataclass(frozen=True)
class Estimate:
    weights: int
    kv: int
    compute: int
    vision: int = 0  # the projector and its compute buffer

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.compute + self.vision


def estimate(
    spec: ModelSpec,
    n_ctx: int,
    *,
    n_gpus: int = 1,
    kv_type: KvType = "f16",
    n_ubatch: int = N_BATCH,
    n_seq: int = 1,
    vision: bool = False,
) -> Estimate:
    """Device memory to hold `spec` fully offloaded with `n_seq` sequences of `n_ctx` tokens each
    (each GPU has its own compute buffer when the model is split), and with `vision` its
    projector."""
    return Estimate(
        weights=spec.file_size,
        kv=n_seq * kv_cache(spec.architecture, n_ctx, n_ubatch=n_ubatch, kv_type=kv_type).total,
        compute=compute_buffer(spec.architecture, n_ubatch) * max(1, n_gpus),
        vision=projector_memory(spec) if vision else 0,
    )


def embedding_memory(file_size: int, arch: Architecture) -> int:
    """Bytes an embedding model holds once loaded (server/engine/embedding_engine.py): its
    weights (the file), no KV cache (it keeps none), and its compute buffer. A bidirectional model
    sees a whole input in one micro-batch of its full context, so the buffer is dominated by the
    attention scores (heads x context x context float32), plus the activations allowance."""
    scores = arch.head_count * arch.context_length * arch.context_length * 4
    return file_size + scores + ACTIVATIONS_ALLOWANCE
