"""The metrics registry: engine load and GPU memory are read at scrape time; GPU series appear
only when a GPU probe is given (NVML figures injected: this machine has no GPU)."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request

from server.api.metrics import Metrics
from server.engine.contract import EngineStats
from server.hardware import GpuMemory, GpuProbe
from tests.nvml import RTX_3090, Card, FakeNvml, Memory


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_engine_load_and_gpu_memory_are_read_at_scrape_time() -> None:
    stats = [EngineStats(active=3, queued=5, parallel=4)]
    gpus = [GpuMemory(0, "NVIDIA GeForce RTX 4090", used=5 << 30, total=24 << 30)]
    metrics = Metrics(engine_stats=lambda: stats[0], gpu_memory=lambda: gpus)
    found = samples(metrics)
    assert found[("gemma_serve_active_sequences", ())] == 3
    assert found[("gemma_serve_queued_requests", ())] == 5
    assert found[("gemma_serve_parallel_sequences", ())] == 4
    labels = (("gpu", "0"), ("name", "NVIDIA GeForce RTX 4090"))
    assert found[("gemma_serve_gpu_memory_used_bytes", labels)] == 5 << 30
    assert found[("gemma_serve_gpu_memory_total_bytes", labels)] == 24 << 30
    stats[0] = EngineStats(active=0, queued=0, parallel=4)
    assert samples(metrics)[("gemma_serve_active_sequences", ())] == 0


def test_no_engine_figures_while_loading_and_no_gpu_series_without_a_gpu() -> None:
    found = samples(Metrics(engine_stats=lambda: None))
    names = {name for name, _ in found}
    assert "gemma_serve_active_sequences" not in names
    assert not [name for name in names if name.startswith("gemma_serve_gpu")]
    assert "gemma_serve_requests_in_progress" in names


@dataclass
class ThreadNotingNvml(FakeNvml):
    """Notes which thread reads the GPU memory."""

    threads: list[threading.Thread] = field(default_factory=list)

    def nvmlDeviceGetMemoryInfo(self, card: Card) -> Memory:
        self.threads.append(threading.current_thread())
        return super().nvmlDeviceGetMemoryInfo(card)


def test_a_scrape_reads_gpu_memory_from_the_probe_off_the_event_loop() -> None:
    nvml = ThreadNotingNvml([RTX_3090])
    metrics = Metrics(engine_stats=lambda: None, gpu_memory=GpuProbe(nvml).memory_in_use)

    async def scrape() -> str:
        response = await metrics.endpoint(Request({"type": "http", "method": "GET"}))
        return bytes(response.body).decode()

    text = asyncio.run(scrape())
    assert (
        'gemma_serve_gpu_memory_used_bytes{gpu="0",name="NVIDIA GeForce RTX 3090"} 3.6175872e+08'
        in text
    )
    assert nvml.threads and threading.main_thread() not in nvml.threads
    assert nvml.inits == 1
