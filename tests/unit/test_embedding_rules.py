"""Embedding decisions as tables: packing inputs into llama.cpp batches, the `dimensions` a
model offers, and the model card's task prompts."""

from __future__ import annotations

import pytest

from server.engine.embedding_contract import (
    EmbeddingInfo,
    allowed_dimensions,
    shorten,
    with_task,
)
from server.engine.embedding_engine import pack


@pytest.mark.parametrize(
    ("lengths", "n_seq", "n_batch", "batches"),
    [
        ([3, 3, 3], 2, 100, [[0, 1], [2]]),
        ([3, 3, 3], 4, 6, [[0, 1], [2]]),
        ([5, 1, 1, 5], 4, 6, [[0, 1], [2, 3]]),
        ([6, 6], 4, 6, [[0], [1]]),
        ([1], 16, 2048, [[0]]),
        ([], 16, 2048, []),
    ],
)
def test_pack(lengths: list[int], n_seq: int, n_batch: int, batches: list[list[int]]) -> None:
    assert pack(lengths, n_seq, n_batch) == batches


@pytest.mark.parametrize(
    ("width", "matryoshka", "allowed"),
    [
        (768, (512, 256, 128), (768, 512, 256, 128)),
        (256, (128,), (256, 128)),
        (256, (), (256,)),
    ],
)
def test_allowed_dimensions(
    width: int, matryoshka: tuple[int, ...], allowed: tuple[int, ...]
) -> None:
    info = EmbeddingInfo(
        model_id="m", n_ctx=2048, width=width, vocab_size=10, matryoshka=matryoshka
    )
    assert allowed_dimensions(info) == allowed


def test_shorten_renormalises() -> None:
    assert shorten([3.0, 4.0, 12.0], 2) == pytest.approx([0.6, 0.8])


@pytest.mark.parametrize(
    ("task", "text"),
    [
        (None, "Paris"),
        ("query", "task: search result | query: Paris"),
        ("document", "title: none | text: Paris"),
        ("similarity", "task: sentence similarity | query: Paris"),
    ],
)
def test_task_prompts_follow_the_model_card(task: str | None, text: str) -> None:
    assert with_task("Paris", task) == text
