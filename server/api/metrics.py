"""Prometheus metrics: one registry per app (no process-wide globals), served at /metrics.

What a home operator wants on a dashboard: requests by route and status, tokens in and out,
time to first token and the gap between tokens, how many sequences run and wait, and GPU memory
in use. Engine load and GPU memory are read when Prometheus scrapes, not tracked on every token;
the scrape is collected in a worker thread, since GPU memory comes from the NVML driver.

Route labels are the app's route templates (`/v1/models/{model_id}`), and anything else is
`other`, so a client probing random paths or methods cannot grow the label set without bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import Scope

from server.api.error_shape import DIALECTS
from server.engine.contract import EngineStats, PromptCacheStats
from server.hardware import GpuMemory
from server.models.manager import ModelState

_METHODS = frozenset({"GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH"})
# Seconds. Prefill of a long prompt on a CPU takes many seconds; a GPU token takes milliseconds.
_FIRST_TOKEN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)
_TOKEN_GAP_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5)
_REQUEST_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class _EngineCollector(Collector):
    def __init__(self, stats: Callable[[], EngineStats | None]) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        stats = self._stats()
        if stats is None:  # still loading: no figures rather than zeros that look real
            return
        yield GaugeMetricFamily(
            "gemma_serve_active_sequences", "Sequences being generated now.", stats.active
        )
        yield GaugeMetricFamily(
            "gemma_serve_queued_requests", "Accepted requests waiting for a slot.", stats.queued
        )
        yield GaugeMetricFamily(
            "gemma_serve_parallel_sequences", "Sequences decoded together at most.", stats.parallel
        )
        if stats.prompt_cache is not None:
            yield from _prompt_cache_families(stats.prompt_cache)


def _prompt_cache_families(cache: PromptCacheStats) -> Iterable[Metric]:
    """The prompt cache (issue 13): reuse, and the sequence states saved in host memory."""
    for name, help_text, value in (
        ("hits", "Generations that reused a cached prompt prefix.", cache.hits),
        (
            "reused_tokens",
            "Prompt tokens served from the cache, not prefilled.",
            cache.reused_tokens,
        ),
        ("restores", "Saved sequence states restored into a slot.", cache.restores),
        ("saves", "Sequence states saved to host memory.", cache.saves),
        ("evictions", "Saved states dropped to stay within --cache-ram.", cache.evictions),
        ("save_seconds", "Time spent saving sequence states.", cache.save_seconds),
        ("restore_seconds", "Time spent restoring sequence states.", cache.restore_seconds),
    ):
        yield CounterMetricFamily(f"gemma_serve_prompt_cache_{name}", help_text, value)
    yield GaugeMetricFamily(
        "gemma_serve_prompt_cache_saved_states",
        "Sequence states held in host memory.",
        cache.saved_states,
    )
    yield GaugeMetricFamily(
        "gemma_serve_prompt_cache_saved_bytes",
        "Host memory the saved sequence states take.",
        cache.saved_bytes,
    )
    yield GaugeMetricFamily(
        "gemma_serve_prompt_cache_budget_bytes",
        "Host memory the saved states may take (--cache-ram).",
        cache.budget_bytes,
    )


class _GpuCollector(Collector):
    def __init__(self, memory: Callable[[], list[GpuMemory]]) -> None:
        self._memory = memory

    def collect(self) -> Iterable[GaugeMetricFamily]:
        gpus = self._memory()
        if not gpus:
            return
        used = GaugeMetricFamily(
            "gemma_serve_gpu_memory_used_bytes",
            "GPU memory in use, by all processes (as nvidia-smi shows).",
            labels=["gpu", "name"],
        )
        total = GaugeMetricFamily(
            "gemma_serve_gpu_memory_total_bytes", "GPU memory in all.", labels=["gpu", "name"]
        )
        for gpu in gpus:
            used.add_metric([str(gpu.index), gpu.name], gpu.used)
            total.add_metric([str(gpu.index), gpu.name], gpu.total)
        yield used
        yield total


class _ModelsCollector(Collector):
    """Each installed model (issue 20): loaded or not, the memory it holds, its requests, last
    use, and its loads and unloads with the time they took."""

    def __init__(self, states: Callable[[], Sequence[ModelState]]) -> None:
        self._states = states

    def collect(self) -> Iterable[Metric]:
        gauges = {
            "loaded": GaugeMetricFamily(
                "gemma_serve_model_loaded", "1 while the model is in memory.", labels=["model"]
            ),
            "memory": GaugeMetricFamily(
                "gemma_serve_model_memory_bytes",
                "Memory the model holds while loaded (the plan's figure).",
                labels=["model"],
            ),
            "last": GaugeMetricFamily(
                "gemma_serve_model_last_used_seconds",
                "Unix time the model last served (absent: never).",
                labels=["model"],
            ),
        }
        counters = {
            "requests": CounterMetricFamily(
                "gemma_serve_model_requests", "Requests that named the model.", labels=["model"]
            ),
            "loads": CounterMetricFamily(
                "gemma_serve_model_loads", "Times the model was loaded.", labels=["model"]
            ),
            "unloads": CounterMetricFamily(
                "gemma_serve_model_unloads", "Times the model was unloaded.", labels=["model"]
            ),
            "load_s": CounterMetricFamily(
                "gemma_serve_model_load_seconds", "Seconds spent loading it.", labels=["model"]
            ),
            "unload_s": CounterMetricFamily(
                "gemma_serve_model_unload_seconds", "Seconds spent unloading it.", labels=["model"]
            ),
        }
        for state in self._states():
            label = [state.model_id]
            gauges["loaded"].add_metric(label, 1.0 if state.state == "loaded" else 0.0)
            gauges["memory"].add_metric(label, state.holds)
            if state.last_used is not None:
                gauges["last"].add_metric(label, state.last_used)
            counters["requests"].add_metric(label, state.requests)
            counters["loads"].add_metric(label, state.loads)
            counters["unloads"].add_metric(label, state.unloads)
            counters["load_s"].add_metric(label, state.load_seconds)
            counters["unload_s"].add_metric(label, state.unload_seconds)
        yield from gauges.values()
        yield from counters.values()


class Metrics:
    """The app's instruments. `engine_stats` returns None while the model loads; `gpu_memory`
    is given only when the server runs on a GPU (the series are absent otherwise)."""

    def __init__(
        self,
        engine_stats: Callable[[], EngineStats | None],
        gpu_memory: Callable[[], list[GpuMemory]] | None = None,
        models: Callable[[], Sequence[ModelState]] | None = None,
    ) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "gemma_serve_requests",
            "HTTP requests answered, by method, route and status code.",
            ["method", "path", "status"],
            registry=registry,
        )
        self.dialect_requests = Counter(
            "gemma_serve_dialect_requests",
            "HTTP requests answered, by the API they spoke: openai, ollama (/api/*) or "
            "anthropic (/v1/messages).",
            ["dialect"],
            registry=registry,
        )
        for dialect in DIALECTS:
            self.dialect_requests.labels(dialect)  # every dialect shows, at 0 until used
        self.request_duration = Histogram(
            "gemma_serve_request_duration_seconds",
            "Time from a request's arrival to the end of its response (streams included).",
            ["path"],
            buckets=_REQUEST_BUCKETS,
            registry=registry,
        )
        self.in_progress = Gauge(
            "gemma_serve_requests_in_progress",
            "HTTP requests being answered now.",
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "gemma_serve_prompt_tokens", "Prompt tokens of finished generations.", registry=registry
        )
        self.completion_tokens = Counter(
            "gemma_serve_completion_tokens",
            "Tokens generated (finished generations).",
            registry=registry,
        )
        self.time_to_first_token = Histogram(
            "gemma_serve_time_to_first_token_seconds",
            "Time from a generation's start (queue and prefill included) to its first text.",
            buckets=_FIRST_TOKEN_BUCKETS,
            registry=registry,
        )
        self.inter_token_latency = Histogram(
            "gemma_serve_inter_token_latency_seconds",
            "Time between successive pieces of generated text (one token each, except where a "
            "multi-byte character or a possible stop string is held back).",
            buckets=_TOKEN_GAP_BUCKETS,
            registry=registry,
        )
        registry.register(_EngineCollector(engine_stats))
        if gpu_memory is not None:
            registry.register(_GpuCollector(gpu_memory))
        if models is not None:
            registry.register(_ModelsCollector(models))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def endpoint(self, request: Request) -> Response:
        # Collecting reads GPU memory through NVML, a blocking driver call: off the event loop.
        return Response(await asyncio.to_thread(self.render), media_type=CONTENT_TYPE_LATEST)


def route_label(routes: Sequence[BaseRoute], scope: Scope) -> str:
    """The route template a request matched, or 'other' (bounded label values).

    Called after the app ran: the router has put the matched route in the scope. A request
    refused before routing (401, 421, 413, 503) is matched here against the app's routes,
    including those of included routers.
    """
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else _match(routes, scope)


def _match(routes: Sequence[BaseRoute], scope: Scope) -> str:
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI's lazily included router
        if included is not None:
            found = _match(included.routes, scope)
            if found != "other":
                return found
            continue
        match, _ = route.matches(scope)
        if match != Match.NONE:
            return str(getattr(route, "path", "other"))
    return "other"


def method_label(method: str) -> str:
    return method if method in _METHODS else "other"
