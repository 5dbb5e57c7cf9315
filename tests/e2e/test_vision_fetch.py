"""A vision model's projector is fetched beside the model, against the loopback stand-in for the
Hugging Face hub (tests/hub.py): `pull` gets both, the projector is checked like the model (a
wrong size is refused with one line), offline the cached copy serves, and `serve` loads it (the
model card says the model takes images).

The stand-in registry entry is the bundled 270M served from the fake hub, with the tiny test
projector (tests/projector.py) as its `vision_projector`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from server.registry import default_registry_path
from tests.conftest import start_server, stop_server, wait_healthy
from tests.e2e.test_fetch import pull
from tests.hub import FakeHub
from tests.projector import write_tiny_projector

REPO, FILE, PROJECTOR = "test-org/tiny-vision-GGUF", "tiny-Q4_K_M.gguf", "mmproj-tiny.gguf"


@pytest.fixture(scope="module")
def hub(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    projector = write_tiny_projector(tmp_path_factory.mktemp("hub") / PROJECTOR)
    running = FakeHub().start()
    running.add(REPO, FILE, model_path)
    running.add(REPO, PROJECTOR, projector)
    yield running
    running.stop()


def registry(tmp_path: Path, hub: FakeHub, **entry: Any) -> Path:
    data = yaml.safe_load(default_registry_path().read_text())
    bundled = next(m for m in data["models"] if m["id"] == "gemma-3-270m")
    source = {"kind": "huggingface", "repo": REPO, "file": FILE, "vision_projector": PROJECTOR}
    projector_size = len(hub.files[f"{REPO}/{PROJECTOR}"].data)
    data["models"].append(
        {
            **bundled,
            "id": "tiny-gemma",
            "sources": [source],
            "vision_projector_size": projector_size,
            **entry,
        }
    )
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_pull_fetches_the_model_and_its_projector(tmp_path: Path, hub: FakeHub) -> None:
    result = pull(tmp_path, hub, registry(tmp_path, hub))
    assert result.returncode == 0, result.stderr
    model, projector = (Path(line) for line in result.stdout.split())
    assert model.name == FILE and projector.name == PROJECTOR
    assert projector.read_bytes() == hub.files[f"{REPO}/{PROJECTOR}"].data
    dead = FakeHub(url="http://127.0.0.1:9")  # offline: the cached copies serve
    offline = pull(tmp_path, dead, registry(tmp_path, hub))
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout == result.stdout


def test_a_projector_of_the_wrong_size_is_refused(tmp_path: Path, hub: FakeHub) -> None:
    result = pull(tmp_path, hub, registry(tmp_path, hub, vision_projector_size=12345))
    assert result.returncode == 1
    # less the progress lines `pull` logs at INFO (the download, the verification)
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("INFO: ")]
    assert len(lines) == 1
    assert "tiny-gemma's vision projector" in lines[0] and "12345" in lines[0]
    assert not list((tmp_path / "cache" / "hub").rglob(PROJECTOR))  # deleted for a retry


def test_serve_loads_the_projector(tmp_path: Path, hub: FakeHub) -> None:
    environ = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home")}
    args = ["--model", "tiny-gemma", "--registry-file", str(registry(tmp_path, hub))]
    running = start_server(tmp_path, *args, "--ctx", "1024", env=environ)
    try:
        wait_healthy(running, timeout=300)
        card = httpx.get(f"{running.base_url}/v1/models/tiny-gemma").json()
        assert card["capabilities"] == {"vision": True}
    finally:
        stop_server(running)
