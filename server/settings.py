"""The one settings class: command-line flags, `GEMMA_SERVE_*` environment variables and defaults.

Every field's description doubles as its `--help` text (see `cli.py`), so describe what a user
would want to know, including the unit.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ChatTemplateChoice = Literal["pinned", "gguf"]
LogLevel = Literal["debug", "info", "warning", "error"]


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gemma-serve"


def _default_threads() -> int:
    # llama-cpp-python's own default is half the cores, which halves CPU decode speed on small
    # machines; all cores is what llama-bench measures best here.
    return max(1, os.cpu_count() or 1)


class Settings(BaseSettings):
    """Everything the server can be told. Precedence: CLI flag > environment > default."""

    model_config = SettingsConfigDict(env_prefix="GEMMA_SERVE_", extra="ignore")

    host: str = Field(
        "127.0.0.1",
        description="Address to listen on. The default is reachable only from this machine.",
    )
    port: int = Field(8000, ge=1, le=65535, description="TCP port to listen on.")
    model: str = Field(
        "gemma-3-270m",
        description="Registry id of the model to serve (see models.yaml).",
    )
    ctx: int = Field(
        8192,
        ge=256,
        le=131072,
        description="Context length in tokens (prompt plus completion) of the loaded model.",
    )
    threads: int = Field(
        default_factory=_default_threads,
        ge=1,
        description="CPU threads llama.cpp uses for decoding. Default: all cores.",
    )
    cache_dir: Path = Field(
        default_factory=_default_cache_dir,
        description="Directory for downloaded and assembled model files.",
    )
    registry_file: Path | None = Field(
        None,
        description="Path to a models.yaml registry. Default: the one shipped with gemma-serve.",
    )
    chat_template: ChatTemplateChoice = Field(
        "pinned",
        description=(
            "Which chat template renders prompts: 'pinned' (gemma-serve's Gemma 3 template) or "
            "'gguf' (the one inside the model file, rendered in a sandbox)."
        ),
    )
    log_level: LogLevel = Field("info", description="Log verbosity.")
