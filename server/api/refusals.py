"""The engine's refusals in OpenAI's terms: the field each endpoint names and the error code.

The engine names what it refused by its own contract (`Refused`: the conversation, the output
format, a logit-bias entry, image i, ...). Chat, completions and responses differ only in where
their request holds each of those (`RefusalFields`, built by each endpoint's converter per
sequence); the code and the error's shape are OpenAI's, the same for all three, and written
here once.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.api.error_shape import APIError
from server.engine.contract import GenerationRequest, Refused, RequestRejected

# OpenAI's error code for each cause (the codes OpenAI itself answers where it has one); a unit
# test holds it to cover every cause.
CODES: dict[Refused, str] = {
    Refused.CONVERSATION: "invalid_conversation",
    Refused.CONTEXT_LENGTH: "context_length_exceeded",
    Refused.OUTPUT_FORMAT: "invalid_value",
    Refused.LOGIT_BIAS: "invalid_value",
    Refused.NO_IMAGE_INPUT: "image_input_not_supported",
    Refused.IMAGE: "invalid_image",
}


@dataclass(frozen=True)
class RefusalFields:
    """Where one sequence's request holds what the engine may refuse."""

    prompt: str  # the conversation or prompt text: `messages`, `prompt[1]`, `input`
    output_format: str = "response_format"  # what asked for JSON: `response_format`, `tools`
    logit_bias: str = "logit_bias"


def refused_field(
    refusal: RequestRejected, request: GenerationRequest, fields: RefusalFields
) -> str:
    """The request's field behind `refusal` of `request` (images carry their own field)."""
    cause = refusal.cause
    if cause in (Refused.CONVERSATION, Refused.CONTEXT_LENGTH):
        return fields.prompt
    if cause is Refused.OUTPUT_FORMAT:
        return fields.output_format
    if cause is Refused.LOGIT_BIAS:
        return fields.logit_bias
    return request.images[refusal.index or 0].param


def openai_refusal(
    refusal: RequestRejected, request: GenerationRequest, fields: RefusalFields
) -> APIError:
    """The 400 OpenAI answers for it: the message, the field, the cause's code."""
    return APIError(
        400,
        refusal.message,
        param=refused_field(refusal, request, fields),
        code=CODES[refusal.cause],
    )
