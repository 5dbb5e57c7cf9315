"""The one settings class: command-line flags, `GEMMA_SERVE_*` environment variables and defaults.

Every field's description doubles as its `--help` text (see `cli.py`), so describe what a user
would want to know, including the unit.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from server.setting_values import (
    ChatTemplateChoice,
    CommaList,
    CudaArchitectures,
    Duration,
    KvCacheType,
    LogLevel,
    MemorySize,
    NetworkList,
)


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
    model: str | None = Field(
        None,
        description=(
            "Registry id of the model to serve (see models.yaml). Default: the largest Gemma 3 "
            "QAT model that fits the GPU; the bundled gemma-3-270m without a GPU."
        ),
    )
    ctx: int | None = Field(
        None,
        ge=256,
        le=131072,
        description=(
            "Context length in tokens (prompt plus completion). Default: the largest that fits, "
            "between --plan-ctx and --max-ctx (on the CPU: 8192, capped by --max-ctx)."
        ),
    )
    plan_ctx: int = Field(
        4096,
        ge=256,
        le=131072,
        description=(
            "Context length per sequence a model must fit with (times the parallel sequences), "
            "on the GPU, to be picked; the context then grows to what the memory holds."
        ),
    )
    max_ctx: int = Field(
        32768,
        ge=256,
        le=131072,
        description="Upper bound of the automatic context length (also capped by the model's).",
    )
    gpu_layers: int | None = Field(
        None,
        ge=-1,
        description="Layers to offload to the GPU (-1: all). Default: all if the model fits.",
    )
    gpu_margin: MemorySize = Field(
        1 << 30,
        ge=0,
        description="GPU memory to leave free on each GPU, e.g. 1GiB or 512MiB.",
    )
    kv_cache_type: KvCacheType = Field(
        "f16",
        description="Precision of the KV cache: f16, or q8_0 for about half the memory.",
    )
    flash_attn: bool = Field(
        True,
        description=(
            "Compute attention with llama.cpp's flash attention, as llama.cpp and Ollama do "
            "(faster on the CPU too). --no-flash-attn, for CPU serving with an f16 KV cache "
            "only: a seeded request then gives the same text alone, in a list or with n, at a "
            "few percent of speed."
        ),
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
    models_file: Path | None = Field(
        None,
        description=(
            "A user registry file adding Gemma 3 GGUFs you brought (id, local path, optional "
            "projector) to models.yaml. Default: ~/.config/gemma-serve/models.yaml if it exists."
        ),
    )
    keep_alive: Duration = Field(
        300.0,
        description=(
            "How long a model that serves nothing stays loaded before its memory is given back "
            "(5m, 30s, 0, forever); the next request loads it again. Default: 5m."
        ),
    )
    chat_template: ChatTemplateChoice = Field(
        "pinned",
        description=(
            "Which chat template renders prompts: 'pinned' (gemma-serve's Gemma 3 template) or "
            "'gguf' (the one inside the model file, rendered in a sandbox)."
        ),
    )
    parallel: int | None = Field(
        None,
        ge=1,
        le=64,
        description=(
            "Requests generated together (continuous batching), each with the full context. "
            "Default: on a GPU as many as the memory left after the model holds (at least 4); "
            "on the CPU 4, or 8 or 16 where timing them as the model loads shows the cores gain "
            "from it."
        ),
    )
    queue_size: int = Field(
        64,
        ge=0,
        le=4096,
        description=(
            "Requests that may wait for a free sequence (for each model; for an embedding model, "
            "behind the request being embedded); beyond it the server answers 503 with "
            "Retry-After at once."
        ),
    )
    request_timeout: float | None = Field(
        None,
        gt=0,
        description=(
            "Seconds a request may generate before it is ended with finish_reason 'length' "
            "(default: no limit)."
        ),
    )
    model_aliases: CommaList = Field(
        (),
        description=(
            "Other names clients may send as 'model' for the served model, comma-separated (for "
            "a tool that insists on a name of its own); answers repeat the name sent."
        ),
    )
    max_choices: int = Field(
        4, ge=1, le=16, description="Largest `n` (choices per chat completion) a request may ask."
    )
    log_level: LogLevel = Field("info", description="Log verbosity.")
    progress_interval: float = Field(
        10.0,
        gt=0,
        le=3600,
        description=(
            "Seconds between two progress lines in the log while the model downloads, is "
            "verified or loads (a container's or a service's log; on a terminal the download "
            "draws a progress bar instead)."
        ),
    )
    api_keys: CommaList = Field(
        (),
        description=(
            "API keys clients must send as 'Authorization: Bearer KEY', comma-separated. Prefer "
            "the environment variable or --api-keys-file (a flag shows in the process list). "
            "Default: none, anyone who can reach the port may use it. /health stays open."
        ),
    )
    api_keys_file: Path | None = Field(
        None,
        description="File with one API key per line ('#' starts a comment), added to --api-keys.",
    )
    allowed_hosts: CommaList = Field(
        (),
        description=(
            "Host names clients may use in the Host header besides the default (localhost and "
            "loopback addresses; any IP address too when listening beyond loopback), e.g. the "
            "machine's LAN name; '*' allows any. Other names are refused (DNS rebinding)."
        ),
    )
    cors_origins: CommaList = Field(
        (),
        description=(
            "Web origins whose pages may call the API from a browser, comma-separated, e.g. "
            "http://localhost:3000; '*' allows any. Default: none (no CORS headers at all)."
        ),
    )
    max_body_size: MemorySize = Field(
        4 << 20,
        ge=1 << 10,
        le=1 << 30,
        description="Largest request body accepted, e.g. 4MiB; larger bodies get 413.",
    )
    shutdown_grace: float = Field(
        10.0,
        ge=0,
        le=600,
        description=(
            "Seconds running requests may take to finish after SIGTERM before they are ended "
            "with an error event; keep it below the supervisor's kill timeout (Docker, systemd: "
            "30 s by default, minus a few seconds)."
        ),
    )
    # --- prompt cache (issue 13) ---
    cache_ram: int = Field(
        4096,
        ge=0,
        le=1 << 20,
        description=(
            "MiB of host memory for saved prompt states: when a conversation's sequence is "
            "taken for another, its KV cache is kept here, so its next turn prefills only the "
            "new message (least recently used out first; 0 turns it off)."
        ),
    )
    # --- end prompt cache ---
    log_prompts: bool = Field(
        False,
        description=(
            "Log each request's messages (debugging only: prompts may hold private data). "
            "Default: prompts are never logged."
        ),
    )
    # --- embeddings (issue 24) ---
    embedding_model: str | None = Field(
        None,
        description=(
            "Registry id of an embedding model (e.g. embeddinggemma-300m) to serve on "
            "/v1/embeddings and Ollama's /api/embed beside the chat model. Default: none."
        ),
    )
    embedding_model_file: Path | None = Field(
        None,
        description=(
            "A local GGUF to serve as --embedding-model instead of the registry's download."
        ),
    )
    # --- images (issue 10) ---
    mmproj: Path | None = Field(
        None,
        description=(
            "Vision projector (mmproj GGUF) to load beside the model, for a model whose registry "
            "entry names none. Default: the model's own projector, if it has one."
        ),
    )
    no_vision: bool = Field(
        False,
        description=(
            "Load no vision projector: the model answers text only, and the projector's memory "
            "goes to the context instead."
        ),
    )
    image_urls: bool = Field(
        False,
        description=(
            "Fetch http(s) image URLs that requests send (default: refused, only inline data: "
            "URLs are taken; a server that fetches any URL it is sent can be made to reach "
            "into the network it runs in)."
        ),
    )
    image_url_max_size: MemorySize = Field(
        20 << 20,
        ge=1 << 10,
        le=1 << 30,
        description="Largest image fetched from a URL, e.g. 20MiB (with --image-urls).",
    )
    # --- untrusted input's cost (issue 26) ---
    image_url_timeout: float = Field(
        10.0,
        gt=0,
        le=300,
        description="Seconds to fetch one image URL, in all (with --image-urls).",
    )
    image_url_request_timeout: float = Field(
        30.0,
        gt=0,
        le=600,
        description="Seconds to fetch all of one request's image URLs (with --image-urls).",
    )
    image_url_allowed_networks: NetworkList = Field(
        (),
        description=(
            "Addresses or networks (CIDR), comma-separated, that image URLs may reach although "
            "they are loopback, private or otherwise not public, e.g. 192.168.1.20 or "
            "10.0.0.0/8 (with --image-urls). Default: only public addresses are fetched from."
        ),
    )
    image_max_pixels: int = Field(
        4096 * 4096,
        ge=896 * 896,
        le=100_000_000,
        description=(
            "Most pixels (width x height) an image may decode to; a JPEG is decoded at a reduced "
            "scale first (down to 1/8 a side) when that still leaves at least 2048 pixels a "
            "side. A larger image is refused from its header, before it is decoded (the model "
            "sees 896 x 896)."
        ),
    )
    image_max_side: int = Field(
        8192, ge=896, le=65535, description="Longest side, in pixels, of an image accepted."
    )

    # --- GPU requirements (plan) ---
    require_gpu: bool = Field(
        False,
        description=(
            "Exit with an error instead of falling back to the CPU when no usable GPU is found "
            "(no driver, no device, a CPU-only llama.cpp build, a card the build has no kernels "
            "for, no model fits): a supervisor then restarts it, e.g. after the NVIDIA modules "
            "load. Set in the CUDA image and the systemd unit."
        ),
    )
    cuda_architectures: CudaArchitectures = Field(
        (),
        description=(
            "CUDA architectures the llama.cpp build has kernels for, as CMake lists them "
            "(e.g. 61;70;75;80;86;89;90;120; the CUDA image sets it); a GPU below the lowest "
            "is not used. Default: as the build reports them."
        ),
    )

    # --- The chat page (ui) ---
    ui: bool = Field(
        True,
        description=(
            "Serve the chat page at / (static files; the API it calls keeps its keys). "
            "--no-ui turns it off: / then answers 404."
        ),
    )


ENV_PREFIX = "GEMMA_SERVE_"
# GEMMA_SERVE_* names that are not settings: read by scripts/install-llama.sh and
# scripts/detect-build.sh (`make serve`; CPUINFO also by server/build_record.py), and by the test
# suite.
NOT_SETTINGS = frozenset(
    {"BUILD", "WHEEL_CACHE", "CPUINFO", "BUILD_PROGRESS", "ARTIFACTS", "CHROMIUM"}
    | {"UPDATE_SCREENSHOT"}
)


def unknown_variable(environ: Mapping[str, str]) -> str | None:
    """One line about the first GEMMA_SERVE_* variable that names no setting, with the nearest
    that does: a misspelled GEMMA_SERVE_API_KEY would otherwise leave the server without keys."""
    names = {name.upper() for name in Settings.model_fields}
    for variable in sorted(environ):
        if not variable.startswith(ENV_PREFIX):
            continue
        name = variable[len(ENV_PREFIX) :]
        if name in names or name in NOT_SETTINGS:
            continue
        hint: str | None
        if name.startswith("NO_") and name[3:] in names:
            hint = f"{ENV_PREFIX}{name[3:]}=false"
        else:
            near = difflib.get_close_matches(name, sorted(names), n=1, cutoff=0.5)
            hint = f"{ENV_PREFIX}{near[0]}" if near else None
        meant = f"did you mean {hint}? " if hint else ""
        return (
            f"{variable} is not a setting of gemma-serve: {meant}Every setting is listed by "
            "`gemma-serve serve --help`; unset the variable to start"
        )
    return None
