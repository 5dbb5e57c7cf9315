"""The engine's refusal causes in OpenAI's terms (api/refusals.py): every cause has a code, and
each names the field its endpoint gave for it."""

from __future__ import annotations

import pytest

from server.api.refusals import CODES, RefusalFields, openai_refusal
from server.engine.contract import GenerationRequest, ImageInput, Refused, RequestRejected


def image(param: str) -> ImageInput:
    return ImageInput(rgb=b"\0\0\0", width=1, height=1, digest=param, param=param)


REQUEST = GenerationRequest(images=(image("input[0].content[0]"), image("input[2].content[1]")))
FIELDS = RefusalFields(prompt="prompt[3]", output_format="tools")


def test_every_cause_has_an_openai_code() -> None:
    assert set(CODES) == set(Refused)


@pytest.mark.parametrize(
    ("cause", "index", "param", "code"),
    [
        (Refused.CONVERSATION, None, "prompt[3]", "invalid_conversation"),
        (Refused.CONTEXT_LENGTH, None, "prompt[3]", "context_length_exceeded"),
        (Refused.OUTPUT_FORMAT, None, "tools", "invalid_value"),
        (Refused.LOGIT_BIAS, 2, "logit_bias", "invalid_value"),
        (Refused.NO_IMAGE_INPUT, 0, "input[0].content[0]", "image_input_not_supported"),
        (Refused.IMAGE, 1, "input[2].content[1]", "invalid_image"),
    ],
)
def test_a_refusal_names_the_endpoints_field(
    cause: Refused, index: int | None, param: str, code: str
) -> None:
    error = openai_refusal(RequestRejected("no", cause, index=index), REQUEST, FIELDS)
    assert (error.status, error.message, error.param, error.code) == (400, "no", param, code)
