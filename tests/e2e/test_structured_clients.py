"""The structured-output libraries people use, unchanged, against the real server and the bundled
model: instructor (tool mode and JSON-schema mode) and a pydantic-ai `Agent` with an
`output_type` each get a parsed object back within 200 tokens.

instructor's `Mode.TOOLS` forces the call by name and pydantic-ai requires one (its output is a
tool); a grammar that let the small model repeat the call ran to `max_tokens`, and both libraries
then raised. A call forced by name is one call, a required call is bounded, so both answers end.
"""

from __future__ import annotations

import instructor
import pytest
from openai import OpenAI
from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from tests.conftest import MODEL_ID

MAX_TOKENS = 200
PROMPT = "Paris is the capital of France. Which city is it, and in which country?"


class City(BaseModel):
    name: str
    country: str


@pytest.fixture
def sdk(base_url: str) -> OpenAI:
    return OpenAI(base_url=f"{base_url}/v1", api_key="not-needed", max_retries=0, timeout=300)


@pytest.mark.parametrize("mode", [instructor.Mode.TOOLS, instructor.Mode.JSON_SCHEMA])
def test_instructor_gets_a_parsed_object(sdk: OpenAI, mode: instructor.Mode) -> None:
    client = instructor.from_openai(sdk, mode=mode)
    city, completion = client.chat.completions.create_with_completion(
        model=MODEL_ID,
        response_model=City,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=MAX_TOKENS,
        temperature=0,
        max_retries=0,  # one request: a retry would hide an answer that did not parse
    )
    assert isinstance(city, City)
    choice = completion.choices[0]
    if mode == instructor.Mode.TOOLS:
        assert choice.finish_reason == "tool_calls"
        assert len(choice.message.tool_calls or []) == 1  # forced by name: exactly one call
    else:
        assert choice.finish_reason == "stop"


def test_a_pydantic_ai_agent_gets_its_output_type(base_url: str) -> None:
    model = OpenAIChatModel(
        MODEL_ID, provider=OpenAIProvider(base_url=f"{base_url}/v1", api_key="not-needed")
    )
    agent = Agent(
        model,
        output_type=City,
        model_settings={"max_tokens": MAX_TOKENS, "temperature": 0},
        retries=0,
    )
    result = agent.run_sync(PROMPT)
    assert isinstance(result.output, City)
    assert result.usage.output_tokens < MAX_TOKENS  # the answer ended on its own
