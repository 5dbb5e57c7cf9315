"""Stop strings across token boundaries and UTF-8 across token boundaries."""

from __future__ import annotations

import pytest

from server.engine.text_assembly import StopMatcher, TextAssembler


def run(stops: list[str], pieces: list[str]) -> tuple[str, bool]:
    matcher = StopMatcher(stops)
    out = []
    for piece in pieces:
        text, stopped = matcher.feed(piece)
        out.append(text)
        if stopped:
            return "".join(out), True
    out.append(matcher.flush())
    return "".join(out), False


@pytest.mark.parametrize(
    ("stops", "pieces", "expected"),
    [
        (["END"], ["hello ", "world"], ("hello world", False)),
        (["END"], ["hello E", "N", "D and more"], ("hello ", True)),
        (["END"], ["hello EN", "dless"], ("hello ENdless", False)),
        (["\n\n"], ["a\n", "\nb"], ("a", True)),
        (["yz", "xyz"], ["axy", "z"], ("a", True)),  # the earliest match wins, whatever the order
        (["abc"], ["ab"], ("ab", False)),  # held text is released at the end
        ([""], ["abc"], ("abc", False)),  # an empty stop string never matches
    ],
)
def test_stop_strings(stops: list[str], pieces: list[str], expected: tuple[str, bool]) -> None:
    assert run(stops, pieces) == expected


@pytest.mark.parametrize(
    ("stops", "pieces", "matched"),
    [
        (["yz", "xyz"], ["axy", "z"], "xyz"),  # the earliest match, whatever the order
        (["END", "\n"], ["a\nEND"], "\n"),
        (["END"], ["no stop here"], None),
    ],
)
def test_the_stop_string_that_ended_the_text_is_named(
    stops: list[str], pieces: list[str], matched: str | None
) -> None:
    """Anthropic's `stop_sequence` reports it."""
    assembler = TextAssembler(stops)
    for piece in pieces:
        assembler.add(piece.encode())
    if not assembler.stopped:
        assembler.finish()
    assert assembler.matched == matched


def test_partial_stop_is_held_back_until_it_is_resolved() -> None:
    matcher = StopMatcher(["</s>"])
    assert matcher.feed("done</") == ("done", False)
    assert matcher.feed("b>") == ("</b>", False)


def test_multibyte_characters_split_over_tokens_are_reassembled() -> None:
    text = TextAssembler([])
    data = "héllo 🙂 世界".encode()
    out = "".join(text.add(data[i : i + 1]) for i in range(len(data))) + text.finish()
    assert out == "héllo 🙂 世界"
    assert "\ufffd" not in out


def test_a_truncated_character_at_the_end_is_replaced_not_lost() -> None:
    text = TextAssembler([])
    assert text.add("a🙂".encode()[:3]) == "a"
    assert text.finish() == "\ufffd"


def test_stop_string_after_multibyte_text() -> None:
    text = TextAssembler(["🙂"])
    data = "ok 🙂 later".encode()
    out = ""
    for i in range(len(data)):
        out += text.add(data[i : i + 1])
        if text.stopped:
            break
    assert (out, text.stopped) == ("ok ", True)
