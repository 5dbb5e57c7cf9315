"""Model files are checked before llama.cpp sees them: a truncated GGUF (a small one written with
llama.cpp's `gguf` package, and the real bundled file cut short) is refused with one line even
when the registry records no size or hash; a GGUF whose chat template tries to leave jinja2's
sandbox stops `gemma-serve serve --chat-template gguf` with one line, before llama.cpp loads it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import yaml

from server.fetch import FetchError, verify_gguf
from server.gguf import GGML_BLOCKS, GGUFError, read_header, tensor_nbytes
from server.registry import default_registry_path
from tests.conftest import free_port
from tests.hub import FakeHub

ESCAPING_TEMPLATE = (
    "{% for c in ''.__class__.__mro__[1].__subclasses__() %}{{ c.__name__ }}{% endfor %}"
    "{% for m in messages %}{{ m.content }}{% endfor %}"
)


def write_gguf(path: Path, chat_template: str | None = None) -> Path:
    writer = gguf.GGUFWriter(str(path), arch="gemma3")
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    writer.add_tensor("token_embd.weight", np.ones((8, 64), dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones((64,), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def cut(source: Path, target: Path, size: int) -> Path:
    """The first `size` bytes of `source`, as a download cut short would leave them."""
    with source.open("rb") as src, target.open("wb") as dst:
        left = size
        while left and (block := src.read(min(left, 1 << 20))):
            dst.write(block)
            left -= len(block)
    return target


def test_the_block_table_matches_the_ggml_that_loads_the_models() -> None:
    import ctypes

    import llama_cpp

    ggml = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    ggml.ggml_type_size.restype, ggml.ggml_type_size.argtypes = ctypes.c_size_t, [ctypes.c_int]
    ggml.ggml_blck_size.restype, ggml.ggml_blck_size.argtypes = ctypes.c_int64, [ctypes.c_int]
    live = {
        kind: (ggml.ggml_blck_size(kind), ggml.ggml_type_size(kind))
        for kind in range(max(GGML_BLOCKS) + 1)
        if ggml.ggml_blck_size(kind)  # 0: a removed type
    }
    assert live == GGML_BLOCKS
    assert tensor_nbytes((256, 3), int(gguf.GGMLQuantizationType.Q4_K)) == 3 * 144


def test_a_whole_file_passes_and_its_extent_is_exact(tmp_path: Path, model_path: Path) -> None:
    small = write_gguf(tmp_path / "small.gguf")
    header = read_header(small)
    assert header.data_end == small.stat().st_size
    assert [t.name for t in header.tensors] == ["token_embd.weight", "output_norm.weight"]
    verify_gguf(small, "small", None)
    real = read_header(model_path)
    assert real.data_end == model_path.stat().st_size
    assert real.metadata["general.architecture"] == "gemma3"


@pytest.mark.parametrize("keep", [-1, -100, 0.5, 30])
def test_a_truncated_small_file_is_refused_without_a_recorded_size(
    tmp_path: Path, keep: float
) -> None:
    whole = write_gguf(tmp_path / "whole.gguf")
    size = whole.stat().st_size
    length = int(size * keep) if isinstance(keep, float) else keep % size
    short = cut(whole, tmp_path / "short.gguf", length)
    with pytest.raises(FetchError) as raised:
        verify_gguf(short, "small", None)
    message = str(raised.value)
    assert "\n" not in message
    assert str(short) in message and "not a complete GGUF file" in message
    assert "delete it" in message


def test_the_real_model_cut_short_is_refused_with_both_sizes(
    tmp_path: Path, model_path: Path
) -> None:
    size = model_path.stat().st_size
    short = cut(model_path, tmp_path / "cut.gguf", size - 4096)
    with pytest.raises(FetchError, match=f"truncated: its tensors need {size} bytes but it has "):
        verify_gguf(short, "gemma-3-270m", None)


def test_a_hostile_header_is_refused_without_allocating(tmp_path: Path) -> None:
    # 2**60 metadata entries: the parser must refuse rather than loop or allocate.
    path = tmp_path / "hostile.gguf"
    path.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + (0).to_bytes(8, "little") + b"\xff" * 8)
    with pytest.raises(GGUFError, match="claims"):
        read_header(path)


# --- end to end: the real CLI against a loopback stand-in for the hub --------------------------

REPO = "test-org/hostile-GGUF"


def registry(tmp_path: Path, files: dict[str, str]) -> Path:
    """The shipped registry plus one entry per (id -> file in REPO) whose file has no recorded
    size or hash: it is the second source, after one the hub does not have (the model's own
    size and hash belong to its first source)."""
    data = yaml.safe_load(default_registry_path().read_text())
    bundled = next(m for m in data["models"] if m["id"] == "gemma-3-270m")
    for model_id, name in files.items():
        sources = [
            {"kind": "huggingface", "repo": REPO, "file": "missing.gguf"},
            {"kind": "huggingface", "repo": REPO, "file": name},
        ]
        data["models"].append({**bundled, "id": model_id, "sources": sources})
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def gemma_serve(tmp_path: Path, hub: FakeHub, *args: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "GEMMA_SERVE_"))}
    environ.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"))
    return subprocess.run(
        [sys.executable, "-m", "server", *args, "--cache-dir", str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=180,
        env=environ,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("gemma-serve: error")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return errors[0]


def test_serving_a_sandbox_escaping_template_is_refused(tmp_path: Path) -> None:
    hub = FakeHub().start()
    try:
        hub.add(REPO, "hostile.gguf", write_gguf(tmp_path / "hostile.gguf", ESCAPING_TEMPLATE))
        models = registry(tmp_path, {"hostile": "hostile.gguf"})
        args = ["serve", "--model", "hostile", "--registry-file", str(models)]
        result = gemma_serve(
            tmp_path, hub, *args, "--chat-template", "gguf", "--port", str(free_port())
        )
    finally:
        hub.stop()
    line = one_error_line(result)
    assert "cannot serve hostile" in line
    assert "chat template tried to leave the sandbox" in line
    assert "--chat-template pinned" in line
    # Refused before llama.cpp was asked to load the (weightless) file.
    assert "llama.cpp could not load" not in result.stderr


def test_pulling_a_truncated_file_without_a_recorded_size_is_one_line(
    tmp_path: Path, model_path: Path
) -> None:
    # Past the header (about 6 MB: the vocabulary), into the tensor data.
    short = cut(model_path, tmp_path / "short.gguf", 16 << 20)
    hub = FakeHub().start()
    try:
        hub.add(REPO, "short.gguf", short)
        models = registry(tmp_path, {"short": "short.gguf"})
        result = gemma_serve(tmp_path, hub, "pull", "short", "--registry-file", str(models))
    finally:
        hub.stop()
    line = one_error_line(result)
    assert "not a complete GGUF file" in line and "truncated" in line
    assert not list((tmp_path / "cache").rglob("*.gguf")), "the bad download must be removed"
