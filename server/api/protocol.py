"""OpenAI wire types (requests and responses) as pydantic models: the one schema system.

Requests ignore unknown top-level fields (clients send vendor extras) but bound every known one,
so out-of-range values are refused with the field named. Fields gemma-serve cannot honour yet are
declared here too, so that `converters` can refuse them instead of silently dropping them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer


class WireModel(BaseModel):
    """Base of every request type: unknown fields are accepted and ignored; known ones must have
    their JSON type, as OpenAI's API checks (`"stream": "yes"`, `"max_tokens": "3"` or
    `"presence_penalty": false` are 400, not coerced)."""

    model_config = ConfigDict(extra="ignore", strict=True)


class TextPart(WireModel):
    type: Literal["text"]
    text: str


class ImagePart(WireModel):
    type: Literal["image_url"]
    image_url: Any = None


class AudioPart(WireModel):
    type: Literal["input_audio"]
    input_audio: Any = None


class FilePart(WireModel):
    type: Literal["file"]
    file: Any = None


ContentPart = Annotated[TextPart | ImagePart | AudioPart | FilePart, Field(discriminator="type")]


FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"


class FunctionCallIn(WireModel):
    name: str = Field(pattern=FUNCTION_NAME)
    # A JSON string, as the model produced it; it is rendered back verbatim if it does not parse.
    arguments: str


class ToolCallIn(WireModel):
    """A tool call of an earlier assistant turn, as this server (or OpenAI) returned it."""

    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessageIn(WireModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None


class FunctionDefinition(WireModel):
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    # A JSON schema of the arguments object; absent means the function takes no arguments.
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(WireModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(WireModel):
    name: str = Field(min_length=1)


class NamedToolChoice(WireModel):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaSpec(WireModel):
    name: str = Field("response", pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    # `schema` would shadow a pydantic BaseModel attribute, hence the alias.
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(WireModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None


class StreamOptions(WireModel):
    include_usage: bool = False


class ChatCompletionRequest(WireModel):
    model: str = Field(min_length=1)
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0, description="Not in OpenAI's API; as llama.cpp's.")
    min_p: float | None = Field(None, ge=0, le=1, description="Not in OpenAI's API.")
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    stop: Annotated[list[str], Field(max_length=4)] | str | None = None
    seed: int | None = None
    n: int | None = Field(None, ge=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    # Token id (a decimal string) -> bias added to its logit, -100..100; checked in `converters`.
    logit_bias: dict[str, float] | None = None
    response_format: ResponseFormat | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # OpenAI's deprecated function calling: declared so it can be refused by name (use `tools`).
    functions: list[Any] | None = None
    function_call: Any = None


# --- responses --------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


FinishReason = Literal["stop", "length", "tool_calls"]


class FunctionCall(BaseModel):
    name: str
    arguments: str = Field(description="The arguments as a JSON string.")


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None
    tool_calls: list[ToolCall] | None = None


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None


class FunctionCallDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(BaseModel):
    """A fragment of a streamed tool call: the first of a call has its `id`, `type` and
    `function.name`; the ones after it add pieces of `function.arguments`."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta


class Delta(BaseModel):
    """A stream delta; unset fields are left out, as OpenAI sends them (`{}` on the last)."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None

    @model_serializer
    def _without_unset(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            key: value
            for key, value in (("role", self.role), ("content", self.content))
            if value is not None
        }
        if self.tool_calls is not None:
            body["tool_calls"] = [call.model_dump(exclude_none=True) for call in self.tool_calls]
        return body


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    system_fingerprint: str | None = None
    usage: Usage | None = None


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


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    """The server is ready; how loaded its engine is."""

    status: Literal["ok"] = "ok"
    active: int = Field(description="Requests being generated now.")
    queued: int = Field(description="Accepted requests waiting for a free sequence.")
    parallel: int = Field(description="Requests generated together at most.")
