"""`logprobs`, `top_logprobs` and `logit_bias` on chat completions, end to end on the real model
through the official SDK: each generated token comes with its log-probability and as many
alternatives as asked, streamed or not; a -100 bias keeps a token out and +100 forces it.

Token ids for `logit_bias` come from the bundled model's own vocabulary (llama.cpp, vocab only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MODEL_ID

BASE: dict[str, Any] = {
    "model": MODEL_ID,
    "messages": [{"role": "user", "content": "Name a fruit."}],
    "temperature": 0,
    "max_tokens": 4,
}


@pytest.fixture(scope="module")
def tokenize(model_path: Path):  # type: ignore[no-untyped-def]
    import llama_cpp

    vocab = llama_cpp.Llama(str(model_path), vocab_only=True, verbose=False)

    def ids(text: str) -> list[int]:
        return list(vocab.tokenize(text.encode(), add_bos=False, special=False))

    return ids


def test_each_token_comes_with_its_logprob_and_alternatives(openai_client) -> None:  # type: ignore[no-untyped-def]
    response = openai_client.chat.completions.create(**BASE, logprobs=True, top_logprobs=3)
    choice = response.choices[0]
    content = choice.logprobs.content
    assert len(content) == response.usage.completion_tokens
    assert "".join(entry.token for entry in content) == choice.message.content
    for entry in content:
        assert entry.logprob <= 0
        assert bytes(entry.bytes).decode("utf-8", "replace") == entry.token
        assert len(entry.top_logprobs) == 3
        assert all(top.logprob <= 0 for top in entry.top_logprobs)
        # Greedy decoding picks the most likely token: it heads the alternatives.
        assert entry.top_logprobs[0].token == entry.token
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)


def test_streamed_chunks_carry_the_logprobs_of_their_text(openai_client) -> None:  # type: ignore[no-untyped-def]
    chunks = list(
        openai_client.chat.completions.create(**BASE, logprobs=True, top_logprobs=2, stream=True)
    )
    tokens = [
        entry
        for chunk in chunks
        if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].logprobs.content
        for entry in chunk.choices[0].logprobs.content
    ]
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert tokens
    assert "".join(entry.token for entry in tokens) == text
    assert all(entry.logprob <= 0 and len(entry.top_logprobs) == 2 for entry in tokens)


def test_logprobs_are_null_unless_asked_for(openai_client) -> None:  # type: ignore[no-untyped-def]
    assert openai_client.chat.completions.create(**BASE).choices[0].logprobs is None


def test_a_banned_token_stays_out_and_a_forced_one_comes_out(openai_client, tokenize) -> None:  # type: ignore[no-untyped-def]
    first = openai_client.chat.completions.create(**{**BASE, "max_tokens": 1})
    greedy = first.choices[0].message.content
    (greedy_id,) = tokenize(greedy)
    banned = openai_client.chat.completions.create(
        **{**BASE, "max_tokens": 1}, logit_bias={str(greedy_id): -100}
    )
    assert banned.choices[0].message.content != greedy
    (banana,) = tokenize(" banana")
    forced = openai_client.chat.completions.create(
        **{**BASE, "max_tokens": 3}, logit_bias={str(banana): 100}
    )
    assert forced.choices[0].message.content == " banana" * 3
