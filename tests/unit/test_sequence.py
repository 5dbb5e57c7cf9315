"""A slot's prefill: the prompt's last token ends the prefill (one step to the first token),
except for a seeded request, whose last token is decoded in a step of its own so that the same
request repeated, cold or from the cache, computes its first logits in the same batch shape."""

from __future__ import annotations

import pytest

from server.engine.job import Job, Reservation
from server.engine.sequence import Slot
from server.engine.types import ChatMessage, GenerationRequest, SamplingParams

PROMPT = list(range(100, 140))


def started(seed: int | None, reused: int = 0) -> Slot:
    request = GenerationRequest(
        messages=(ChatMessage("user", "hi"),), sampling=SamplingParams(seed=seed)
    )
    job = Job(
        request,
        PROMPT,
        grammar=None,
        n_ctx=512,
        reservation=Reservation(lambda: None),
        submit=lambda job: None,
    )
    slot = Slot(0)
    slot.start(job, sampler=None, reused=reused, timeout=None)  # type: ignore[arg-type]
    return slot


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
    slot = started(seed, reused)
    sizes = []
    while slot.prefilling:
        chunk = slot.prefill_chunk(budget)
        assert not slot.prefilled or slot.next_prompt == len(PROMPT)
        sizes.append(len(chunk))
    assert sizes == chunks
    assert slot.prefilled == prefilled
    assert slot.next_token == next_token
    assert slot.cached == PROMPT[: len(PROMPT) - (next_token is not None)]
