"""`--no-flash-attn`, the CPU's exact mode, end to end: the real server and engine with the
bundled model. Flash attention (the default, as in llama.cpp and Ollama) computes a lone
sequence, a prompt and several sequences in different ways on the CPU, so a seeded text may
change with what runs beside it; without it a seeded prompt gives the same text alone, in a list
and as choice 0 of `n`, in both dialects that take lists and `n`. The model card says which
attention runs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import (
    MODEL_ID,
    SERVER_CTX,
    RunningServer,
    serving,
)
from tests.e2e.test_completions import seeded_texts


@pytest.fixture(scope="module")
def exact_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with serving(
        tmp_path_factory.mktemp("exact"), "--ctx", str(SERVER_CTX), "--no-flash-attn"
    ) as running:
        yield running


@pytest.fixture
def exact(exact_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=exact_server.base_url, timeout=120) as client:
        yield client


def card(http: httpx.Client) -> dict[str, Any]:
    response = http.get(f"/v1/models/{MODEL_ID}")
    assert response.status_code == 200
    return dict(response.json())


def test_the_card_and_the_log_say_which_attention_runs(
    exact_server: RunningServer, exact: httpx.Client, http: httpx.Client
) -> None:
    assert card(exact)["flash_attn"] is False
    assert f"(context {SERVER_CTX} tokens, without flash attention); ready" in exact_server.log()
    assert card(http)["flash_attn"] is True  # the default server's


def test_a_seeded_prompt_gives_the_same_text_alone_in_a_list_and_with_n(
    exact: httpx.Client,
) -> None:
    first, again, listed, samples = seeded_texts(exact)
    assert first == again == listed == samples[0]
    assert samples[1] != first  # sample 1 uses seed + 1


def test_a_seeded_chat_gives_the_same_text_alone_and_as_choice_0(exact: httpx.Client) -> None:
    body = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": "Write a long story about the sea."}],
        "max_tokens": 24,
        "temperature": 1.0,
        "seed": 42,
    }

    def texts(**extra: Any) -> list[str]:
        response = exact.post("/v1/chat/completions", json={**body, **extra})
        assert response.status_code == 200, response.text
        return [choice["message"]["content"] for choice in response.json()["choices"]]

    [alone] = texts()
    choices = texts(n=3)
    assert choices[0] == alone
    assert len(set(choices)) == 3  # choice i uses seed + i
