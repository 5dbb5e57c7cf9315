"""Sampler chains on real logits: the plain greedy pick (numpy's first maximum, no chain walk)
chooses what llama.cpp's own greedy sampler chooses, and anything before the greedy step (a
logit bias here) still goes through llama.cpp's chain."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp
import pytest

from server.engine.contract import SamplingParams
from server.engine.loading import LoadedModel, LoadParams, load
from server.engine.sampling import SamplerChain

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "1, 2, 3, 4,",
]


@pytest.fixture(scope="module")
def decoded(model_path: Path) -> Iterator[tuple[LoadedModel, list[int]]]:
    """A context holding logits for each prompt's last token, and their batch rows."""
    loaded = load(model_path, LoadParams(n_ctx=256, n_threads=2, n_seq=len(PROMPTS)))
    batch: Any = llama_cpp.llama_batch_init(256, 0, 1)
    n = 0
    rows = []
    for seq, prompt in enumerate(PROMPTS):
        tokens = loaded.model.tokenize(prompt.encode(), add_bos=True, special=False)
        for pos, token in enumerate(tokens):
            batch.token[n], batch.pos[n], batch.n_seq_id[n] = token, pos, 1
            batch.seq_id[n][0] = seq
            batch.logits[n] = pos == len(tokens) - 1
            n += 1
        rows.append(n - 1)
    batch.n_tokens = n
    assert llama_cpp.llama_decode(loaded.context.ctx, batch) == 0
    yield loaded, rows
    llama_cpp.llama_batch_free(batch)
    loaded.close()


def llama_greedy(ctx: Any, row: int) -> int:
    sampler = llama_cpp.llama_sampler_init_greedy()
    try:
        return int(llama_cpp.llama_sampler_sample(sampler, ctx, row))
    finally:
        llama_cpp.llama_sampler_free(sampler)


def test_plain_greedy_picks_what_llama_cpp_greedy_picks(
    decoded: tuple[LoadedModel, list[int]],
) -> None:
    loaded, rows = decoded
    ctx = loaded.context.ctx
    picks = []
    for row in rows:
        chain = SamplerChain(loaded.model.vocab, SamplingParams(temperature=0))
        try:
            picks.append(chain.sample(ctx, row))
        finally:
            chain.free()
        assert picks[-1] == llama_greedy(ctx, row)
    assert len(set(picks)) > 1  # four prompts, not one answer everywhere


def test_a_logit_bias_before_greedy_still_applies(decoded: tuple[LoadedModel, list[int]]) -> None:
    loaded, rows = decoded
    ctx, row = loaded.context.ctx, rows[0]
    plain = llama_greedy(ctx, row)
    forced = 1000 if plain != 1000 else 1001
    chain = SamplerChain(
        loaded.model.vocab, SamplingParams(temperature=0, logit_bias=((forced, 100.0),))
    )
    try:
        assert chain.sample(ctx, row) == forced
    finally:
        chain.free()
