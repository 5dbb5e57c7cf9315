"""The prompt cache that outlives the slots, on the real engine (bundled model, llama.cpp), and
over HTTP (`/metrics`, `usage.prompt_tokens_details.cached_tokens`):
with more conversations than slots a later turn restores its saved history (the same tokens and
the same bytes that were saved) and reuses as much of it as an engine with a slot per
conversation does, answering what that engine answers up to the first near tie, logprobs within
TOLERANCE (the restored cells lie elsewhere, and llama.cpp's CPU arithmetic depends on where:
bench/exactness.py); with a budget of 0 the history is prefilled again; a small budget evicts;
the bytes held match what llama.cpp keeps per token (global layers: every position;
sliding-window layers: the window)."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.engine.contract import (
    ChatMessage,
    GenerationRequest,
    PromptCacheStats,
    SamplingParams,
    TextDelta,
)
from server.engine.llama_engine import LlamaEngine
from server.engine.sequence import Sequence, Snapshot
from tests.conftest import MODEL_ID, RunningServer, serving

SLOTS = 2
CONVERSATIONS = 3  # more than the slots: someone's history must leave its slot
MAX_TOKENS = 12
# How far a logprob may move when the same history's KV lies in other cells (restored, or
# prefilled cold in other batches), in nats. bench/exactness.py, with llama.cpp built without
# AVX-512, over 25 lengths of real text (540 to 2,868 tokens): restored next-token logits were
# bit-identical at 22 and differed at 3 by up to 0.81, which moved the top token's logprob by at
# most 0.085 and the margin between the top two by at most 0.19 (bench/RESULTS.md; the AVX-512
# build's logits differ about as much, up to 0.92). Issue 19's CPU moved this test's logprobs by
# up to 0.018. The tolerance is a little over twice the largest move measured.
TOLERANCE = 0.2
# nats: a margin between the two best tokens closer than this may flip (over twice the largest
# margin move measured; as tests/e2e/test_engine_batching.py), so texts are compared only up to
# the first such near tie
TIE = 0.5
N_SWA = 512  # Gemma 3 270M's sliding window
KV_BYTES_PER_LAYER_TOKEN = 1024  # f16 K+V: 2 x 1 KV head x 256 dims x 2 bytes
GLOBAL_LAYERS, SWA_LAYERS = 3, 15


@dataclass
class Answer:
    text: str
    tokens: list[bytes]
    logprobs: list[float]  # each generated token's
    gaps: list[float]  # logprob of the most likely token minus the second's, at each step
    prompt_tokens: int
    reused: int  # prompt tokens the engine did not prefill


def first_turn(k: int) -> tuple[ChatMessage, ...]:
    # Longer than the 512-token sliding window, so only a whole saved state may serve it.
    colors = ("red", "green", "blue", "white")
    story = " ".join(f"Item {i} is a {colors[(i + k) % 4]} box." for i in range(90))
    return (ChatMessage("user", f"Conversation {k}. {story} Which box is item {k + 3}?"),)


def second_turn(k: int, reply: str) -> tuple[ChatMessage, ...]:
    return (
        *first_turn(k),
        ChatMessage("assistant", reply),
        ChatMessage("user", "And the next item?"),
    )


def ask(engine: LlamaEngine, messages: tuple[ChatMessage, ...]) -> Answer:
    async def main() -> Answer:
        before = engine.reused_prompt_tokens()
        job = await engine.prepare(
            GenerationRequest(
                messages=messages,
                max_tokens=MAX_TOKENS,
                sampling=SamplingParams(temperature=0),
                logprobs=2,
            )
        )
        answer = Answer("", [], [], [], job.prompt_tokens, 0)
        async for event in job.events():
            if isinstance(event, TextDelta):
                answer.text += event.text
                for token in event.logprobs:
                    answer.tokens.append(token.bytes)
                    answer.logprobs.append(token.logprob)
                    answer.gaps.append(token.top[0].logprob - token.top[1].logprob)
            else:
                assert event.usage.prompt_tokens == job.prompt_tokens
        answer.reused = engine.reused_prompt_tokens() - before
        return answer

    return asyncio.run(main())


def conversations(engine: LlamaEngine) -> list[Answer]:
    """Every conversation's first turn, then every second turn, one request at a time (the
    replies are the bundled model's first-turn answers, the same for every engine here)."""
    firsts = [ask(engine, first_turn(k)) for k in range(CONVERSATIONS)]
    return firsts + [ask(engine, second_turn(k, firsts[k].text)) for k in range(CONVERSATIONS)]


def engine_with(model_path: Path, *, parallel: int, cache_ram: int) -> LlamaEngine:
    # Without flash attention (--no-flash-attn, the CPU's exact mode): with it, a restored state's
    # next logits move at every length, not at a few (bench/exactness.py: the top logprob by up
    # to 0.11 here, against 0.085 without), which would leave the answers' comparison to the
    # CPU's arithmetic. What the cache saves, restores and reuses does not depend on the kernel;
    # the server below (the default, flash attention on) serves the same cache over HTTP.
    return LlamaEngine(
        model_path=model_path,
        model_id="gemma-3-270m",
        n_ctx=2048,
        n_threads=2,
        flash_attn=False,
        parallel=parallel,
        cache_ram=cache_ram,
    )


@dataclass
class Restore:
    """One state the prompt cache restored: what was saved, and what the slot held after."""

    saved_tokens: list[int]
    saved_state: bytes
    restored_tokens: list[int]
    restored_state: bytes


def cells_and_kv(state: bytes) -> list[tuple[list[int], bytes]]:
    """A sequence state without what names its slot: per KV cache (the global layers', then the
    sliding window's), the positions of its cells and the bytes of their keys and values.

    llama.cpp's layout (llama_context::state_seq_get_data, llama_kv_cache::state_write): a magic
    and the sequence id, then per cache the stream count and per stream its cell count, each
    cell's position and sequence ids, and the cells' K rows and V (v_trans: by element) of every
    layer. The sequence id and the stream a state lies in are the slot's, so they are left out;
    anything else in the layout fails the end check."""
    offset = 8  # the magic, the sequence id
    caches = []

    def take(fmt: str) -> int:
        nonlocal offset
        (value,) = struct.unpack_from(fmt, state, offset)
        offset += struct.calcsize(fmt)
        return int(value)

    while offset < len(state):
        for _ in range(take("<I")):  # streams: one per slot
            cells = take("<I")
            if not cells:
                continue
            positions = []
            for _ in range(cells):
                positions.append(take("<i"))
                seq_ids = take("<I")
                offset += 4 * seq_ids  # the cell's sequence ids: the slot's
            start = offset
            v_trans, layers = take("<I"), take("<I")
            for _ in range(layers):  # K: type, row size, the rows
                take("<i")
                row = take("<Q")
                offset += row * cells
            for _ in range(layers):  # V: type, then row size, or element size and width
                take("<i")
                row = take("<I") * take("<I") if v_trans else take("<Q")
                offset += row * cells
            caches.append((positions, state[start:offset]))
    assert offset == len(state), "llama.cpp's sequence state layout changed"
    return caches


def recording_restores(monkeypatch: pytest.MonkeyPatch, restores: list[Restore]) -> None:
    """Wrap Sequence.restore, the prompt cache's copy back into a sequence, so that each restore
    can be checked against what was saved: the sequence's tokens and its state, copied out of
    llama.cpp again right after (only copies here, on the engine thread; the test compares)."""
    restore = Sequence.restore

    def recorded(sequence: Sequence, snapshot: Snapshot) -> bool:
        saved = (list(snapshot.tokens), bytes(snapshot.data)[: snapshot.size])
        restored = restore(sequence, snapshot)
        if restored:
            again = sequence.save(sequence.state_size())
            state = bytes(again.data)[: again.size] if again else b""
            restores.append(Restore(*saved, list(sequence.cached), state))
        return restored

    monkeypatch.setattr(Sequence, "restore", recorded)


def trusted_prefix(*answers: Answer) -> int:
    """Tokens before the first near tie in any of `answers`: where the cells' layout cannot
    change the greedy pick."""
    return min(next((i for i, gap in enumerate(a.gaps) if gap < TIE), len(a.gaps)) for a in answers)


def assert_the_same_answer(answer: Answer, kept: Answer) -> int:
    """The same tokens up to the first near tie, their logprobs within TOLERANCE; returns how
    many tokens that covered."""
    trusted = trusted_prefix(answer, kept)
    assert answer.tokens[:trusted] == kept.tokens[:trusted]
    moved = [
        abs(a - b) for a, b in zip(answer.logprobs[:trusted], kept.logprobs[:trusted], strict=True)
    ]
    assert max(moved, default=0.0) <= TOLERANCE, (moved, answer.text, kept.text)
    return trusted


def cache_stats(engine: LlamaEngine) -> PromptCacheStats:
    stats = engine.stats().prompt_cache
    assert stats is not None
    return stats


def run(model_path: Path, *, parallel: int, cache_ram: int) -> tuple[list[Answer], LlamaEngine]:
    engine = engine_with(model_path, parallel=parallel, cache_ram=cache_ram)
    try:
        return conversations(engine), engine
    finally:
        engine.close()  # stats stay readable


@pytest.fixture(scope="module")
def roomy(model_path: Path) -> list[Answer]:
    """The reference: a slot for every conversation, so each keeps its own KV."""
    answers, engine = run(model_path, parallel=CONVERSATIONS, cache_ram=0)
    assert cache_stats(engine).restores == 0
    return answers


@dataclass
class Warm:
    """More conversations than slots, with the prompt cache."""

    answers: list[Answer]
    stats: PromptCacheStats
    warnings: list[str]  # the engine's
    restores: list[Restore]


@pytest.fixture(scope="module")
def warm(model_path: Path) -> Warm:
    warnings: list[str] = []
    restores: list[Restore] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("gemma_serve.engine")
    logger.addHandler(handler)
    try:
        with pytest.MonkeyPatch.context() as monkeypatch:
            recording_restores(monkeypatch, restores)
            answers, engine = run(model_path, parallel=SLOTS, cache_ram=256)
    finally:
        logger.removeHandler(handler)
    return Warm(answers, cache_stats(engine), warnings, restores)


def test_a_later_turn_restores_its_history_exactly(warm: Warm, roomy: list[Answer]) -> None:
    answers, stats, warnings = warm.answers, warm.stats, warm.warnings
    firsts, seconds = answers[:CONVERSATIONS], answers[CONVERSATIONS:]
    for first, second in zip(firsts, seconds, strict=True):
        assert first.reused == 0  # nothing to reuse yet
        # the first turn (prompt and reply) came from a slot or a saved state
        assert second.reused > first.prompt_tokens > 600
    assert stats.restores >= CONVERSATIONS - SLOTS
    assert stats.hits == CONVERSATIONS and stats.saves >= stats.restores
    assert stats.save_seconds > 0 and stats.restore_seconds > 0
    # A restored state is the very KV the sequence had: the same tokens, the same bytes.
    assert len(warm.restores) == stats.restores
    for restore in warm.restores:
        assert restore.restored_tokens == restore.saved_tokens
        saved = cells_and_kv(restore.saved_state)
        assert cells_and_kv(restore.restored_state) == saved
        # the global layers hold every position; the sliding-window layers, the window
        (global_cells, _), (window_cells, _) = saved
        assert sorted(global_cells) == list(range(len(restore.saved_tokens)))
        assert sorted(window_cells) == sorted(global_cells)[-N_SWA:]
    # It serves as much of the prompt as the kept slot would (the reuse counts are the same),
    # and the answers are the same up to the first near tie, logprobs within TOLERANCE: the
    # restored cells lie elsewhere in the slot, and at some lengths and on some CPUs that moves
    # the last bits of llama.cpp's attention sums (bench/exactness.py).
    # (A second turn carries its own engine's first reply: where a near tie let the two replies
    # differ, the two engines were asked different second turns, and only the first compare.)
    for k in range(CONVERSATIONS):
        pairs = [(answers[k], roomy[k])]
        if answers[k].text == roomy[k].text:
            pairs.append((answers[CONVERSATIONS + k], roomy[CONVERSATIONS + k]))
        for answer, kept in pairs:
            assert answer.reused == kept.reused
            assert assert_the_same_answer(answer, kept) >= 1
    # the restored window was where the decision expected it (the engine warns otherwise)
    assert warnings == []


def test_without_the_cache_an_evicted_history_is_prefilled_again(
    model_path: Path, roomy: list[Answer]
) -> None:
    answers, engine = run(model_path, parallel=SLOTS, cache_ram=0)
    stats = cache_stats(engine)
    assert stats.saves == stats.restores == stats.evictions == 0
    assert stats.saved_states == stats.saved_bytes == stats.budget_bytes == 0
    seconds = answers[CONVERSATIONS:]
    assert sum(a.reused == 0 for a in seconds) >= CONVERSATIONS - SLOTS
    # A cold prefill computes the history's KV in other batches and other cells than the first
    # turn did, so its logits may differ in the last bits: the answers agree up to the first
    # near tie, logprobs within TOLERANCE (as the batching tests compare); so do the first
    # turns, cold everywhere but in engines with other slot counts (other cells).
    for k in range(CONVERSATIONS):
        assert assert_the_same_answer(answers[k], roomy[k]) >= 1
        if answers[k].text == roomy[k].text:  # the same second turn was asked
            assert assert_the_same_answer(seconds[k], roomy[CONVERSATIONS + k]) >= 1


def test_saved_bytes_are_what_llama_cpp_keeps_per_token(warm: Warm) -> None:
    stats = warm.stats
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
    engine = engine_with(model_path, parallel=SLOTS, cache_ram=12)
    try:
        for k in range(4):
            assert ask(engine, first_turn(k)).reused == 0
        stats = cache_stats(engine)
    finally:
        engine.close()
    assert stats.saves == 2 and stats.evictions == 1
    assert stats.saved_states == 1 and 0 < stats.saved_bytes <= 12 << 20


@pytest.fixture(scope="module")
def one_slot_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with serving(
        tmp_path_factory.mktemp("one-slot"), "--parallel", "1", "--ctx", "2048"
    ) as running:
        yield running


def test_metrics_count_saves_restores_and_reused_tokens(one_slot_server: RunningServer) -> None:
    def chat(messages: tuple[ChatMessage, ...]) -> dict[str, Any]:
        body = {
            "model": MODEL_ID,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
        }
        response = httpx.post(
            f"{one_slot_server.base_url}/v1/chat/completions", json=body, timeout=300
        )
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer

    def figures() -> dict[str, float]:
        text = httpx.get(f"{one_slot_server.base_url}/metrics").text
        return {
            sample.name: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name.startswith("gemma_serve_prompt_cache_")
        }

    before = figures()
    assert before["gemma_serve_prompt_cache_budget_bytes"] == 4096 << 20  # the default
    first = chat(first_turn(0))
    chat(first_turn(1))  # takes the one slot: the first conversation's state is saved
    reply = first["choices"][0]["message"]["content"]
    second = chat(second_turn(0, reply))  # restored into the slot
    after = figures()

    def grew(name: str) -> float:
        return (
            after[f"gemma_serve_prompt_cache_{name}"] - before[f"gemma_serve_prompt_cache_{name}"]
        )

    assert grew("saves_total") == 2  # the first conversation, then the second
    assert grew("restores_total") == 1 and grew("hits_total") == 1
    assert grew("reused_tokens_total") > first["usage"]["prompt_tokens"] > 600
    # usage tells the client how much of its prompt came from the cache
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] == grew("reused_tokens_total")
    assert second["usage"]["prompt_tokens"] > grew("reused_tokens_total")
    assert after["gemma_serve_prompt_cache_saved_states"] == 1  # the second conversation's
    assert 0 < after["gemma_serve_prompt_cache_saved_bytes"] < 16 << 20
    assert grew("save_seconds_total") > 0 and grew("restore_seconds_total") > 0
