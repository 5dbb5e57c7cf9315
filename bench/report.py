"""Figures from rounds, the markdown table, the targets and the machine description.

Every figure is computed per run (one round of N clients) and the table shows the median over the
runs with its spread (lowest-highest run). Rows are metrics, columns systems, then gemma-serve's
ratio to the peer, to the ceiling and (when it ran) to llama-server. Time-to-first-token rows are
"lower is better"; so is their ratio. A ratio whose gap between the two medians is smaller than
either system's spread is marked `~` and named in the noise notes: the machine's drift between
runs, not the systems, may have made it.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from streaming import RoundResult

GEMMA = "gemma-serve"
PEER = "peer"
CEILING = "ceiling"
LLAMA_SERVER = "llama-server"
# gemma-serve from another checkout (`--baseline DIR`): a before/after of a change, same run.
BASELINE = "baseline"

# Issue 5's targets, same run, same machine.
SINGLE_STREAM_VS_PEER = 1.1
FOUR_CLIENTS_VS_PEER = 1.6
TTFT_4_OVER_1 = 4.0
# Issue 25's: as fast as llama.cpp's own server built from the same llama.cpp.
DECODE_VS_LLAMA_SERVER = 0.97
TTFT_VS_LLAMA_SERVER = 1.0


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    clients: int
    per_run: Callable[[RoundResult], float | None]
    lower_is_better: bool = False
    scale: float = 1.0  # seconds -> milliseconds for times


def _ttft_single(r: RoundResult) -> float | None:
    return r.streams[0].ttft


def _ttft_mean(r: RoundResult) -> float | None:
    values = [s.ttft for s in r.streams]
    return None if None in values else statistics.fmean(v for v in values if v is not None)


def _ttft_worst(r: RoundResult) -> float | None:
    values = [s.ttft for s in r.streams]
    return None if None in values else max(v for v in values if v is not None)


def _decode_single(r: RoundResult) -> float | None:
    return r.streams[0].decode_tokens_per_s


def metrics_for(clients: list[int]) -> list[Metric]:
    rows: list[Metric] = []
    if 1 in clients:
        rows.append(Metric("ttft_1", "TTFT, 1 client (ms)", 1, _ttft_single, True, 1000))
    if 4 in clients:
        rows.append(Metric("ttft_4_mean", "TTFT, 4 clients, mean (ms)", 4, _ttft_mean, True, 1000))
        rows.append(
            Metric("ttft_4_worst", "TTFT, 4 clients, worst (ms)", 4, _ttft_worst, True, 1000)
        )
    if 1 in clients:
        rows.append(Metric("decode_1", "decode tok/s, 1 stream", 1, _decode_single))
    rows.extend(
        Metric(
            f"aggregate_{c}",
            f"aggregate tok/s, {c} client{'s' if c > 1 else ''}",
            c,
            lambda r: r.aggregate_tokens_per_s,
        )
        for c in clients
    )
    return rows


def medians(
    rounds: dict[str, dict[int, list[RoundResult]]], metrics: list[Metric]
) -> dict[str, dict[str, float | None]]:
    """system -> metric key -> median over runs (None where the system has no such round)."""
    table: dict[str, dict[str, float | None]] = {}
    for system, by_clients in rounds.items():
        row: dict[str, float | None] = {}
        for metric in metrics:
            values = [metric.per_run(r) for r in by_clients.get(metric.clients, [])]
            present = [v * metric.scale for v in values if v is not None]
            row[metric.key] = statistics.median(present) if present else None
        table[system] = row
    return table


# system -> metric key -> (lowest, highest) over the runs
Spreads = dict[str, dict[str, tuple[float, float] | None]]


def spreads(rounds: dict[str, dict[int, list[RoundResult]]], metrics: list[Metric]) -> Spreads:
    """system -> metric key -> (lowest, highest) over runs (None where there is no such round)."""
    table: Spreads = {}
    for system, by_clients in rounds.items():
        row: dict[str, tuple[float, float] | None] = {}
        for metric in metrics:
            values = [metric.per_run(r) for r in by_clients.get(metric.clients, [])]
            present = [v * metric.scale for v in values if v is not None]
            row[metric.key] = (min(present), max(present)) if present else None
        table[system] = row
    return table


def within_noise(
    figures: dict[str, dict[str, float | None]], ranges: Spreads, key: str, other: str
) -> tuple[float, float] | None:
    """(gap, spread) when gemma-serve's gap to `other` on `key` is smaller than the wider of the
    two systems' spreads (so the runs cannot tell them apart), else None."""
    a, b = figures.get(GEMMA, {}).get(key), figures.get(other, {}).get(key)
    ra, rb = ranges.get(GEMMA, {}).get(key), ranges.get(other, {}).get(key)
    if a is None or b is None or ra is None or rb is None:
        return None
    gap = abs(a - b)
    spread = max(ra[1] - ra[0], rb[1] - rb[0])
    return (gap, spread) if spread > gap else None


def noise_notes(
    figures: dict[str, dict[str, float | None]], ranges: Spreads, metrics: list[Metric]
) -> list[str]:
    """One line per ratio the spread makes uncertain (marked `~` in the table)."""
    notes = []
    for metric in metrics:
        for other in (PEER, CEILING, LLAMA_SERVER, BASELINE):
            noisy = within_noise(figures, ranges, metric.key, other)
            if noisy is not None:
                notes.append(
                    f"{metric.label} vs {other}: the gap between medians ({noisy[0]:.1f}) is "
                    f"smaller than the spread of the runs ({noisy[1]:.1f}): not a measured "
                    "difference"
                )
    return notes


def _fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _cell(value: float | None, spread: tuple[float, float] | None) -> str:
    if value is None or spread is None or spread[0] == spread[1]:
        return _fmt(value)
    return f"{_fmt(value)} ({_fmt(spread[0])}-{_fmt(spread[1])})"


def markdown_table(
    figures: dict[str, dict[str, float | None]],
    metrics: list[Metric],
    labels: dict[str, str],
    ranges: Spreads | None = None,
) -> str:
    """Medians with their spread `(lowest-highest)`; a ratio inside the noise is marked `~`."""
    ranges = ranges or {}
    systems = [s for s in (GEMMA, BASELINE, PEER, LLAMA_SERVER, CEILING) if s in figures]
    ratio_to = [
        s for s in (PEER, CEILING, LLAMA_SERVER, BASELINE) if s in figures and GEMMA in figures
    ]
    header = ["metric", *(labels[s] for s in systems), *(f"gemma-serve / {s}" for s in ratio_to)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for metric in metrics:
        cells = [metric.label + (" ↓" if metric.lower_is_better else "")]
        cells += [_cell(figures[s][metric.key], ranges.get(s, {}).get(metric.key)) for s in systems]
        cells += [
            ("~" if within_noise(figures, ranges, metric.key, s) else "")
            + _fmt(_ratio(figures[GEMMA][metric.key], figures[s][metric.key]), 2)
            for s in ratio_to
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(figures: dict[str, dict[str, float | None]]) -> list[dict[str, Any]]:
    """Issues 5's and 25's targets as {name, measured, bound, passed}; passed is None if not
    measurable (the system or the client count did not run)."""
    gemma = figures.get(GEMMA, {})
    peer = figures.get(PEER, {})
    cpp = figures.get(LLAMA_SERVER, {})
    checks = [
        (
            f"single-stream decode >= {SINGLE_STREAM_VS_PEER}x peer",
            _ratio(gemma.get("decode_1"), peer.get("decode_1")),
            SINGLE_STREAM_VS_PEER,
            True,
        ),
        (
            f"4-client aggregate >= {FOUR_CLIENTS_VS_PEER}x peer",
            _ratio(gemma.get("aggregate_4"), peer.get("aggregate_4")),
            FOUR_CLIENTS_VS_PEER,
            True,
        ),
        (
            f"TTFT with 4 clients (worst) <= {TTFT_4_OVER_1}x TTFT with 1",
            _ratio(gemma.get("ttft_4_worst"), gemma.get("ttft_1")),
            TTFT_4_OVER_1,
            False,
        ),
        (
            f"single-stream decode >= {DECODE_VS_LLAMA_SERVER}x llama-server",
            _ratio(gemma.get("decode_1"), cpp.get("decode_1")),
            DECODE_VS_LLAMA_SERVER,
            True,
        ),
        *(
            (
                f"{n}-client aggregate >= {DECODE_VS_LLAMA_SERVER}x llama-server",
                _ratio(gemma.get(f"aggregate_{n}"), cpp.get(f"aggregate_{n}")),
                DECODE_VS_LLAMA_SERVER,
                True,
            )
            for n in (4, 8)
        ),
        (
            f"TTFT, 1 client <= {TTFT_VS_LLAMA_SERVER}x llama-server",
            _ratio(gemma.get("ttft_1"), cpp.get("ttft_1")),
            TTFT_VS_LLAMA_SERVER,
            False,
        ),
    ]
    results = []
    for name, measured, bound, at_least in checks:
        passed: bool | None = None
        if measured is not None:
            passed = measured >= bound if at_least else measured <= bound
        results.append({"target": name, "measured": measured, "bound": bound, "passed": passed})
    return results


def target_lines(results: list[dict[str, Any]]) -> list[str]:
    lines = []
    for t in results:
        verdict = {True: "PASS", False: "FAIL", None: "N/A "}[t["passed"]]
        lines.append(f"{verdict}  {t['target']}: measured {_fmt(t['measured'], 2)}x")
    return lines


def publish(out: Path, name: str, lines: list[str], record: dict[str, Any]) -> None:
    """Print the markdown report and write it to `out/name.md`, the raw figures to
    `out/name.json`."""
    text = "\n".join(lines) + "\n"
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(text)
    (out / f"{name}.json").write_text(json.dumps(record, indent=2, default=str) + "\n")


def machine() -> dict[str, Any]:
    """What the figures depend on: CPU, cores, load, versions, commit."""
    cpu = platform.processor() or platform.machine()
    cores: dict[str, str] = {}  # physical id -> cores in that package
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        package = "0"
        for line in cpuinfo.read_text().splitlines():
            name, _, value = (part.strip() for part in line.partition(":"))
            if name == "model name":
                cpu = value
            elif name == "physical id":
                package = value
            elif name == "cpu cores":
                cores[package] = value
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return {
        "cpu": cpu,
        "physical_cores": sum(int(n) for n in cores.values()) or None,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "llama_cpp_python": _version("llama-cpp-python"),
        "gemma_serve_commit": _git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def llama_system_info() -> str:
    import llama_cpp

    info = llama_cpp.llama_print_system_info()
    return (info.decode() if isinstance(info, bytes) else str(info)).strip()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    return git_commit(Path(__file__).resolve().parent.parent)


def git_commit(checkout: Path) -> str | None:
    """The short commit `checkout` is at, `-dirty` when its tracked files differ; None without
    git."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(checkout), *args], capture_output=True, text=True, check=True
        )
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("-dirty" if dirty else "")
