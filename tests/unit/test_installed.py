"""Which models are installed (issue 20): a user registry file adds brought Gemma 3 GGUFs,
checked like downloaded ones, with their architecture figures read from the file; a bad entry
is refused with one line naming the file and the reason, the others still count."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from server.models.embedding import installed_embedding_specs
from server.models.installed import installed_specs, load_user_models
from server.registry import LocalSource, load_registry

ESCAPE = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>{{ message.role }}\n"
    "{{ message.content }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def tiny_gemma3(
    path: Path, *, architecture: str = "gemma3", template: str | None = None, blocks: int = 2
) -> Path:
    """A small GGUF with Gemma 3's metadata keys and one tensor: enough for the checks and the
    figures (llama.cpp would not load it)."""
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_string("general.name", "Tiny Gemma")
    prefix = architecture
    for key, value in (
        ("block_count", blocks),
        ("context_length", 8192),
        ("attention.head_count", 4),
        ("attention.head_count_kv", 1),
        ("attention.key_length", 64),
        ("attention.value_length", 64),
        ("attention.sliding_window", 512),
    ):
        writer.add_uint32(f"{prefix}.{key}", value)
    writer.add_array("tokenizer.ggml.tokens", ["<pad>", "<bos>", "a", "b"])
    if template is not None:
        writer.add_string("tokenizer.chat_template", template)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def user_file(tmp_path: Path, entries: str) -> Path:
    file = tmp_path / "models.yaml"
    file.write_text(f"models:\n{entries}", encoding="utf-8")
    return file


def test_a_brought_gguf_is_described_from_the_file_itself(tmp_path: Path) -> None:
    tiny_gemma3(tmp_path / "tiny-Q8_0.gguf", template=TEMPLATE, blocks=3)
    file = user_file(tmp_path, "  - id: tiny\n    path: tiny-Q8_0.gguf\n")  # relative: its folder
    found = load_user_models(file, set())
    assert found.refused == ()
    (spec,) = found.specs
    assert spec.id == "tiny" and spec.name == "Tiny Gemma" and spec.quantization == "Q8_0"
    arch = spec.architecture
    assert (arch.block_count, arch.head_count, arch.head_count_kv) == (3, 4, 1)
    assert (arch.key_length, arch.sliding_window, arch.context_length) == (64, 512, 8192)
    assert arch.vocab_size == 4 and spec.instruction_tuned
    assert spec.sources == [LocalSource(kind="local", path=str(tmp_path / "tiny-Q8_0.gguf"))]
    assert spec.file_size == (tmp_path / "tiny-Q8_0.gguf").stat().st_size


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_bytes(b"GGML" + bytes(100)), "not a GGUF file"),
        (lambda p: tiny_gemma3(p, architecture="llama"), "'llama' model, not Gemma 3"),
        (lambda p: tiny_gemma3(p, template=ESCAPE), "sandbox"),
        (
            lambda p: p.write_bytes(tiny_gemma3(p).read_bytes()[:-16]),
            "not a complete GGUF file",
        ),
    ],
    ids=["missing", "not-gguf", "not-gemma3", "template-escape", "truncated"],
)
def test_a_bad_brought_file_is_refused_in_one_line_and_the_others_still_count(
    tmp_path: Path, make: object, reason: str
) -> None:
    bad = tmp_path / "bad.gguf"
    make(bad)  # type: ignore[operator]
    tiny_gemma3(tmp_path / "good.gguf")
    entries = f"  - id: bad\n    path: {bad}\n  - id: good\n    path: {tmp_path / 'good.gguf'}\n"
    found = load_user_models(user_file(tmp_path, entries), set())
    assert [spec.id for spec in found.specs] == ["good"]
    (line,) = found.refused
    assert line.startswith(f"{tmp_path / 'models.yaml'}: bad: ") and reason in line
    assert "\n" not in line


def test_a_brought_model_adds_to_the_registry_and_may_not_take_a_registry_id(
    tmp_path: Path,
) -> None:
    registry = load_registry()
    tiny_gemma3(tmp_path / "tiny.gguf")
    entries = f"  - id: gemma-3-270m\n    path: {tmp_path / 'tiny.gguf'}\n"
    entries += f"  - id: mine\n    path: {tmp_path / 'tiny.gguf'}\n"
    found = load_user_models(user_file(tmp_path, entries), {s.id for s in registry.models})
    assert "already taken" in found.refused[0]
    ids = [spec.id for spec in installed_specs(registry, tmp_path / "cache", found)]
    assert ids == ["gemma-3-270m", "mine"]  # the bundled model, then the brought one


def test_without_a_user_registry_file_nothing_is_added(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert load_user_models(None, set()).specs == ()
    refused = load_user_models(tmp_path / "absent.yaml", set()).refused
    assert "cannot be read" in refused[0]


def cache_embeddinggemma(cache: Path) -> None:
    """Put the registry's embedding model file in a Hugging Face cache as a download leaves it."""
    repo = cache / "hub" / "models--ggml-org--embeddinggemma-300M-GGUF"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "embeddinggemma-300M-Q8_0.gguf").write_bytes(b"GGUF")


def test_a_cached_embedding_model_is_installed_as_an_embedding_model_not_a_chat_model(
    tmp_path: Path,
) -> None:
    registry = load_registry()
    cache = tmp_path / "cache"
    assert [s.id for s in installed_embedding_specs(registry, cache, None)] == []
    named = installed_embedding_specs(registry, cache, "embeddinggemma-300m")
    assert [s.id for s in named] == ["embeddinggemma-300m"]  # fetched at its first load
    cache_embeddinggemma(cache)
    assert [s.id for s in installed_embedding_specs(registry, cache, None)] == [
        "embeddinggemma-300m"
    ]
    chat = [s.id for s in installed_specs(registry, cache, load_user_models(None, set()))]
    assert "embeddinggemma-300m" not in chat and "gemma-3-270m" in chat
