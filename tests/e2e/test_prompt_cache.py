"""The prompt cache that outlives the slots, on the real engine (bundled model, llama.cpp):
with more conversations than slots a later turn restores its saved history and says exactly what
a cold prefill says; a budget of 0 saves nothing; a small budget evicts; the bytes held match what
llama.cpp keeps per token (global layers: every position; sliding-window layers: the window)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from server.engine.llama_engine import LlamaEngine
from server.engine.types import (
    ChatMessage,
    Finished,
    GenerationRequest,
    PromptCacheStats,
    SamplingParams,
    TextDelta,
)

SLOTS = 2
CONVERSATIONS = 3  # more than the slots: someone's history must leave its slot
MAX_TOKENS = 12
N_SWA = 512  # Gemma 3 270M's sliding window
KV_BYTES_PER_LAYER_TOKEN = 1024  # f16 K+V: 2 x 1 KV head x 256 dims x 2 bytes
GLOBAL_LAYERS, SWA_LAYERS = 3, 15


@dataclass
class Answer:
    text: str
    usage_prompt_tokens: int
    reused: int  # prompt tokens the engine did not prefill


def first_turn(k: int) -> tuple[ChatMessage, ...]:
    # Longer than the 512-token sliding window, so only a whole saved state may serve it.
    colors = ("red", "green", "blue", "white")
    story = " ".join(f"Item {i} is a {colors[(i + k) % 4]} box." for i in range(90))
    return (ChatMessage("user", f"Conversation {k}. {story} Which box is item {k + 3}?"),)


def ask(engine: LlamaEngine, messages: tuple[ChatMessage, ...]) -> Answer:
    async def main() -> Answer:
        before = engine.reused_prompt_tokens()
        job = await engine.prepare(
            GenerationRequest(
                messages=messages,
                max_tokens=MAX_TOKENS,
                sampling=SamplingParams(temperature=0),
            )
        )
        text, finished = "", None
        async for event in job.events():
            if isinstance(event, TextDelta):
                text += event.text
            elif isinstance(event, Finished):
                finished = event
        assert finished is not None
        reused = engine.reused_prompt_tokens() - before
        return Answer(text, finished.usage.prompt_tokens, reused)

    return asyncio.run(main())


def conversations(engine: LlamaEngine, replies: list[str] | None = None) -> list[Answer]:
    """Every conversation's first turn, then every second turn, one request at a time. The
    second turns carry `replies` (the first turns' texts unless given), so that two engines can
    be asked exactly the same."""
    firsts = [ask(engine, first_turn(k)) for k in range(CONVERSATIONS)]
    texts = replies or [answer.text for answer in firsts]
    seconds = [
        ask(
            engine,
            (
                *first_turn(k),
                ChatMessage("assistant", texts[k]),
                ChatMessage("user", "And the next item?"),
            ),
        )
        for k in range(CONVERSATIONS)
    ]
    return firsts + seconds


def engine_with(model_path: Path, cache_ram: int) -> LlamaEngine:
    return LlamaEngine(
        model_path=model_path,
        model_id="gemma-3-270m",
        n_ctx=2048,
        n_threads=2,
        parallel=SLOTS,
        cache_ram=cache_ram,
    )


def cache_stats(engine: LlamaEngine) -> PromptCacheStats:
    stats = engine.stats().prompt_cache
    assert stats is not None
    return stats


@pytest.fixture(scope="module")
def cold(model_path: Path) -> list[Answer]:
    """The reference: no saved states (the slots' own prefix reuse still works)."""
    engine = engine_with(model_path, cache_ram=0)
    try:
        answers = conversations(engine)
        stats = cache_stats(engine)
        assert stats.saves == 0 and stats.restores == 0 and stats.saved_bytes == 0
        assert stats.saved_states == 0 and stats.budget_bytes == 0
    finally:
        engine.close()
    return answers


@pytest.fixture(scope="module")
def warm_engine(model_path: Path) -> Iterator[LlamaEngine]:
    engine = engine_with(model_path, cache_ram=256)
    yield engine
    engine.close()


def test_a_later_turn_restores_its_history_and_says_the_same(
    warm_engine: LlamaEngine, cold: list[Answer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gemma_serve.engine")
    replies = [answer.text for answer in cold[:CONVERSATIONS]]
    warm = conversations(warm_engine, replies)
    stats = cache_stats(warm_engine)

    assert [a.text for a in warm] == [a.text for a in cold]  # temperature 0: the very same text
    firsts, seconds = warm[:CONVERSATIONS], warm[CONVERSATIONS:]
    for first, second in zip(firsts, seconds, strict=True):
        assert first.reused == 0  # nothing to reuse yet
        # the whole first-turn prompt (and the reply's KV) came from a slot or a saved state
        assert second.reused > first.usage_prompt_tokens > 600
    # with the cache off, a history evicted from its slot is prefilled cold again
    cold_seconds = cold[CONVERSATIONS:]
    assert sum(a.reused == 0 for a in cold_seconds) >= CONVERSATIONS - SLOTS
    assert stats.restores >= CONVERSATIONS - SLOTS
    assert stats.hits >= CONVERSATIONS and stats.saves >= stats.restores
    assert stats.save_seconds > 0 and stats.restore_seconds > 0
    # the restored window was where the decision expected it (the engine warns otherwise)
    assert not [r for r in caplog.records if "expected" in r.getMessage()]


def test_saved_bytes_are_what_llama_cpp_keeps_per_token(warm_engine: LlamaEngine) -> None:
    stats = cache_stats(warm_engine)
    assert stats.saved_states >= 1
    assert stats.saved_bytes <= stats.budget_bytes == 256 << 20
    # Each saved history holds ~750 tokens: every position of the global layers, the last 512
    # of the sliding-window layers, plus llama.cpp's few bytes of bookkeeping per cell.
    per_state = stats.saved_bytes / stats.saved_states
    low = KV_BYTES_PER_LAYER_TOKEN * (GLOBAL_LAYERS * 700 + SWA_LAYERS * N_SWA)
    high = KV_BYTES_PER_LAYER_TOKEN * (GLOBAL_LAYERS * 800 + SWA_LAYERS * N_SWA) * 1.05
    assert low <= per_state <= high


def test_a_small_budget_evicts_the_least_recently_used(model_path: Path) -> None:
    # One saved history takes ~10 MiB (see above): a 12 MiB budget holds one at a time. Four
    # first turns on two slots: the third and the fourth each push a history out of its slot;
    # the second one saved pushes the first out of the budget.
    engine = engine_with(model_path, cache_ram=12)
    try:
        for k in range(4):
            assert ask(engine, first_turn(k)).reused == 0
        stats = cache_stats(engine)
    finally:
        engine.close()
    assert stats.saves == 2 and stats.evictions == 1
    assert stats.saved_states == 1 and 0 < stats.saved_bytes <= 12 << 20
