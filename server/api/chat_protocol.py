"""Wire types of chat completions, `POST /v1/chat/completions`: requests and answers.

Requests ignore unknown top-level fields (clients send vendor extras) but bound every known one,
so out-of-range values are refused with the field named. Every field of OpenAI's reference is
declared, also those gemma-serve cannot honour, so that `chat` can refuse them by name instead of
dropping them (the audit is in docs/api.md).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_serializer

from server.api.protocol import StreamOptions, Usage, WireModel


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
    name: str | None = Field(None, description="The participant's name, put before its text.")
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None
    # An assistant turn's refusal text: the turn said it, so the model sees it as said.
    refusal: str | None = None
    # An earlier spoken answer (`{"id": ...}`): declared so it can be refused by name.
    audio: Any = None


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
    user: str | None = Field(None, description="Ignored: bookkeeping.")
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    # Token id (a decimal string) -> bias added to its logit, -100..100; checked in `validators`.
    logit_bias: dict[str, float] | None = None
    response_format: ResponseFormat | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # OpenAI's deprecated function calling: declared so it can be refused by name (use `tools`).
    functions: list[Any] | None = None
    function_call: Any = None
    # What a text model cannot do: declared so it can be refused by name (see `chat`).
    modalities: list[str] | None = None
    audio: Any = None
    web_search_options: Any = None
    moderation: Any = None
    reasoning_effort: str | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    # Accepted, with no effect on the answer (the reasons are in docs/api.md).
    prediction: Any = Field(None, description="Ignored: a speed hint; the answer is the same.")
    service_tier: str | None = Field(None, description="Ignored: one tier for all.")
    store: bool | None = Field(None, description="Ignored: nothing is ever stored.")
    metadata: dict[str, str] | None = Field(None, description="Ignored: bookkeeping.")
    safety_identifier: str | None = Field(None, description="Ignored: bookkeeping.")
    prompt_cache_key: str | None = Field(
        None, description="Ignored: the prompt cache is automatic."
    )
    prompt_cache_retention: str | None = Field(None, description="Ignored: see prompt_cache_key.")
    prompt_cache_options: Any = Field(None, description="Ignored: see prompt_cache_key.")


# --- responses --------------------------------------------------------------------------------


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
