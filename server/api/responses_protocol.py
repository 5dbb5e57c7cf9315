"""Wire types of OpenAI's Responses API, `POST /v1/responses` (stateless text generation).

Requests: unknown fields are ignored, known ones bounded; input items and content parts are
typed loosely (`type` is any string) so that the converter can refuse what it cannot take
(images, tool calls, reasoning items) with the exact place named (`input[2].content[0]`).
Responses follow the shapes the official SDK parses (`openai.types.responses.Response`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from server.api.protocol import StreamOptions, WireModel

ResponseStatus = Literal["in_progress", "completed", "incomplete", "failed"]


class InputPart(WireModel):
    type: str = Field(description="input_text, output_text, refusal or input_image.")
    text: str | None = None
    refusal: str | None = None
    image_url: Any = Field(None, description="input_image: a data: URL.")
    detail: Any = None


class InputItem(WireModel):
    """A message item (`type` "message" or absent); other item types are refused."""

    type: str | None = None
    role: str | None = None
    content: str | list[InputPart] | None = None


class TextFormat(WireModel):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(None, pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    # `schema` would shadow a pydantic BaseModel attribute, hence the alias.
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class TextConfig(WireModel):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningConfig(WireModel):
    effort: str | None = None
    summary: str | None = None


class ResponseRequest(WireModel):
    model: str = Field(min_length=1)
    input: str | list[InputItem]
    instructions: str | None = Field(None, description="A system message before the input.")
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = Field(None, description="Not in OpenAI's Responses API; as in chat.")
    text: TextConfig | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    store: bool | None = Field(None, description="Accepted; nothing is ever stored.")
    metadata: dict[str, str] | None = Field(None, description="Echoed back.")
    user: str | None = Field(None, description="Echoed back; bookkeeping.")
    parallel_tool_calls: bool | None = None
    # Accepted, with no effect on the answer (the reasons are in docs/api.md).
    max_tool_calls: int | None = Field(None, ge=1, description="Ignored: no tools run here.")
    service_tier: str | None = Field(None, description="Ignored: one tier for all.")
    safety_identifier: str | None = Field(None, description="Ignored: bookkeeping.")
    prompt_cache_key: str | None = Field(
        None, description="Ignored: the prompt cache is automatic."
    )
    prompt_cache_retention: str | None = Field(None, description="Ignored: see prompt_cache_key.")
    prompt_cache_options: Any = Field(None, description="Ignored: see prompt_cache_key.")
    # Declared so they can be refused by name.
    previous_response_id: str | None = None
    conversation: Any = None
    background: bool | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    reasoning: ReasoningConfig | None = None
    truncation: Literal["auto", "disabled"] | None = None
    include: list[str] | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    prompt: Any = None
    background_options: Any = None
    context_management: Any = None
    moderation: Any = None
    image: Any = None
    access_programs: Any = None


# --- responses --------------------------------------------------------------------------------


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class OutputMessage(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: Literal["in_progress", "completed", "incomplete"]
    content: list[OutputText]


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0  # required by the SDK's type; not counted here


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"]


class ResponseError(BaseModel):
    code: str
    message: str


class ResponseObject(BaseModel):
    """The `response` object, whole or as a snapshot in stream events."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: ResponseStatus
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[OutputMessage] = Field(default_factory=list)
    parallel_tool_calls: bool = True
    previous_response_id: None = None
    reasoning: dict[str, Any] = Field(default_factory=lambda: {"effort": None, "summary": None})
    store: Literal[False] = Field(False, description="gemma-serve stores no responses.")
    temperature: float | None = None
    top_p: float | None = None
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    tool_choice: Literal["none", "auto"] = "auto"
    tools: list[Any] = Field(default_factory=list)
    truncation: Literal["disabled"] = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)

    @property
    def output_text(self) -> str:
        return "".join(part.text for item in self.output for part in item.content)
