"""Fetching models from the Hugging Face hub, against a loopback stand-in for the hub
(`HF_ENDPOINT`) serving the real bundled GGUF: full download, resume after a cut, a corrupted
file refused, the hub's LFS sha256 verified and recorded when the registry has none (a wrong one
refused), a gated repo's 401, offline use of the cache or the bundled model, and SIGTERM during
the first download: the server exits 0 at once and the next start resumes the download.

Each case runs the real `gemma-serve pull` (huggingface_hub reads HF_ENDPOINT when imported)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from server.registry import default_registry_path
from tests.conftest import start_server, wait_healthy
from tests.hub import FakeHub

REPO, FILE = "test-org/tiny-gemma-GGUF", "tiny-gemma-Q4_K_M.gguf"
GATED = "google-test/tiny-gemma-gated"


@pytest.fixture(scope="module")
def hub(model_path: Path) -> Iterator[FakeHub]:
    running = FakeHub().start()
    running.add(REPO, FILE, model_path)
    running.add(GATED, FILE, model_path)
    running.gated[GATED] = "hf_secret"
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def reset_hub(hub: FakeHub) -> None:
    hub.cut_after, hub.corrupt = None, False
    hub.bytes_per_second, hub.announced_sha256, hub.fail_with = None, None, None
    hub.requests.clear()


def registry_with(tmp_path: Path, sources: list[dict[str, Any]], sha256: bool = True) -> Path:
    """The shipped registry plus `tiny-gemma`: the bundled model's file, served by the hub (with
    the registry's sha256 of it, or none)."""
    data = yaml.safe_load(default_registry_path().read_text())
    bundled = next(m for m in data["models"] if m["id"] == "gemma-3-270m")
    entry = {**bundled, "id": "tiny-gemma", "sources": sources}
    if not sha256:
        del entry["sha256"]
    data["models"].append(entry)
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def hub_source(repo: str = REPO, **extra: Any) -> dict[str, Any]:
    return {"kind": "huggingface", "repo": repo, "file": FILE, **extra}


def pull(
    tmp_path: Path, hub: FakeHub, registry: Path, model: str = "tiny-gemma", **env: str
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    environ.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"), **env)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "server",
            "pull",
            model,
            "--registry-file",
            str(registry),
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=environ,
    )


def problems(result: subprocess.CompletedProcess[str]) -> list[str]:
    """stderr without the progress lines `pull` logs at INFO (the download, the verification):
    what went wrong, which must be one line."""
    return [line for line in result.stderr.strip().splitlines() if not line.startswith("INFO: ")]


def downloads(hub: FakeHub) -> list[str | None]:
    """The Range header of each file GET (huggingface_hub makes other API calls too)."""
    return [rng for method, path, rng in hub.requests if method == "GET" and "/resolve/" in path]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_full_download_is_verified_and_cached(
    tmp_path: Path, hub: FakeHub, model_path: Path
) -> None:
    registry = registry_with(tmp_path, [hub_source()])
    result = pull(tmp_path, hub, registry)
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip())
    assert path.is_relative_to(tmp_path / "cache" / "hub")
    assert sha256(path) == sha256(model_path)
    assert downloads(hub) == [None]
    # A second pull uses the cache: no download.
    hub.requests.clear()
    assert pull(tmp_path, hub, registry).stdout.strip() == str(path)
    assert downloads(hub) == []


def test_a_cut_transfer_resumes_where_it_stopped(
    tmp_path: Path, hub: FakeHub, model_path: Path
) -> None:
    hub.cut_after = 100 * 1024 * 1024
    result = pull(tmp_path, hub, registry_with(tmp_path, [hub_source()]))
    assert result.returncode == 0, result.stderr
    assert sha256(Path(result.stdout.strip())) == sha256(model_path)
    ranges = downloads(hub)
    assert ranges[0] is None
    assert ranges[1] is not None and int(ranges[1].removeprefix("bytes=").split("-")[0]) > 0


def test_a_corrupted_download_is_refused_and_removed(tmp_path: Path, hub: FakeHub) -> None:
    registry = registry_with(tmp_path, [hub_source()])
    hub.corrupt = True
    result = pull(tmp_path, hub, registry)
    assert result.returncode == 1
    lines = problems(result)
    assert len(lines) == 1 and "does not match the sha256 of tiny-gemma" in lines[0]
    assert not list((tmp_path / "cache" / "hub").rglob("*.gguf"))
    hub.corrupt = False
    assert pull(tmp_path, hub, registry).returncode == 0  # downloaded again, now intact


def record_of(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "cache" / "checksums" / f"{REPO.replace('/', '--')}--{FILE}.json"
    return dict(json.loads(path.read_text()))


def test_without_a_registry_hash_the_hubs_lfs_hash_is_verified_and_recorded(
    tmp_path: Path, hub: FakeHub, model_path: Path
) -> None:
    result = pull(tmp_path, hub, registry_with(tmp_path, [hub_source()], sha256=False))
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip())
    record = record_of(tmp_path)
    assert record["sha256"] == sha256(model_path)
    assert record["origin"] == f"announced by the hub for {REPO}/{FILE}"
    assert (record["file"], record["size"]) == (str(path), path.stat().st_size)
    assert "no sha256 is known" not in result.stderr


def test_a_file_not_matching_the_hubs_lfs_hash_is_refused_and_deleted(
    tmp_path: Path, hub: FakeHub
) -> None:
    hub.announced_sha256 = "0" * 64
    result = pull(tmp_path, hub, registry_with(tmp_path, [hub_source()], sha256=False))
    assert result.returncode == 1
    lines = problems(result)
    assert len(lines) == 1
    assert "does not match the sha256 of tiny-gemma (announced by the hub for" in lines[0]
    assert not list((tmp_path / "cache" / "hub").rglob("blobs/*"))
    assert not (tmp_path / "cache" / "checksums").exists()


def test_offline_a_later_start_verifies_against_the_record(tmp_path: Path, hub: FakeHub) -> None:
    registry = registry_with(tmp_path, [hub_source()], sha256=False)
    first = pull(tmp_path, hub, registry)
    assert first.returncode == 0, first.stderr
    path = Path(first.stdout.strip())
    dead = FakeHub(url="http://127.0.0.1:9")  # offline: the hub cannot say the hash now
    assert pull(tmp_path, dead, registry).returncode == 0
    blob = path.resolve()
    data = bytearray(blob.read_bytes())  # a changed byte in the tensor data, same size
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    result = pull(tmp_path, dead, registry)
    assert result.returncode == 1
    assert "does not match the sha256 of tiny-gemma (announced by the hub" in result.stderr


def test_a_gated_repo_without_a_token_says_what_to_do(tmp_path: Path, hub: FakeHub) -> None:
    result = pull(tmp_path, hub, registry_with(tmp_path, [hub_source(GATED, gated=True)]))
    assert result.returncode == 1
    lines = problems(result)
    assert len(lines) == 1
    assert "access denied (401)" in lines[0]
    assert f"accept its license at https://huggingface.co/{GATED} and set HF_TOKEN" in lines[0]


def test_a_gated_repo_with_a_token_downloads(tmp_path: Path, hub: FakeHub) -> None:
    registry = registry_with(tmp_path, [hub_source(GATED, gated=True)])
    assert pull(tmp_path, hub, registry, HF_TOKEN="hf_secret").returncode == 0


def test_a_gated_repo_falls_back_to_the_next_source(tmp_path: Path, hub: FakeHub) -> None:
    registry = registry_with(tmp_path, [hub_source(GATED, gated=True), hub_source()])
    result = pull(tmp_path, hub, registry)
    assert result.returncode == 0, result.stderr
    assert REPO.split("/")[1] in result.stdout
    assert "set HF_TOKEN" in result.stderr  # the fallback is explained


def test_offline_the_cached_file_is_used(tmp_path: Path, hub: FakeHub) -> None:
    registry = registry_with(tmp_path, [hub_source()])
    first = pull(tmp_path, hub, registry)
    assert first.returncode == 0
    dead = FakeHub(url="http://127.0.0.1:9")  # nothing listens there
    offline = pull(tmp_path, dead, registry)
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout == first.stdout


def test_a_failing_hub_falls_back_to_the_cache(tmp_path: Path, hub: FakeHub) -> None:
    registry = registry_with(tmp_path, [hub_source()])
    first = pull(tmp_path, hub, registry)
    assert first.returncode == 0, first.stderr
    hub.fail_with = 503
    again = pull(tmp_path, hub, registry)
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout
    (tmp_path / "cache" / "hub").rename(tmp_path / "elsewhere")
    result = pull(tmp_path, hub, registry)
    assert result.returncode == 1
    assert "the hub answered 503 and the file is not in the cache" in result.stderr


def test_offline_without_a_cache_is_one_line(tmp_path: Path) -> None:
    dead = FakeHub(url="http://127.0.0.1:9")
    result = pull(tmp_path, dead, registry_with(tmp_path, [hub_source()]))
    assert result.returncode == 1
    lines = problems(result)
    assert len(lines) == 1 and "cannot be reached and the file is not in the cache" in lines[0]


FALLBACK = """
import logging, sys
from server.app import default_engine_loader
from server.planner import Plan
from server.registry import load_registry
from server.settings import Settings
logging.basicConfig(level="WARNING", format="%(levelname)s %(message)s")
registry = load_registry()
plan = Plan(model=registry.get("gemma-3-4b-it-qat"), n_ctx=2048, n_gpu_layers=0, reason="test",
            fallback=registry.get("gemma-3-270m"))
engine = default_engine_loader(Settings(cache_dir=sys.argv[1]), plan)()
print(engine.info.model_id, engine.info.n_ctx)
engine.close()
# The app serves, and describes, the model that really runs.
import time
from fastapi.testclient import TestClient
from server.app import create_app
app = create_app(Settings(cache_dir=sys.argv[1]), plan)
with TestClient(app, base_url="http://localhost") as client:  # an allowed Host
    for _ in range(200):
        if client.get("/health").status_code == 200:
            break
        time.sleep(0.1)
    card = client.get("/v1/models").json()["data"][0]
    print(card["id"], card["quantization"])
"""


def test_offline_an_uncached_pick_falls_back_to_the_bundled_model(tmp_path: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    result = subprocess.run(
        [sys.executable, "-c", FALLBACK, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["gemma-3-270m", "2048", "gemma-3-270m", "Q4_K_M"]
    assert "serving the bundled gemma-3-270m instead" in result.stderr


def test_the_bundled_model_must_be_the_file_the_registry_names(
    tmp_path: Path, hub: FakeHub
) -> None:
    data = yaml.safe_load(default_registry_path().read_text())
    data["models"][0]["sha256"] = "0" * 64
    registry = tmp_path / "models.yaml"
    registry.write_text(yaml.safe_dump(data))
    result = pull(tmp_path, hub, registry, model="gemma-3-270m")
    assert result.returncode == 1
    lines = problems(result)
    assert len(lines) == 1 and "holds a different file" in lines[0]


def test_sigterm_during_the_first_download_exits_0_and_the_next_start_resumes(
    tmp_path: Path, hub: FakeHub, model_path: Path
) -> None:
    registry = registry_with(tmp_path, [hub_source()])
    args = ("--model", "tiny-gemma", "--registry-file", str(registry))
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "0"}
    hub.bytes_per_second = 4 << 20  # the 253 MB file would take a minute
    server = start_server(tmp_path, *args, env=env)
    try:
        deadline = time.monotonic() + 120
        partial: Path | None = None
        while time.monotonic() < deadline and server.process.poll() is None:
            found = list((tmp_path / "cache" / "hub").rglob("blobs/*.incomplete"))
            if found and found[0].stat().st_size > 8 << 20:
                partial = found[0]
                break
            time.sleep(0.2)
        assert partial is not None, server.log()
        server.process.send_signal(signal.SIGTERM)
        # exits 0 (not killed), and before the download ended: the file stays partial (below)
        assert server.process.wait(timeout=90) == 0, server.log()
    finally:
        if server.process.poll() is None:
            server.process.kill()
    assert "stopped during the download of tiny-gemma; it resumes at the next start" in (
        server.log()
    )
    kept = partial.stat().st_size
    assert 8 << 20 < kept < model_path.stat().st_size

    hub.bytes_per_second = None
    hub.requests.clear()
    restarted = start_server(tmp_path, *args, env=env)
    try:
        wait_healthy(restarted)
    finally:
        restarted.process.send_signal(signal.SIGTERM)
        restarted.process.wait(timeout=30)
    assert downloads(hub) == [f"bytes={kept}-"]  # resumed where the first start stopped
    (blob,) = (tmp_path / "cache" / "hub").rglob("blobs/*")
    assert sha256(blob) == sha256(model_path)
