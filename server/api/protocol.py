"""Wire types every endpoint shares: the request base, stream options, usage, model cards.

Each endpoint's own types live beside it (`chat_protocol`, `completions_protocol`,
`responses_protocol`); they are all pydantic models built on `WireModel`: one schema system.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class WireModel(BaseModel):
    """Base of every request type: unknown fields are accepted and ignored; known ones must have
    their JSON type, as OpenAI's API checks (`"stream": "yes"`, `"max_tokens": "3"` or
    `"presence_penalty": false` are 400, not coerced)."""

    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(WireModel):
    include_usage: bool = False
    include_obfuscation: bool | None = Field(
        None, description="Accepted; chunks are never padded (no `obfuscation` field)."
    )


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0  # prompt tokens served from the prompt cache, not computed again


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)


class Capabilities(BaseModel):
    vision: bool = Field(description="The model takes images (a vision projector is loaded).")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "gemma-serve"
    # Beyond OpenAI's fields: what a client may want to know about a local model.
    name: str | None = None
    parameters: str | None = None
    quantization: str | None = None
    file_size: int | None = None
    context_length: int | None = Field(None, description="Context of the loaded model, tokens.")
    trained_context_length: int | None = None
    device: Literal["gpu", "cpu"] | None = Field(None, description="Where it runs, once loaded.")
    capabilities: Capabilities | None = Field(None, description="What it takes, once loaded.")
    flash_attn: bool | None = Field(
        None, description="Whether attention runs with llama.cpp's flash attention, once loaded."
    )
    state: Literal["loaded", "loading", "unloading", "unloaded"] = Field(
        "unloaded", description="Whether it is in memory now; a request loads it."
    )
    memory: int = Field(0, description="Bytes it holds while loaded (the plan's figure).")
    expires_at: int | None = Field(
        None, description="Unix time it unloads if still idle (its keep-alive); None: not set."
    )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    """The server is ready; how loaded its engine is."""

    status: Literal["ok"] = "ok"
    active: int = Field(description="Sequences being generated now.")
    queued: int = Field(description="Accepted sequences waiting for a free place in the batch.")
    parallel: int = Field(description="Sequences generated together at most.")
    loaded: list[str] = Field(
        default_factory=list, description="The installed models in memory now (see /v1/models)."
    )
