"""Wire types of Anthropic's Messages API, `POST /v1/messages` and `/v1/messages/count_tokens`.

Requests ignore unknown top-level fields, as the other dialects do. Content blocks are typed
loosely (`type` is any string, every block's fields optional) so that `server.api.anthropic` can
refuse what it cannot take (documents, thinking, server tools) with the block named
(`messages[2].content[0]`) instead of a union error. `cache_control` is accepted everywhere and
changes nothing: the prompt cache is automatic, and its reads are reported in `usage`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from server.api.chat_protocol import FUNCTION_NAME
from server.api.protocol import WireModel


class ImageSource(WireModel):
    type: str | None = Field(None, description="base64 (accepted), url or file (refused).")
    media_type: str | None = None
    data: str | None = None
    url: str | None = None
    file_id: str | None = None


class ContentBlock(WireModel):
    """Any content block; which fields a `type` needs is checked by the converter."""

    type: str
    text: str | None = None
    source: ImageSource | None = None
    # tool_use
    id: str | None = None
    name: str | None = None
    input: dict[str, Any] | None = None
    # tool_result
    tool_use_id: str | None = None
    content: str | list[ContentBlock] | None = None
    is_error: bool | None = None
    cache_control: Any = Field(None, description="Ignored: the prompt cache is automatic.")
    citations: Any = None


class MessageIn(WireModel):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


class ToolIn(WireModel):
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    type: str | None = Field(None, description="custom (or absent); server tools are refused.")
    cache_control: Any = Field(None, description="Ignored: the prompt cache is automatic.")


class ToolChoice(WireModel):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class OutputFormat(WireModel):
    type: Literal["json_schema"]
    # `schema` would shadow a pydantic BaseModel attribute, hence the alias.
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(WireModel):
    effort: str | None = Field(None, description="Ignored: Gemma 3 has one effort level.")
    format: OutputFormat | None = None


class CountTokensRequest(WireModel):
    model: str = Field(min_length=1)
    messages: list[MessageIn] = Field(min_length=1)
    system: str | list[ContentBlock] | None = None
    tools: list[ToolIn] | None = None
    tool_choice: ToolChoice | None = None
    # Declared so that they can be refused by name (extended thinking, server-side features).
    thinking: Any = None
    mcp_servers: Any = None
    container: Any = None
    context_management: Any = None


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = Field(None, max_length=16)
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0)
    stream: bool = False
    output_config: OutputConfig | None = None
    metadata: dict[str, Any] | None = Field(None, description="Ignored: bookkeeping.")
    service_tier: str | None = Field(None, description="Ignored: one tier for all.")
    cache_control: Any = Field(None, description="Ignored: the prompt cache is automatic.")


# --- answers ----------------------------------------------------------------------------------

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class TextOut(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ToolUseOut(BaseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


class MessageUsage(BaseModel):
    input_tokens: int = Field(description="Prompt tokens computed (not read from the cache).")
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = Field(0, description="Prompt tokens from the prompt cache.")


class Message(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[TextOut | ToolUseOut]
    stop_reason: StopReason | None
    stop_sequence: str | None = None
    usage: MessageUsage


class TokenCount(BaseModel):
    input_tokens: int
