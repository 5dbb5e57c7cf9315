"""The planner as tables of numbers: which model, which context, which offload, for GPUs that are
not here. Each row is a GPU (or GPUs) with all its memory free, as `--gpu-memory` plans."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.capability import (
    ASSUMED_CUDA_BUILD,
    LLAMA_CPP_PYTHON_PIN,
    LlamaBuild,
    parse_architectures,
)
from server.hardware import Device
from server.memory import (
    GiB,
    MiB,
    compute_buffer,
    embedding_memory,
    estimate,
    gib,
    global_layers,
    kv_cache,
)
from server.planner import Plan, PlanOptions
from server.planner import plan as make_plan
from server.registry import Registry, RegistryError, load_registry

# What llama.cpp reports on a machine with a CUDA build and an RTX 3090, and with the CPU-only
# build installed by default (the figures are the ones llama.cpp prints there).
CUDA_BUILD = LlamaBuild(
    gpu_offload=True,
    backends=("CUDA", "CPU"),
    devices=("CUDA0 (GPU): NVIDIA GeForce RTX 3090", "CPU (CPU): AMD Ryzen 9 5950X"),
    system_info="CUDA : ARCHS = 860 | USE_GRAPHS = 1 | PEER_MAX_BATCH_SIZE = 128 | "
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | OPENMP = 1 | "
    "REPACK = 1 |",
)
CPU_BUILD = LlamaBuild(
    gpu_offload=False,
    backends=("CPU",),
    devices=("CPU (CPU): AMD Ryzen 9 5950X",),
    system_info="CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | "
    "OPENMP = 1 | REPACK = 1 |",
)


def plan(
    devices: list[Device], registry: Registry, options: PlanOptions, build: LlamaBuild = CUDA_BUILD
) -> Plan:
    return make_plan(devices, registry, options, build)


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry()


def gpus(*sizes: float) -> list[Device]:
    return [Device(f"GPU {i}", int(s * GiB), int(s * GiB)) for i, s in enumerate(sizes)]


# The hardware table (README.md and docs/planning.md show it; test_docs.py holds them to
# this): GiB free per GPU -> model, context per sequence, layers, parallel sequences. On a GPU
# the plan makes room for at least 4 sequences of the context (continuous batching), then adds as
# many as the memory left holds.
HARDWARE_TABLE = [
    ((), "gemma-3-270m", 8192, 0, 4),  # no GPU: the bundled model on the CPU, 4 sequences
    ((4,), "gemma-3-1b-it-qat", 32768, -1, 12),
    ((6,), "gemma-3-4b-it-qat", 6144, -1, 4),  # 4B, 12B, 27B: with their vision projector
    ((8,), "gemma-3-4b-it-qat", 31744, -1, 4),  # RTX 4060 laptop
    ((12,), "gemma-3-12b-it-qat", 4096, -1, 4),  # 4 sequences of 4K are the bar for a model
    ((16,), "gemma-3-12b-it-qat", 20480, -1, 4),
    ((24,), "gemma-3-27b-it-qat", 13312, -1, 4),  # RTX 3090
    ((48,), "gemma-3-27b-it-qat", 32768, -1, 9),
    ((24, 24), "gemma-3-27b-it-qat", 32768, -1, 9),
    ((80,), "gemma-3-27b-it-qat", 32768, -1, 20),  # H100
]


@pytest.mark.parametrize(("sizes", "model", "ctx", "layers", "parallel"), HARDWARE_TABLE)
def test_hardware_table(
    registry: Registry, sizes: tuple[float, ...], model: str, ctx: int, layers: int, parallel: int
) -> None:
    chosen = plan(gpus(*sizes), registry, PlanOptions())
    assert (chosen.model.id, chosen.n_ctx, chosen.n_gpu_layers) == (model, ctx, layers)
    assert chosen.parallel == parallel
    assert chosen.warnings == ()
    if sizes:
        assert chosen.needed <= chosen.available
        assert "largest model that fits" in chosen.reason
        # the why names the figures of the pick: its sequences, its context, its memory
        assert f"with {parallel} sequences of {ctx} tokens" in chosen.reason
        assert f"({gib(chosen.needed)} of" in chosen.reason
    else:
        assert "no NVIDIA GPU found" in chosen.reason


# Boundaries: where the context is limited by memory, not by the cap.
BOUNDARIES = [
    ((1,), {}, "gemma-3-270m", 8192, 0),  # nothing fits a 1 GiB card: CPU
    ((2,), {}, "gemma-3-270m", 12288, -1),  # the bundled model is the last GPU candidate
    ((2.5,), {}, "gemma-3-1b-it-qat", 11264, -1),
    ((4.5,), {}, "gemma-3-1b-it-qat", 32768, -1),  # 4B needs 4 x 4K of KV and more
    ((9.5,), {}, "gemma-3-4b-it-qat", 32768, -1),
    ((18,), {}, "gemma-3-12b-it-qat", 28672, -1),
    ((19,), {}, "gemma-3-12b-it-qat", 32768, -1),
    ((20,), {}, "gemma-3-12b-it-qat", 32768, -1),
    ((21,), {}, "gemma-3-27b-it-qat", 4096, -1),  # 27B from here: 4 sequences of 4K and more
    ((22,), {}, "gemma-3-27b-it-qat", 7168, -1),
    # --no-vision: the projector's memory (0.9 GiB) goes to the context.
    ((6,), {"vision": False}, "gemma-3-4b-it-qat", 17408, -1),
    ((21,), {"vision": False}, "gemma-3-27b-it-qat", 6144, -1),
    ((22,), {"vision": False}, "gemma-3-27b-it-qat", 10240, -1),
    ((18,), {"kv_type": "q8_0"}, "gemma-3-12b-it-qat", 32768, -1),
    ((20,), {"kv_type": "q8_0"}, "gemma-3-27b-it-qat", 8192, -1),  # q8_0 halves the KV cache
    ((24,), {"max_ctx": 131072}, "gemma-3-27b-it-qat", 13312, -1),
    ((80,), {"max_ctx": 131072}, "gemma-3-27b-it-qat", 131072, -1),  # up to the trained context
    ((24,), {"ctx": 4096}, "gemma-3-27b-it-qat", 4096, -1),  # --ctx is used as given
    ((80,), {"ctx": 65536}, "gemma-3-27b-it-qat", 65536, -1),  # ... even above --max-ctx
    ((24,), {"gpu_layers": 10}, "gemma-3-27b-it-qat", 13312, 10),  # --gpu-layers too
    ((24,), {"margin": 8 * GiB}, "gemma-3-12b-it-qat", 24576, -1),  # 16 GiB left: no 27B
    ((24,), {"parallel": 1}, "gemma-3-27b-it-qat", 32768, -1),  # --parallel 1: one long context
    ((), {"model": "gemma-3-4b-it-qat"}, "gemma-3-4b-it-qat", 8192, 0),  # forced, CPU
    # Nothing fits a 2 GiB card at --ctx 65536: the CPU fallback still caps the context at the
    # bundled model's trained 32768 (issue 12, defect 3: it gave 65536).
    ((2,), {"ctx": 65536}, "gemma-3-270m", 32768, 0),
    ((), {"ctx": 65536}, "gemma-3-270m", 32768, 0),
]


@pytest.mark.parametrize(("sizes", "options", "model", "ctx", "layers"), BOUNDARIES)
def test_boundaries(
    registry: Registry,
    sizes: tuple[float, ...],
    options: dict[str, object],
    model: str,
    ctx: int,
    layers: int,
) -> None:
    chosen = plan(gpus(*sizes), registry, PlanOptions(**options))  # type: ignore[arg-type]
    assert (chosen.model.id, chosen.n_ctx, chosen.n_gpu_layers) == (model, ctx, layers)


def test_the_chosen_context_is_the_largest_that_fits(registry: Registry) -> None:
    chosen = plan(gpus(22), registry, PlanOptions())
    spec = chosen.model
    assert chosen.parallel == 4
    assert estimate(spec, chosen.n_ctx, n_seq=4, vision=True).total <= chosen.available
    assert estimate(spec, chosen.n_ctx + 1024, n_seq=4, vision=True).total > chosen.available


@pytest.mark.parametrize(
    ("sizes", "options", "parallel"),
    [
        ((80,), {}, 20),  # the memory left after the model and 4 sequences holds 16 more
        ((80,), {"ctx": 2048}, 32),  # capped
        ((24,), {"parallel": 2}, 2),  # as asked; the plan fits 2 sequences
        ((), {}, 4),  # CPU: bound by the cores, not memory
        ((), {"parallel": 8}, 8),
    ],
)
def test_parallel_sequences(
    registry: Registry, sizes: tuple[float, ...], options: dict[str, object], parallel: int
) -> None:
    chosen = plan(gpus(*sizes), registry, PlanOptions(**options))  # type: ignore[arg-type]
    assert chosen.parallel == parallel
    if sizes:
        needed = estimate(chosen.model, chosen.n_ctx, n_seq=parallel, vision=True).total
        assert chosen.needed == needed <= chosen.available


def test_each_sequence_has_its_own_kv_cache(registry: Registry) -> None:
    spec = registry.get("gemma-3-12b-it-qat")
    one, four = estimate(spec, 8192), estimate(spec, 8192, n_seq=4)
    assert four.kv == 4 * one.kv
    assert four.compute == one.compute and four.weights == one.weights


def test_two_gpus_split_in_proportion_to_free_memory(registry: Registry) -> None:
    chosen = plan(gpus(14, 10), registry, PlanOptions(vision=False))
    assert chosen.model.id == "gemma-3-27b-it-qat"
    assert chosen.tensor_split == (0.5909, 0.4091)  # (14 - 1) : (10 - 1)
    assert "2 GPUs" in chosen.reason


def test_the_projector_is_set_aside_on_the_first_gpu(registry: Registry) -> None:
    # The vision projector (and its compute buffer) loads whole on GPU 0: the model's layers are
    # split over what is left, so GPU 0 is not asked for its share plus the projector.
    chosen = plan(gpus(14, 10), registry, PlanOptions())
    projector = chosen.vision / GiB
    assert projector == pytest.approx(0.919, abs=0.001)
    first = round((13 - projector) / (13 - projector + 9), 4)
    assert chosen.tensor_split == (first, round(1 - first, 4)) == (0.5731, 0.4269)
    equal = plan(gpus(24, 24), registry, PlanOptions())
    assert equal.tensor_split == (0.4898, 0.5102)
    assert plan(gpus(24), registry, PlanOptions()).tensor_split is None


def test_a_forced_model_that_does_not_fit_is_partially_offloaded_with_a_warning(
    registry: Registry,
) -> None:
    chosen = plan(gpus(8), registry, PlanOptions(model="gemma-3-27b-it-qat"))
    assert chosen.model.id == "gemma-3-27b-it-qat"
    assert 0 < chosen.n_gpu_layers < 62
    assert len(chosen.warnings) == 1
    assert "offloading" in chosen.warnings[0] and "20.0 GiB at 4 x 4096" in chosen.warnings[0]


def test_a_forced_model_just_too_big_keeps_its_blocks_on_the_gpu(registry: Registry) -> None:
    chosen = plan(
        gpus(8),
        registry,
        PlanOptions(
            model="gemma-3-12b-it-qat",
            ctx=4096,
            kv_type="q8_0",
            margin=512 * MiB,
            parallel=1,
            vision=False,
        ),
    )
    assert chosen.n_gpu_layers == 48  # every block; llama.cpp leaves the output layer on the CPU
    assert "output layer on the CPU" in chosen.warnings[0]


def test_a_vision_model_budgets_its_projector(registry: Registry) -> None:
    spec = registry.get("gemma-3-4b-it-qat")
    with_vision = estimate(spec, 8192, n_seq=4, vision=True)
    # The 4B's projector file (851,251,104 bytes) and its compute buffer (121 MiB on CUDA).
    assert with_vision.vision == 851_251_104 + 121 * MiB
    assert with_vision.total == estimate(spec, 8192, n_seq=4).total + with_vision.vision
    assert estimate(registry.get("gemma-3-1b-it-qat"), 8192, vision=True).vision == 0
    chosen = plan(gpus(8), registry, PlanOptions())
    assert chosen.vision == with_vision.vision
    assert plan(gpus(8), registry, PlanOptions(vision=False)).vision == 0


def test_no_gpu_lists_every_chat_model(registry: Registry) -> None:
    chosen = plan([], registry, PlanOptions())
    assert {row.model_id for row in chosen.candidates} == {m.id for m in registry.chat_models}
    assert not chosen.on_gpu


# --- the memory estimate ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_ctx", "swa_full", "global_mib", "swa_mib"),
    [  # what llama.cpp reports for the bundled 270M (docs: shared/REFERENCE.md; test_memory.py)
        (2048, True, 6.0, 30.0),
        (2048, False, 6.0, 15.0),
        (8192, True, 24.0, 120.0),
        (8192, False, 24.0, 15.0),
        (32768, True, 96.0, 480.0),
        (32768, False, 96.0, 15.0),
    ],
)
def test_kv_cache_of_the_bundled_model(
    registry: Registry, n_ctx: int, swa_full: bool, global_mib: float, swa_mib: float
) -> None:
    kv = kv_cache(registry.get("gemma-3-270m").architecture, n_ctx, swa_full=swa_full)
    assert (kv.global_bytes / MiB, kv.swa_bytes / MiB) == (global_mib, swa_mib)


@pytest.mark.parametrize(
    ("model", "n_global", "kv_mib_8k"),
    [
        ("gemma-3-1b-it-qat", 4, 4 * 8 + 22 * 1 * 1024 / 1024),  # 1 KiB/cell/layer, SWA 1024 cells
        ("gemma-3-4b-it-qat", 5, 5 * 32 + 29 * 4 * 1536 / 1024),  # 4 KiB, SWA 1536 cells
        ("gemma-3-12b-it-qat", 8, 8 * 64 + 40 * 8 * 1536 / 1024),  # 8 KiB
        ("gemma-3-27b-it-qat", 10, 10 * 64 + 52 * 8 * 1536 / 1024),  # 8 KiB (128-dim heads)
    ],
)
def test_kv_cache_of_the_qat_models(
    registry: Registry, model: str, n_global: int, kv_mib_8k: float
) -> None:
    arch = registry.get(model).architecture
    assert global_layers(arch) == n_global
    assert kv_cache(arch, 8192).total / MiB == kv_mib_8k


def test_q8_0_kv_cache_is_17_32nds_of_f16(registry: Registry) -> None:
    arch = registry.get("gemma-3-12b-it-qat").architecture
    f16, q8 = kv_cache(arch, 8192).total, kv_cache(arch, 8192, kv_type="q8_0").total
    assert q8 / f16 == pytest.approx(17 / 32)


def test_context_is_padded_to_256_cells(registry: Registry) -> None:
    arch = registry.get("gemma-3-270m").architecture
    assert kv_cache(arch, 1000).global_bytes == kv_cache(arch, 1024).global_bytes


def test_compute_buffer_is_dominated_by_the_logits(registry: Registry) -> None:
    arch = registry.get("gemma-3-270m").architecture
    assert compute_buffer(arch) == 512 * MiB + 64 * MiB  # llama.cpp reports 514.5 MiB on CPU
    assert compute_buffer(arch, n_ubatch=256) == 256 * MiB + 64 * MiB


def test_each_gpu_of_a_split_has_its_own_compute_buffer(registry: Registry) -> None:
    spec = registry.get("gemma-3-27b-it-qat")
    one, two = estimate(spec, 8192), estimate(spec, 8192, n_gpus=2)
    assert two.total - one.total == compute_buffer(spec.architecture)


# --- the llama.cpp build as an input ------------------------------------------------------------

RTX_3090 = Device("NVIDIA GeForce RTX 3090", 24576 * MiB, 24231 * MiB, 86, "GPU-3090")
RTX_4060_LAPTOP = Device("NVIDIA GeForce RTX 4060 Laptop GPU", 8188 * MiB, 7863 * MiB, 89)
GTX_1080 = Device("NVIDIA GeForce GTX 1080", 8192 * MiB, 8000 * MiB, 61, "GPU-1080")
TESLA_P100 = Device("Tesla P100-PCIE-16GB", 16384 * MiB, 16000 * MiB, 60, "GPU-P100")

# devices, build, options -> model, on the GPU, GPUs measured against, refusals
BUILD_TABLE = [
    ([RTX_3090], CUDA_BUILD, {}, "gemma-3-27b-it-qat", True, 1, 0),
    ([RTX_3090], CPU_BUILD, {}, "gemma-3-270m", False, 0, 1),  # the card is not used
    ([], CUDA_BUILD, {}, "gemma-3-270m", False, 0, 0),
    ([], CPU_BUILD, {}, "gemma-3-270m", False, 0, 0),
    ([RTX_3090, RTX_4060_LAPTOP], CUDA_BUILD, {}, "gemma-3-27b-it-qat", True, 2, 0),
    ([RTX_3090, RTX_4060_LAPTOP], CPU_BUILD, {}, "gemma-3-270m", False, 0, 1),
    ([RTX_4060_LAPTOP], CUDA_BUILD, {}, "gemma-3-4b-it-qat", True, 1, 0),
    # GEMMA_SERVE_CUDA_ARCHITECTURES=61;70;...: a P100 (6.0) is refused, a GTX 1080 (6.1) is not.
    ([TESLA_P100], CUDA_BUILD, {"cuda_architectures": (61, 70, 86)}, "gemma-3-270m", False, 0, 1),
    ([GTX_1080], CUDA_BUILD, {"cuda_architectures": (61, 70, 86)}, "gemma-3-4b-it-qat", True, 1, 0),
    (
        [TESLA_P100, RTX_3090],
        CUDA_BUILD,
        {"cuda_architectures": (61,)},
        "gemma-3-27b-it-qat",
        True,
        1,
        1,
    ),
    # Without the variable, the build's own list (CUDA : ARCHS = 860) decides.
    ([GTX_1080], CUDA_BUILD, {}, "gemma-3-270m", False, 0, 1),
    # A model asked for by name on a CPU build: served on the CPU, with the fix.
    ([RTX_3090], CPU_BUILD, {"model": "gemma-3-27b-it-qat"}, "gemma-3-27b-it-qat", False, 0, 1),
]


@pytest.mark.parametrize(
    ("devices", "build", "options", "model", "on_gpu", "gpus", "refusals"), BUILD_TABLE
)
def test_the_plan_is_for_the_devices_the_build_can_use(
    registry: Registry,
    devices: list[Device],
    build: LlamaBuild,
    options: dict[str, object],
    model: str,
    on_gpu: bool,
    gpus: int,
    refusals: int,
) -> None:
    chosen = plan(devices, registry, PlanOptions(**options), build)  # type: ignore[arg-type]
    assert (chosen.model.id, chosen.on_gpu, chosen.gpus) == (model, on_gpu, gpus)
    assert len(chosen.refusals) == refusals
    if not on_gpu:
        assert chosen.n_ctx == 8192 and chosen.parallel == 4 and chosen.tensor_split is None


def test_a_cpu_build_names_the_card_why_and_the_fix_in_one_line(registry: Registry) -> None:
    chosen = plan([RTX_3090], registry, PlanOptions(), CPU_BUILD)
    assert chosen.refusals == (
        "found NVIDIA GeForce RTX 3090 (24.0 GiB) but this llama.cpp build is CPU-only, so the "
        "GPU is not used; to serve on it, rebuild llama-cpp-python with CUDA: make serve "
        'GPU=cuda (or: CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-deps '
        "--no-cache-dir llama-cpp-python==0.3.36)",
    )
    assert chosen.reason == ("no usable GPU: gemma-3-270m is the bundled model; running on the CPU")
    assert chosen.fallback is None  # nothing to download for the card


def test_the_rebuild_line_pins_the_installed_version_without_touching_dependencies(
    registry: Registry,
) -> None:
    installed = LlamaBuild(gpu_offload=False, backends=("CPU",), version="0.3.35")
    (line,) = plan([RTX_3090], registry, PlanOptions(), installed).refusals
    assert line.endswith(
        "pip install --force-reinstall --no-deps --no-cache-dir llama-cpp-python==0.3.35)"
    )


def test_a_cuda_build_whose_runtime_sees_no_device_says_so(registry: Registry) -> None:
    no_device = LlamaBuild(gpu_offload=False, backends=("CUDA", "CPU"))
    (line,) = plan([RTX_3090], registry, PlanOptions(), no_device).refusals
    assert "has CUDA but its runtime finds no usable device" in line


def test_a_card_below_the_architectures_is_refused_with_one_line(registry: Registry) -> None:
    chosen = plan(
        [TESLA_P100, RTX_3090], registry, PlanOptions(cuda_architectures=(61, 70)), CUDA_BUILD
    )
    assert chosen.refusals == (
        "Tesla P100-PCIE-16GB has compute capability 6.0, below the lowest this llama.cpp build "
        "has kernels for (6.1): it is not used; to use it, build llama-cpp-python on this "
        "machine (make serve GPU=cuda builds for the GPUs present)",
    )
    assert chosen.tensor_split is None  # the model on the 3090 alone
    assert chosen.available == RTX_3090.free - GiB


def test_the_preview_build_plans_for_simulated_cards(registry: Registry) -> None:
    chosen = plan(gpus(24), registry, PlanOptions(), ASSUMED_CUDA_BUILD)
    assert chosen.model.id == "gemma-3-27b-it-qat" and chosen.on_gpu


def test_the_system_info_flags_and_architectures_are_read() -> None:
    assert CUDA_BUILD.features["CUDA"] == {
        "ARCHS": "860",
        "USE_GRAPHS": "1",
        "PEER_MAX_BATCH_SIZE": "128",
    }
    assert list(CUDA_BUILD.features) == ["CUDA", "CPU"]
    assert CUDA_BUILD.cuda_architectures == (86,)
    assert CPU_BUILD.cuda_architectures == ()
    many = LlamaBuild(True, system_info="CUDA : ARCHS = 500,610,700,750,800,860,890,1200 |")
    assert many.cuda_architectures == (50, 61, 70, 75, 80, 86, 89, 120)
    assert parse_architectures("61;70;75;80;86-real;89;90a;120") == (
        61,
        70,
        75,
        80,
        86,
        89,
        90,
        120,
    )


def test_the_rebuild_pin_is_pyprojects() -> None:
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert f'"llama-cpp-python=={LLAMA_CPP_PYTHON_PIN}"' in pyproject


@pytest.mark.parametrize("devices", [[], gpus(80)])
def test_the_embedding_model_is_never_planned_for_chat(
    registry: Registry, devices: list[Device]
) -> None:
    """Chosen by the planner: never (its memory row is not even listed); forced: a one-line
    refusal naming --embedding-model."""
    chosen = plan(devices, registry, PlanOptions())
    assert chosen.model.id != "embeddinggemma-300m"
    assert "embeddinggemma-300m" not in [row.model_id for row in chosen.candidates]
    with pytest.raises(RegistryError, match="--embedding-model embeddinggemma-300m"):
        plan(devices, registry, PlanOptions(model="embeddinggemma-300m"))


@pytest.mark.parametrize(
    ("file_size", "heads", "context", "want"),
    [
        # EmbeddingGemma 300M Q8_0: 318 MiB of weights, 3 heads x 2048^2 scores (48 MiB), 64 MiB.
        (333_590_944, 3, 2048, 333_590_944 + 48 * MiB + 64 * MiB),
        (100 * MiB, 1, 1024, 100 * MiB + 4 * MiB + 64 * MiB),  # a quarter of the scores
        (100 * MiB, 4, 512, 100 * MiB + 4 * MiB + 64 * MiB),
    ],
)
def test_an_embedding_model_holds_its_file_and_its_compute_buffer_no_kv_cache(
    registry: Registry, file_size: int, heads: int, context: int, want: int
) -> None:
    arch = registry.get("embeddinggemma-300m").architecture.model_copy(
        update={"head_count": heads, "context_length": context}
    )
    assert embedding_memory(file_size, arch) == want
