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
  for Gemma's 262,144-token vocabulary), plus a small allowance for activations.

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
N_BATCH = 512

KvType = Literal["f16", "q8_0"]
# Bytes per element as ggml stores them: q8_0 packs 32 values in 34 bytes.
KV_BYTES_PER_ELEMENT: dict[str, float] = {"f16": 2.0, "q8_0": 34 / 32}
CELL_PADDING = 256
ACTIVATIONS_ALLOWANCE = 64 * MiB


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


@dataclass(frozen=True)
class Estimate:
    weights: int
    kv: int
    compute: int

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.compute


def estimate(
    spec: ModelSpec,
    n_ctx: int,
    *,
    n_gpus: int = 1,
    kv_type: KvType = "f16",
    n_ubatch: int = N_BATCH,
    n_seq: int = 1,
) -> Estimate:
    """Device memory to hold `spec` fully offloaded with `n_seq` sequences of `n_ctx` tokens each
    (each GPU has its own compute buffer when the model is split)."""
    return Estimate(
        weights=spec.file_size,
        kv=n_seq * kv_cache(spec.architecture, n_ctx, n_ubatch=n_ubatch, kv_type=kv_type).total,
        compute=compute_buffer(spec.architecture, n_ubatch) * max(1, n_gpus),
    )
