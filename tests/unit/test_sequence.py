"""A sequence (server/engine/sequence.py): its prefill, where the prompt's last token ends the
prefill (one step to the first token) except for a seeded request, whose last token is decoded in
a step of its own so that the same request repeated, cold or from the cache, computes its first
logits in the same batch shape; its KV operations (on fake cells); its states and the only moves
between them."""

from __future__ import annotations

import asyncio

import pytest

from server.engine.contract import ChatMessage, GenerationRequest, SamplingParams
from server.engine.generation import LlamaGeneration, Reservation
from server.engine.sequence import TRANSITIONS, Sequence, Snapshot, State

PROMPT = list(range(100, 140))


class FakeCells:
    """llama.cpp's KV calls for one sequence, on a list of positions; `cuts` says whether a
    partial cut succeeds (sliding-window layers can refuse one)."""

    def __init__(self, cuts: bool = True) -> None:
        self.positions: list[int] = []
        self.cuts = cuts
        self.restores_fail = False

    def remove(self, seq_id: int, start: int) -> bool:
        if start < 0:
            self.positions = []
            return True
        if not self.cuts:
            return False
        self.positions = self.positions[:start]
        return True

    def pos_min(self, seq_id: int) -> int:
        return self.positions[0] if self.positions else -1

    def state_size(self, seq_id: int) -> int:
        return len(self.positions)

    def copy_out(self, seq_id: int, size: int) -> tuple[list[int], int] | None:
        return list(self.positions), size

    def copy_in(self, seq_id: int, data: list[int], size: int) -> bool:
        if self.restores_fail:
            return False
        self.positions = list(data)
        return True


def job_for(seed: int | None = None, prompt: list[int] = PROMPT) -> LlamaGeneration:
    request = GenerationRequest(
        messages=(ChatMessage("user", "hi"),), sampling=SamplingParams(seed=seed)
    )
    return LlamaGeneration(
        request,
        prompt,
        grammar=None,
        n_ctx=512,
        reservation=Reservation(lambda: None),
        submit=lambda generation: None,
    )


def holding(tokens: list[int], cells: FakeCells | None = None) -> Sequence:
    """A free sequence whose KV holds `tokens`."""
    cells = cells or FakeCells()
    sequence = Sequence(0, cells)  # type: ignore[arg-type]
    assert sequence.restore(Snapshot(list(tokens), list(range(len(tokens))), len(tokens)))
    return sequence


def started(seed: int | None, reused: int = 0) -> Sequence:
    sequence = holding(PROMPT[:reused])
    sequence.start(job_for(seed), sampler=None, timeout=None)  # type: ignore[arg-type]
    return sequence


@pytest.mark.parametrize(
    ("seed", "reused", "budget", "chunks", "prefilled", "next_token"),
    [
        (None, 0, 512, [40], True, None),  # the whole prompt in one step, logits at its end
        (None, 0, 16, [16, 16, 8], True, None),
        (None, 39, 512, [1], True, None),  # all but the last token cached
        (7, 0, 512, [39], False, PROMPT[-1]),  # seeded: the last token waits for the next step
        (7, 0, 16, [16, 16, 7], False, PROMPT[-1]),
        (7, 39, 512, [], False, PROMPT[-1]),  # handed to decode at once
    ],
)
def test_prefill_chunks(
    seed: int | None,
    reused: int,
    budget: int,
    chunks: list[int],
    prefilled: bool,
    next_token: int | None,
) -> None:
    sequence = started(seed, reused)
    sizes = []
    while sequence.prefilling:
        chunk = sequence.prefill_chunk(budget)
        assert not sequence.prefilled or sequence.next_prompt == len(PROMPT)
        sizes.append(len(chunk))
    assert sizes == chunks
    assert sequence.prefilled == prefilled
    assert sequence.next_token == next_token
    assert sequence.cached == PROMPT[: len(PROMPT) - (next_token is not None)]


def test_truncate_keeps_a_prefix_or_forgets_all() -> None:
    sequence = holding(PROMPT)
    assert sequence.truncate(10) == 10
    assert sequence.cached == PROMPT[:10]
    cells = FakeCells(cuts=False)
    sequence = holding(PROMPT, cells)
    assert sequence.truncate(10) == 0  # llama.cpp could not cut there: nothing is kept
    assert (sequence.cached, cells.positions) == ([], [])


def test_save_and_restore_carry_the_tokens_with_the_cells() -> None:
    sequence = holding(PROMPT[:8])
    snapshot = sequence.save(sequence.state_size())
    assert snapshot is not None and snapshot.tokens == PROMPT[:8]
    sequence.forget()
    assert sequence.cached == [] and sequence.pos_min() == -1
    assert sequence.restore(snapshot)
    assert sequence.cached == PROMPT[:8] and sequence.pos_min() == 0


def test_a_failed_restore_leaves_nothing() -> None:
    cells = FakeCells()
    sequence = holding(PROMPT[:8], cells)
    cells.restores_fail = True
    assert not sequence.restore(Snapshot(PROMPT[:20], list(range(20)), 20))
    assert (sequence.cached, cells.positions) == ([], [])


def test_a_job_runs_through_its_states_and_frees_the_sequence() -> None:
    sequence = started(seed=None)
    assert sequence.generation is not None
    loop = (
        asyncio.new_event_loop()
    )  # where the generation's events would go (nobody reads them here)
    sequence.generation._loop = loop
    assert sequence.state is State.PREFILLING
    sequence.prefill_chunk(512)
    assert sequence.state is State.SAMPLING
    assert not sequence.accept(7, b"a", end_of_turn=False, logprob=None)
    assert sequence.state is State.DECODING
    assert sequence.decode_token() == 7
    assert sequence.state is State.SAMPLING
    assert sequence.accept(1, b"", end_of_turn=True, logprob=None)
    assert sequence.state is State.FREE and not sequence.busy
    assert sequence.cached == [*PROMPT, 7]  # kept for the next turn
    loop.close()


@pytest.mark.parametrize(
    ("state", "allowed"),
    [
        (State.FREE, {State.PREFILLING, State.AWAITING_IMAGE, State.DECODING}),
        (State.PREFILLING, set(State)),
        (State.AWAITING_IMAGE, set(State) - {State.SAMPLING}),
        (State.DECODING, {State.SAMPLING, State.FREE}),
        (State.SAMPLING, {State.DECODING, State.FREE}),
    ],
)
def test_the_transition_table(state: State, allowed: set[State]) -> None:
    assert TRANSITIONS[state] == allowed
