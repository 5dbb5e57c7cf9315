"""Images through Ollama's API and Anthropic's Messages API, end to end: a real server with the
bundled model and the tiny random projector (`--mmproj`), the official `ollama` client's
`images` and the `anthropic` SDK's base64 image block. The projector's answers are noise, but a
deterministic function of the picture: the same picture gives the same text on every dialect,
and the prompt holds the image's positions."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import anthropic
import ollama
import pytest
from openai import OpenAI

from tests.conftest import MODEL_ID, RunningServer, serving
from tests.images import encode, picture
from tests.projector import IMAGE_TOKENS, write_tiny_projector

QUESTION = "What is in this picture?"


@pytest.fixture(scope="module")
def vision_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("dialect-vision")
    projector = write_tiny_projector(tmp / "mmproj-tiny.gguf")
    with serving(tmp, "--ctx", "2048", "--parallel", "1", "--mmproj", str(projector)) as running:
        yield running


def png(seed: int) -> str:
    return base64.b64encode(encode(picture(seed))).decode()


def test_one_picture_gives_the_same_text_on_every_dialect(vision_server: RunningServer) -> None:
    image = png(5)
    ollama_answer = ollama.Client(host=vision_server.base_url, timeout=120).chat(
        model=MODEL_ID,
        messages=[{"role": "user", "content": QUESTION, "images": [image]}],
        stream=False,
        options={"temperature": 0, "seed": 1, "num_predict": 6},
    )
    assert ollama_answer.prompt_eval_count is not None
    assert ollama_answer.prompt_eval_count > IMAGE_TOKENS
    assert "vision" in (
        ollama.Client(host=vision_server.base_url).show(MODEL_ID).capabilities or []
    )

    with anthropic.Anthropic(
        base_url=vision_server.base_url, api_key="x", max_retries=0, timeout=120
    ) as sdk:
        message = sdk.messages.create(
            model=MODEL_ID,
            max_tokens=6,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": image},
                        },
                        {"type": "text", "text": QUESTION},
                    ],
                }
            ],
            extra_body={"temperature": 0},
        )
    usage = message.usage
    assert (
        usage.input_tokens + (usage.cache_read_input_tokens or 0) == ollama_answer.prompt_eval_count
    )

    chat = OpenAI(base_url=f"{vision_server.base_url}/v1", api_key="x", max_retries=0).chat
    answer = chat.completions.create(
        model=MODEL_ID,
        max_tokens=6,
        temperature=0,
        seed=1,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}},
                    {"type": "text", "text": QUESTION},
                ],
            }
        ],
    )
    text = answer.choices[0].message.content
    assert ollama_answer.message.content == text
    assert message.content[0].text == text  # type: ignore[union-attr]


def test_a_picture_that_does_not_decode_is_400_in_each_shape(vision_server: RunningServer) -> None:
    with pytest.raises(ollama.ResponseError) as refused:
        ollama.Client(host=vision_server.base_url).chat(
            model=MODEL_ID,
            messages=[{"role": "user", "content": QUESTION, "images": ["aGVsbG8="]}],
            stream=False,
        )
    assert refused.value.status_code == 400 and "messages[0].images[0]" in refused.value.error
    with (
        anthropic.Anthropic(base_url=vision_server.base_url, api_key="x", max_retries=0) as sdk,
        pytest.raises(anthropic.BadRequestError) as bad,
    ):
        sdk.messages.create(
            model=MODEL_ID,
            max_tokens=4,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {
                                "type": "base64",
                                "media_type": "image/png",
                                "data": "aGVsbG8=",
                            },
                        }
                    ],
                }
            ],
        )
    assert "messages[0].content[0]" in str(bad.value)
