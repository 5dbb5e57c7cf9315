"""An image's KV is reused whole or not at all (server/engine/vision.py): the stand-in ids of
its positions, and where a reused prefix may end."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from server.engine.placement import MIN_REUSE, common_prefix
from server.engine.vision import PromptImage, image_token_id, safe_reuse


def image_at(start: int, n_pos: int = 256) -> PromptImage:
    chunk: Any = SimpleNamespace(n_pos=n_pos)  # the positions are all that counts here
    return PromptImage(start, chunk)


def test_stand_in_ids_are_negative_and_differ_between_pictures() -> None:
    a, b = image_token_id("ab" * 32), image_token_id("cd" * 32)
    assert a < 0 and b < 0 and a != b
    # Two prompts with different pictures at the same place share no position of them.
    assert common_prefix([5, 6, *[a] * 256, 7], [5, 6, *[b] * 256, 7]) == 2


@pytest.mark.parametrize(
    ("reused", "expected"),
    [
        (40, 40),  # before the image
        (100, 100),  # at its start
        (101, 100),  # inside: back to its start
        (355, 100),
        (356, 356),  # just past it: the whole image is reused
        (500, 500),
    ],
)
def test_a_reused_prefix_never_ends_inside_an_image(reused: int, expected: int) -> None:
    assert safe_reuse(reused, [image_at(100)]) == expected


def test_what_is_left_before_an_image_is_reused_only_if_worth_it() -> None:
    assert safe_reuse(MIN_REUSE + 5, [image_at(MIN_REUSE - 1)]) == 0
