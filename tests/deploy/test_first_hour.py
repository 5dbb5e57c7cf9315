"""The server's side of a first hour on a real box, each failure with its one line: a misspelled
GEMMA_SERVE_* variable, an unwritable model cache (a bind mount owned by another uid), a CPU
without an instruction set the build uses, an NVIDIA driver upgraded without a reboot (the fake
NVML of tests/nvml.py), a full disk during the model's download (the partial file on /dev/full:
the kernel's own ENOSPC), a Host refused with the setting that admits it, defaults in --help,
and no /docs page loading Swagger UI from a CDN.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from server import build_record, cli
from server.api.security import HostCheckMiddleware, HostPolicy
from server.app import create_app
from server.engine.contract import Engine
from server.fetch import FetchError, unwritable_cache
from server.hardware import GpuProbe
from server.models.loading import model_to_serve
from server.planner import Plan
from server.registry import load_registry
from server.settings import Settings, unknown_variable
from tests.conftest import free_port
from tests.hub import FakeHub, HubFile
from tests.nvml import RTX_3090, FakeNvml
from tests.unit.test_planner import CUDA_BUILD

from .fake_machine import BASELINE
from .test_first_start import FILE, REPO, registry_with_hub_model


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


def one_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("gemma-serve: error: ")
    return line


@pytest.mark.parametrize(
    ("variable", "nearest"),
    [
        ("GEMMA_SERVE_API_KEY", "GEMMA_SERVE_API_KEYS"),
        ("GEMMA_SERVE_NO_UI", "GEMMA_SERVE_UI=false"),
        ("GEMMA_SERVE_CONTEXT", "GEMMA_SERVE_CTX"),
    ],
)
def test_an_unknown_variable_stops_the_start_naming_the_nearest_setting(
    variable: str, nearest: str
) -> None:
    line = one_line(run("plan", "--gpu-memory", "8GiB", **{variable: "x"}), 2)
    assert f"{variable} is not a setting of gemma-serve: did you mean {nearest}?" in line
    # --help still answers, and the scripts' own variables are not refused.
    assert run("serve", "--help", **{variable: "x"}).returncode == 0
    assert unknown_variable({"GEMMA_SERVE_BUILD": "cuda", "GEMMA_SERVE_CTX": "1"}) is None


def test_help_shows_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.parse_settings(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in (
        "larger bodies get 413. [default: 4MiB]",
        "[default: 1GiB] [env: GEMMA_SERVE_GPU_MARGIN]",
        "[default: 10.0] [env: GEMMA_SERVE_SHUTDOWN_GRACE]",
        "[default: 8000] [env: GEMMA_SERVE_PORT]",
        "[default: none] [env: GEMMA_SERVE_MODEL_ALIASES]",
        "[default: false] [env: GEMMA_SERVE_REQUIRE_GPU]",
    ):
        assert shown in text, shown


def test_an_unwritable_cache_is_one_line_with_the_chown_fix(tmp_path: Path) -> None:
    assert unwritable_cache(tmp_path / "fresh") is None and (tmp_path / "fresh").is_dir()
    if os.geteuid() == 0:  # root writes anywhere it has a file system that lets it
        cache = Path("/sys/gemma-serve-cache")
    else:
        cache = tmp_path / "owned-by-root"
        cache.mkdir(mode=0o555)
    line = one_line(run("serve", "--port", str(free_port()), "--cache-dir", str(cache)), 1)
    assert f"cannot write to the model cache {cache} (" in line
    assert f"sudo chown -R {os.getuid()}:{os.getgid()} {cache}" in line
    assert "reinstall" not in line  # not the bundled model's misleading message


def test_a_cpu_without_an_instruction_set_the_build_uses_is_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    record = tmp_path / ".llama-build"
    record.write_text("llama-cpp-python 0.3.36\ncpu needs sse4_2 avx avx2 bmi2 fma f16c\n")
    old_xeon = tmp_path / "cpuinfo"
    old_xeon.write_text("processor\t: 0\nflags\t\t: fpu sse sse2 pni ssse3 sse4_1 sse4_2 avx\n")
    assert build_record.needed(record) == set(BASELINE.split())
    line = build_record.missing_instructions(record, old_xeon)
    assert line is not None and line.startswith("this CPU lacks AVX2, BMI2, F16C, FMA, which")
    modern = tmp_path / "modern"
    modern.write_text(f"flags\t\t: fpu {BASELINE} avx512f\n")
    assert build_record.missing_instructions(record, modern) is None
    assert build_record.missing_instructions(tmp_path / "no-record", old_xeon) is None

    # At start, before llama.cpp is loaded (which would die with SIGILL): one line.
    monkeypatch.setattr(build_record, "RECORD", record)
    monkeypatch.setenv("GEMMA_SERVE_CPUINFO", str(old_xeon))
    assert cli.main(["plan"]) == 2
    [error] = capsys.readouterr().err.strip().splitlines()
    assert error.startswith("gemma-serve: error: this CPU lacks AVX2, BMI2, F16C, FMA")


@pytest.mark.parametrize(
    ("error", "level", "fix"),
    [
        ("RM has detected an NVML/RM version mismatch.", logging.WARNING, "reboot"),
        ("Driver Not Loaded", logging.WARNING, "sudo modprobe nvidia"),
        ("NVML Shared Library Not Found", logging.INFO, None),  # no driver: a machine without
    ],
)
def test_a_failing_driver_is_a_warning_with_its_fix(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    error: str,
    level: int,
    fix: str | None,
) -> None:
    machine = GpuProbe(FakeNvml([RTX_3090], init_error=error)).hardware()
    with caplog.at_level(logging.INFO, logger="gemma_serve"):
        chosen = cli._plan(Settings(cache_dir=tmp_path), machine, CUDA_BUILD)
    assert not chosen.on_gpu
    [plan_record] = [r for r in caplog.records if r.getMessage().startswith("plan:")]
    assert plan_record.levelno == level
    warnings = [
        r.getMessage() for r in caplog.records if "serving on the CPU meanwhile" in r.getMessage()
    ]
    if fix is None:
        assert warnings == []
    else:
        [warning] = warnings
        assert error in warning and fix in warning


@pytest.fixture
def hub(model_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeHub]:
    from huggingface_hub import constants

    running = FakeHub().start()
    running.files[f"{REPO}/{FILE}"] = HubFile(b"GGUF" + bytes(4 << 20))
    monkeypatch.setattr(constants, "ENDPOINT", running.url)
    template = running.url + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    yield running
    running.stop()


def full_disk_plan(tmp_path: Path, hub: FakeHub) -> Plan:
    """A plan for the hub's model with the bundled one as fallback, and the cache's partial
    file for it on /dev/full: every write fails with ENOSPC, as on a full disk."""
    registry = load_registry(registry_with_hub_model(tmp_path))
    blobs = tmp_path / "cache" / "hub" / f"models--{REPO.replace('/', '--')}" / "blobs"
    blobs.mkdir(parents=True)
    sha256 = hub.files[f"{REPO}/{FILE}"].sha256
    (blobs / f"{sha256}.incomplete").symlink_to("/dev/full")
    return Plan(
        model=registry.get("tiny-gemma"),
        n_ctx=1024,
        n_gpu_layers=-1,
        reason="test",
        fallback=registry.get("gemma-3-270m"),
    )


def test_a_full_disk_with_the_gpu_required_is_an_error_not_the_small_model(
    tmp_path: Path, hub: FakeHub
) -> None:
    plan = full_disk_plan(tmp_path, hub)
    settings = Settings(cache_dir=tmp_path / "cache", require_gpu=True)
    with pytest.raises(FetchError, match="No space left on device") as failure:
        model_to_serve(settings, plan)
    assert "cannot write it to" in str(failure.value)
    # The server reports it as fatal (the CLI exits 1, the supervisor retries, it resumes).
    fatal: list[str] = []
    app = create_app(settings, plan, on_fatal=fatal.append)
    with TestClient(app, base_url="http://localhost") as client:
        for _ in range(100):
            if fatal:
                break
            client.get("/health")
    assert fatal and fatal[0].startswith("cannot serve tiny-gemma: ")
    assert "No space left on device" in fatal[0]


def test_a_full_disk_without_it_says_loudly_which_model_is_not_served(
    tmp_path: Path, hub: FakeHub, caplog: pytest.LogCaptureFixture
) -> None:
    plan = full_disk_plan(tmp_path, hub)
    with caplog.at_level(logging.INFO, logger="gemma_serve"):
        spec, _, path = model_to_serve(Settings(cache_dir=tmp_path / "cache"), plan)
    assert spec.id == "gemma-3-270m" and path.is_file()
    [record] = [r for r in caplog.records if "NOT SERVING" in r.getMessage()]
    assert record.levelno == logging.ERROR
    message = record.getMessage()
    assert message.startswith("NOT SERVING tiny-gemma, the model planned for this machine: ")
    assert "No space left on device" in message
    assert "serving the bundled gemma-3-270m instead" in message


def test_a_refused_host_is_told_the_setting_that_admits_it() -> None:
    async def ok(request: object) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/", ok)])
    checked = HostCheckMiddleware(app, HostPolicy("127.0.0.1"))
    client = TestClient(checked)
    answer = client.get("/", headers={"Host": "host.docker.internal:8000"})
    assert answer.status_code == 421
    message = answer.json()["error"]["message"]
    assert "'host.docker.internal'" in message
    assert "--allowed-hosts host.docker.internal" in message
    assert "GEMMA_SERVE_ALLOWED_HOSTS=host.docker.internal" in message
    # The setting named does admit it.
    admitted = HostCheckMiddleware(app, HostPolicy("127.0.0.1", ["host.docker.internal"]))
    assert TestClient(admitted).get("/", headers={"Host": "host.docker.internal:8000"}).text == "ok"
    # Text that is not a host name is not repeated back.
    odd = client.get("/", headers={"Host": "a<script>b"}).json()["error"]["message"]
    assert "script" not in odd and "GEMMA_SERVE_ALLOWED_HOSTS" in odd


def test_no_docs_page_from_a_cdn(tmp_path: Path) -> None:
    """FastAPI's /docs and /redoc load their scripts from a CDN: blank offline, outside the
    page's CSP. The schema itself is served."""

    def never(*_: object) -> Engine:
        raise RuntimeError("not loaded in this test")

    plan = Plan(model=load_registry().get("gemma-3-270m"), n_ctx=1024, n_gpu_layers=0, reason="t")
    app = create_app(Settings(cache_dir=tmp_path), plan, load_engine=never, on_fatal=lambda m: None)
    with TestClient(app, base_url="http://localhost") as client:
        assert client.get("/docs").status_code == 404
        assert client.get("/redoc").status_code == 404
        assert client.get("/openapi.json").json()["info"]["title"] == "gemma-serve"
