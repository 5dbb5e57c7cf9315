"""Wire types of OpenAI's legacy text completions, `POST /v1/completions`.

As in `protocol`, unknown top-level fields are ignored and every known field is bounded, so an
out-of-range value is a 400 naming it. Fields gemma-serve cannot honour (`suffix`, `best_of`
other than `n`, token-id prompts, `echo` with `logprobs`) are declared so that the converter can
refuse them by name instead of dropping them (the audit is in docs/api.md).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from server.api.protocol import StreamOptions, Usage, WireModel


class CompletionRequest(WireModel):
    model: str = Field(min_length=1)
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="Raw text (no chat template; special tokens such as <start_of_turn> are "
        "parsed; <bos> is added unless the text starts with it), or a list of texts: one "
        "completion per prompt (times n). Token-id arrays are refused."
    )
    max_tokens: int | None = Field(None, ge=1, description="Default 16, as OpenAI's.")
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0, description="Not in OpenAI's API; as llama.cpp's.")
    min_p: float | None = Field(None, ge=0, le=1, description="Not in OpenAI's API.")
    n: int | None = Field(None, ge=1)
    best_of: int | None = Field(None, ge=1, description="Accepted only when equal to n.")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool | None = False
    stop: Annotated[list[str], Field(max_length=4)] | str | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = Field(
        None, description="Token id (as a string) -> bias added to its logit, -100 to 100."
    )
    seed: int | None = None
    user: str | None = Field(None, description="Ignored: bookkeeping.")
    suffix: str | None = Field(None, description="Refused unless empty: no fill-in-the-middle.")


class CompletionLogprobs(BaseModel):
    """The legacy logprobs shape: parallel lists, one entry per generated token."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class Completion(BaseModel):
    """A whole completion, or one chunk of a stream (same object; `finish_reason` only on the
    last chunk of each choice, `usage` only on the usage chunk)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
