"""The instruction sets the installed llama.cpp build uses, against the CPU it runs on.

scripts/install-llama.sh writes a record into the environment it installs into
(`<sys.prefix>/.llama-build`), with a line `cpu needs avx avx2 bmi2 f16c fma sse4_2` (cpuinfo's
names): the Docker images are built for llama.cpp's x86 baseline (AVX2 and FMA among them), a
`make serve` build for the CPU that built it (-march=native). Started on a CPU without one of
them (an older Xeon in a homelab, a venv or image moved to another machine), llama.cpp dies with
SIGILL, a signal and no message. The server checks first and says which instruction set is
missing, in one line, before llama.cpp is loaded.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

RECORD = Path(sys.prefix) / ".llama-build"
CPUINFO = Path("/proc/cpuinfo")

# cpuinfo's names for the instruction sets as people write them.
_NAMES = {"pni": "SSE3", "sse4_1": "SSE4.1", "sse4_2": "SSE4.2", "sha_ni": "SHA"}


def needed(record: Path | None = None) -> frozenset[str]:
    """The instruction sets the record (default: this environment's) says the build uses (none
    known: empty)."""
    try:
        lines = (record or RECORD).read_text(encoding="utf-8").splitlines()
    except OSError:
        return frozenset()
    for line in lines:
        if line.startswith("cpu needs ") and line != "cpu needs nothing known":
            return frozenset(line.removeprefix("cpu needs ").split())
    return frozenset()


def cpu_flags(cpuinfo: Path | None = None) -> frozenset[str] | None:
    """This CPU's flags from /proc/cpuinfo (GEMMA_SERVE_CPUINFO: another file, for tests); None
    where there is no such file (not Linux) or it has no flags line (not x86)."""
    path = cpuinfo or Path(os.environ.get("GEMMA_SERVE_CPUINFO") or CPUINFO)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return frozenset(value.split())
    return None


def name(flag: str) -> str:
    return _NAMES.get(flag, flag.upper())


def missing_instructions(record: Path | None = None, cpuinfo: Path | None = None) -> str | None:
    """One line when this CPU lacks an instruction set the build uses, None otherwise."""
    needs, flags = needed(record), cpu_flags(cpuinfo)
    if not needs or flags is None:
        return None
    lacking = sorted(needs - flags)
    if not lacking:
        return None
    return (
        f"this CPU lacks {', '.join(name(flag) for flag in lacking)}, which the installed "
        "llama.cpp build uses (it would die with SIGILL): build llama.cpp on this machine "
        "(make serve rebuilds it for this CPU; Docker: CPU_NATIVE=1 in docker/.env, then "
        "docker compose up -d --build here)"
    )
