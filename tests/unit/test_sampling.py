"""logprobs from a raw logits row (what llama.cpp's float pointer holds): a log-softmax, the chosen
token's value and the k most likely tokens, most likely first."""

from __future__ import annotations

import ctypes
import math

import pytest

from server.engine.sampling import logprobs_of


def row(*values: float) -> ctypes.Array[ctypes.c_float]:
    return (ctypes.c_float * len(values))(*values)


def test_log_softmax_of_the_chosen_token_and_the_top_k() -> None:
    logits = row(1.0, 3.0, 2.0, -1.0)
    total = math.log(sum(math.exp(v) for v in (1.0, 3.0, 2.0, -1.0)))
    chosen, top = logprobs_of(logits, 4, 2, 3)
    assert chosen == pytest.approx(2.0 - total, abs=1e-6)
    assert [token for token, _ in top] == [1, 2, 0]
    assert [value for _, value in top] == pytest.approx([3.0 - total, 2.0 - total, 1.0 - total])
    assert all(value <= 0 for _, value in top)


def test_no_alternatives_when_k_is_0_and_k_is_capped_at_the_vocabulary() -> None:
    assert logprobs_of(row(0.0, 0.0), 2, 0, 0) == (pytest.approx(math.log(0.5)), [])
    assert len(logprobs_of(row(0.0, 1.0), 2, 0, 20)[1]) == 2


def test_large_logits_do_not_overflow() -> None:
    chosen, top = logprobs_of(row(1000.0, 0.0), 2, 0, 1)
    assert chosen == pytest.approx(0.0, abs=1e-6)
    assert top[0][0] == 0
