"""The planner's memory estimate against what llama.cpp itself allocates.

Loads the bundled 270M model through llama.cpp with gemma-serve's own load parameters at several
context lengths, with the sliding-window cache full-size and not, reads the KV buffer sizes
llama.cpp reports in its log, and holds the estimate to within 5% of them.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from server.memory import MiB, compute_buffer, estimate, kv_cache
from server.registry import load_registry

LOAD = """
import sys, llama_cpp
from pathlib import Path
from server.engine.loading import LoadParams, load
params = LoadParams(n_ctx=int(sys.argv[2]), n_threads=2, n_gpu_layers=int(sys.argv[4]),
                    kv_cache_type=sys.argv[5], swa_full=sys.argv[3] == "1",
                    n_seq=int(sys.argv[6]))
loaded = load(Path(sys.argv[1]), params, verbose=True)
tokens = loaded.model.tokenize(b"Hello", add_bos=True, special=False)
batch = llama_cpp.llama_batch_init(len(tokens), 0, 1)
for seq in range(params.n_seq):  # every sequence's stream decodes
    for i, token in enumerate(tokens):
        batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, i, 1
        batch.seq_id[i][0], batch.logits[i] = seq, i == len(tokens) - 1
    batch.n_tokens = len(tokens)
    assert llama_cpp.llama_decode(loaded.context.ctx, batch) == 0
print("decoded", params.n_seq)
"""

KV_LINE = re.compile(r"llama_kv_cache: size =\s*([\d.]+) MiB \(\s*(\d+) cells,\s*(\d+) layers")
COMPUTE_LINE = re.compile(r"CPU compute buffer size =\s*([\d.]+) MiB")


def llama_cpp_report(
    model_path: Path,
    n_ctx: int,
    swa_full: bool,
    gpu_layers: int = 0,
    kv_type: str = "f16",
    n_seq: int = 1,
) -> tuple[list[float], float]:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            LOAD,
            str(model_path),
            str(n_ctx),
            "1" if swa_full else "0",
            str(gpu_layers),
            kv_type,
            str(n_seq),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert f"decoded {n_seq}" in result.stdout  # the context decodes with these parameters
    kv = [float(size) for size, _cells, _layers in KV_LINE.findall(result.stderr)]
    compute = [float(size) for size in COMPUTE_LINE.findall(result.stderr)]
    assert len(kv) == 2 and compute, result.stderr[-2000:]  # the global and the SWA cache
    return kv, compute[0]


@pytest.mark.parametrize("swa_full", [False, True])
@pytest.mark.parametrize("n_ctx", [2048, 8192, 32768])
def test_kv_estimate_within_5_percent_of_llama_cpp(
    model_path: Path, n_ctx: int, swa_full: bool
) -> None:
    (global_mib, swa_mib), compute_mib = llama_cpp_report(model_path, n_ctx, swa_full)
    estimate = kv_cache(load_registry().get("gemma-3-270m").architecture, n_ctx, swa_full=swa_full)
    assert estimate.global_bytes / MiB == pytest.approx(global_mib, rel=0.05)
    assert estimate.swa_bytes / MiB == pytest.approx(swa_mib, rel=0.05)
    assert estimate.total / MiB == pytest.approx(global_mib + swa_mib, rel=0.05)
    # The compute estimate is deliberately a little high (an allowance for activations), never low.
    planned_compute = compute_buffer(load_registry().get("gemma-3-270m").architecture) / MiB
    assert compute_mib <= planned_compute <= compute_mib * 1.15


def test_the_server_loads_with_the_small_sliding_window_cache(model_path: Path) -> None:
    # gemma-serve's parameters (swa_full=False): the SWA layers keep window + ubatch cells only.
    from server.engine.loading import LoadParams, context_params

    assert context_params(LoadParams(n_ctx=8192, n_threads=2)).swa_full is False
    (_, swa_mib), _ = llama_cpp_report(model_path, 32768, swa_full=False)
    assert swa_mib == 15.0  # 15 layers x 1024 cells x 1 KiB, not 480 MiB


@pytest.mark.parametrize("n_seq", [2, 4])
def test_each_parallel_sequence_has_its_own_kv_stream(model_path: Path, n_seq: int) -> None:
    # kv_unified=false: llama.cpp allocates n_seq streams of the per-sequence context; the
    # planner's estimate for n_seq sequences is n_seq times one sequence's.
    (global_mib, swa_mib), compute_mib = llama_cpp_report(model_path, 4096, False, n_seq=n_seq)
    spec = load_registry().get("gemma-3-270m")
    planned = estimate(spec, 4096, n_seq=n_seq)
    assert planned.kv / MiB == pytest.approx(global_mib + swa_mib, rel=0.05)
    assert (global_mib, swa_mib) == (12.0 * n_seq, 15.0 * n_seq)
    assert compute_mib <= planned.compute / MiB <= compute_mib * 1.15  # not per sequence


@pytest.mark.parametrize("gpu_layers", [-1, 0])
def test_q8_0_kv_loads_and_is_within_5_percent(model_path: Path, gpu_layers: int) -> None:
    # -1: the parameters a GPU load uses (all layers offloaded, flash attention); on a CPU-only
    # build llama.cpp keeps the layers on the CPU but allocates the same cache. 0: a CPU load,
    # where the quantised V cache needs flash attention too.
    (global_mib, swa_mib), _ = llama_cpp_report(
        model_path, 8192, swa_full=False, gpu_layers=gpu_layers, kv_type="q8_0"
    )
    estimate = kv_cache(load_registry().get("gemma-3-270m").architecture, 8192, kv_type="q8_0")
    assert estimate.global_bytes / MiB == pytest.approx(global_mib, rel=0.05)
    assert estimate.swa_bytes / MiB == pytest.approx(swa_mib, rel=0.05)
    assert global_mib < 24.0 * 0.6  # about 17/32 of the f16 cache
