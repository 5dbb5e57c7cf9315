"""The planner as tables of numbers: which model, which context, which offload, for GPUs that are
not here. Each row is a GPU (or GPUs) with all its memory free, as `--gpu-memory` plans."""

from __future__ import annotations

import pytest

from server.planner import (
    Device,
    GiB,
    MiB,
    PlanOptions,
    compute_buffer,
    estimate,
    global_layers,
    kv_cache,
    plan,
)
from server.registry import Registry, load_registry


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
    ((6,), "gemma-3-4b-it-qat", 17408, -1, 4),
    ((8,), "gemma-3-4b-it-qat", 32768, -1, 5),  # RTX 4060 laptop
    ((12,), "gemma-3-12b-it-qat", 7168, -1, 4),  # 4 sequences of 4K are the bar for a model
    ((16,), "gemma-3-12b-it-qat", 23552, -1, 4),
    ((24,), "gemma-3-27b-it-qat", 16384, -1, 4),  # RTX 3090
    ((48,), "gemma-3-27b-it-qat", 32768, -1, 10),
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
    else:
        assert "no NVIDIA GPU found" in chosen.reason


# Boundaries: where the context is limited by memory, not by the cap.
BOUNDARIES = [
    ((1,), {}, "gemma-3-270m", 8192, 0),  # nothing fits a 1 GiB card: CPU
    ((2,), {}, "gemma-3-270m", 12288, -1),  # the bundled model is the last GPU candidate
    ((2.5,), {}, "gemma-3-1b-it-qat", 11264, -1),
    ((4.5,), {}, "gemma-3-1b-it-qat", 32768, -1),  # 4B needs 4 x 4K of KV and more
    ((9.5,), {}, "gemma-3-4b-it-qat", 32768, -1),
    ((18,), {}, "gemma-3-12b-it-qat", 31744, -1),
    ((19,), {}, "gemma-3-12b-it-qat", 32768, -1),
    ((20,), {}, "gemma-3-12b-it-qat", 32768, -1),
    ((21,), {}, "gemma-3-27b-it-qat", 6144, -1),  # 27B from here: 4 sequences of 4K and more
    ((22,), {}, "gemma-3-27b-it-qat", 10240, -1),
    ((18,), {"kv_type": "q8_0"}, "gemma-3-12b-it-qat", 32768, -1),
    ((20,), {"kv_type": "q8_0"}, "gemma-3-27b-it-qat", 14336, -1),  # q8_0 halves the KV cache
    ((24,), {"max_ctx": 131072}, "gemma-3-27b-it-qat", 16384, -1),
    ((80,), {"max_ctx": 131072}, "gemma-3-27b-it-qat", 131072, -1),  # up to the trained context
    ((24,), {"ctx": 4096}, "gemma-3-27b-it-qat", 4096, -1),  # --ctx is used as given
    ((80,), {"ctx": 65536}, "gemma-3-27b-it-qat", 65536, -1),  # ... even above --max-ctx
    ((24,), {"gpu_layers": 10}, "gemma-3-27b-it-qat", 16384, 10),  # --gpu-layers too
    ((24,), {"margin": 8 * GiB}, "gemma-3-12b-it-qat", 27648, -1),  # 16 GiB left: no 27B
    ((24,), {"parallel": 1}, "gemma-3-27b-it-qat", 32768, -1),  # --parallel 1: one long context
    ((), {"model": "gemma-3-4b-it-qat"}, "gemma-3-4b-it-qat", 8192, 0),  # forced, CPU
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
    assert estimate(spec, chosen.n_ctx, n_seq=4).total <= chosen.available
    assert estimate(spec, chosen.n_ctx + 1024, n_seq=4).total > chosen.available


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
        needed = estimate(chosen.model, chosen.n_ctx, n_seq=parallel).total
        assert chosen.needed == needed <= chosen.available


def test_each_sequence_has_its_own_kv_cache(registry: Registry) -> None:
    spec = registry.get("gemma-3-12b-it-qat")
    one, four = estimate(spec, 8192), estimate(spec, 8192, n_seq=4)
    assert four.kv == 4 * one.kv
    assert four.compute == one.compute and four.weights == one.weights


def test_two_gpus_split_in_proportion_to_free_memory(registry: Registry) -> None:
    chosen = plan(gpus(14, 10), registry, PlanOptions())
    assert chosen.model.id == "gemma-3-27b-it-qat"
    assert chosen.tensor_split == (0.5909, 0.4091)  # (14 - 1) : (10 - 1)
    assert "2 GPUs" in chosen.reason
    assert plan(gpus(24), registry, PlanOptions()).tensor_split is None


def test_a_forced_model_that_does_not_fit_is_partially_offloaded_with_a_warning(
    registry: Registry,
) -> None:
    chosen = plan(gpus(8), registry, PlanOptions(model="gemma-3-27b-it-qat"))
    assert chosen.model.id == "gemma-3-27b-it-qat"
    assert 0 < chosen.n_gpu_layers < 62
    assert len(chosen.warnings) == 1
    assert "offloading" in chosen.warnings[0] and "19.1 GiB at 4 x 4096" in chosen.warnings[0]


def test_a_forced_model_just_too_big_keeps_its_blocks_on_the_gpu(registry: Registry) -> None:
    chosen = plan(
        gpus(8),
        registry,
        PlanOptions(
            model="gemma-3-12b-it-qat", ctx=4096, kv_type="q8_0", margin=512 * MiB, parallel=1
        ),
    )
    assert chosen.n_gpu_layers == 48  # every block; llama.cpp leaves the output layer on the CPU
    assert "output layer on the CPU" in chosen.warnings[0]


def test_no_gpu_lists_every_model(registry: Registry) -> None:
    chosen = plan([], registry, PlanOptions())
    assert {row.model_id for row in chosen.candidates} == {m.id for m in registry.models}
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
