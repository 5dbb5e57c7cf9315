"""Wire types of Ollama's API (`/api/*`), as its docs/api.md and the official `ollama` Python
client define them: requests and answers.

Requests ignore unknown top-level fields, as the other dialects do, but `options` is checked
name by name (`OllamaOptions` forbids unknown names): an option this server does not know would
otherwise change nothing without a word. Which options are honoured, refused or ignored is
decided in `server.api.ollama` and documented in docs/api.md.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from server.api.chat_protocol import FUNCTION_NAME, ToolDefinition
from server.api.protocol import WireModel


class OllamaOptions(WireModel):
    """`options`: Ollama's Modelfile parameters, per request."""

    model_config = ConfigDict(extra="forbid", strict=True)

    # Sampling and length: honoured.
    num_predict: int | None = Field(None, ge=-2, description="-1: no limit; -2: fill the context.")
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = None
    stop: list[str] | None = Field(None, max_length=16)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    # Refused unless neutral: samplers llama.cpp has but this server does not run.
    repeat_penalty: float | None = Field(None, ge=0)
    typical_p: float | None = Field(None, ge=0, le=1)
    tfs_z: float | None = Field(None, ge=0)
    mirostat: int | None = Field(None, ge=0, le=2)
    mirostat_tau: float | None = None
    mirostat_eta: float | None = None
    # Accepted, with no effect (the reasons are in docs/api.md).
    num_ctx: int | None = Field(None, ge=1, description="The served context is fixed at start.")
    repeat_last_n: int | None = Field(None, ge=-1)
    penalize_newline: bool | None = None
    num_keep: int | None = None
    numa: bool | None = None
    num_batch: int | None = None
    num_gpu: int | None = None
    main_gpu: int | None = None
    low_vram: bool | None = None
    f16_kv: bool | None = None
    logits_all: bool | None = None
    vocab_only: bool | None = None
    use_mmap: bool | None = None
    use_mlock: bool | None = None
    embedding_only: bool | None = None
    num_thread: int | None = None


# `format`: "" or "json", or a JSON schema.
Format = Literal["", "json"] | dict[str, Any]


class OllamaFunctionCall(WireModel):
    name: str = Field(pattern=FUNCTION_NAME)
    arguments: dict[str, Any] = Field(default_factory=dict)


class OllamaToolCallIn(WireModel):
    function: OllamaFunctionCall


class OllamaMessageIn(WireModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = Field(None, description="Base64 pictures (no data: prefix).")
    tool_calls: list[OllamaToolCallIn] | None = None
    tool_name: str | None = Field(None, description="A tool message: the tool that answered.")
    thinking: str | None = Field(None, description="Ignored: Gemma 3 does not think aloud.")


class OllamaGeneration(WireModel):
    model: str = Field(min_length=1)
    stream: bool = True
    format: Format | None = None
    options: OllamaOptions | None = None
    keep_alive: float | str | None = Field(
        None,
        description=(
            "How long the model stays loaded once idle (seconds or a duration such as 5m; "
            "negative: forever; 0 unloads it after this request)."
        ),
    )
    think: bool | Literal["low", "medium", "high"] | None = None
    # Declared so that they can be refused by name.
    logprobs: bool | None = None
    top_logprobs: int | None = None


class OllamaChatRequest(OllamaGeneration):
    messages: list[OllamaMessageIn] = Field(default_factory=list)
    tools: list[ToolDefinition] | None = None


class OllamaGenerateRequest(OllamaGeneration):
    prompt: str = ""
    system: str | None = None
    images: list[str] | None = None
    raw: bool = False
    # Declared so that they can be refused by name.
    suffix: str | None = None
    template: str | None = None
    context: list[int] | None = None


class ModelRequest(WireModel):
    """`/api/show`, `/api/pull`, `/api/delete`: a model by name (`name` is the old spelling)."""

    model: str | None = None
    name: str | None = None
    verbose: bool | None = None
    stream: bool = True
    insecure: bool | None = Field(None, description="Ignored: the registry's own sources only.")


# --- answers ----------------------------------------------------------------------------------


class OllamaFunction(BaseModel):
    name: str
    arguments: dict[str, Any]


class OllamaToolCall(BaseModel):
    function: OllamaFunction


class OllamaMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    tool_calls: list[OllamaToolCall] | None = None


class Timings(BaseModel):
    """The final object's counts and durations (nanoseconds, as Ollama reports them)."""

    done_reason: str
    total_duration: int
    load_duration: int = 0
    prompt_eval_count: int
    prompt_eval_duration: int
    eval_count: int
    eval_duration: int


class ChatChunk(BaseModel):
    model: str
    created_at: str
    message: OllamaMessage
    done: bool


class ChatDone(ChatChunk, Timings):
    """The last object of a chat stream, or the whole answer."""


class GenerateChunk(BaseModel):
    model: str
    created_at: str
    response: str
    done: bool


class GenerateDone(GenerateChunk, Timings):
    """The last object of a generate stream, or the whole answer."""


class ModelDetails(BaseModel):
    parent_model: str = ""
    format: str = "gguf"
    family: str = "gemma3"
    families: list[str] = Field(default_factory=lambda: ["gemma3"])
    parameter_size: str
    quantization_level: str


class TagModel(BaseModel):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: ModelDetails


class TagList(BaseModel):
    models: list[TagModel]


class RunningModel(TagModel):
    expires_at: str
    size_vram: int
    context_length: int


class RunningList(BaseModel):
    models: list[RunningModel]


class ShowAnswer(BaseModel):
    modelfile: str
    parameters: str
    template: str
    details: ModelDetails
    model_info: dict[str, Any]
    capabilities: list[str]
    modified_at: str


class Version(BaseModel):
    version: str


class Status(BaseModel):
    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None
