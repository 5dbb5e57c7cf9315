"""Token bytes -> client text: UTF-8 safe across token boundaries, with stop strings held back.

A token is a byte string, and one character can span two tokens (emoji, CJK), so bytes go through
an incremental UTF-8 decoder that keeps an unfinished character for the next token rather than
emitting U+FFFD. Stop strings can also span tokens ("<|" + "end|>"), so text that might be the
start of a stop string is held back until the next token shows whether it is one; the stop string
itself is never emitted. Each token is decoded exactly once: no re-detokenising the whole output.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class StopMatcher:
    """Finds the earliest stop string in a stream of text pieces."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stop for stop in stops if stop)
        self._held = ""
        self.matched: str | None = None  # the stop string reached, once one is

    def feed(self, text: str) -> tuple[str, bool]:
        """Add text; return (text safe to emit now, whether a stop string was reached).

        After a stop, everything from the stop string on is dropped.
        """
        buffer = self._held + text
        hits = [(buffer.find(stop), stop) for stop in self._stops]
        found = [(index, stop) for index, stop in hits if index >= 0]
        if found:
            index, self.matched = min(found, key=lambda hit: hit[0])
            self._held = ""
            return buffer[:index], True
        keep = self._longest_partial_stop(buffer)
        self._held = buffer[len(buffer) - keep :]
        return buffer[: len(buffer) - keep], False

    def flush(self) -> str:
        """The held-back text, once generation ends without reaching a stop string."""
        held, self._held = self._held, ""
        return held

    def _longest_partial_stop(self, buffer: str) -> int:
        """Length of the longest suffix of `buffer` that is a proper prefix of a stop string."""
        longest = 0
        for stop in self._stops:
            for length in range(min(len(stop) - 1, len(buffer)), longest, -1):
                if buffer.endswith(stop[:length]):
                    longest = length
                    break
        return longest


class TextAssembler:
    """Turns each generated token's bytes into emit-ready text, once."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = StopMatcher(stops)
        self.stopped = False

    def add(self, piece: bytes) -> str:
        """Text to emit after this token; sets `stopped` when a stop string was reached."""
        text, self.stopped = self._stops.feed(self._decoder.decode(piece))
        return text

    @property
    def matched(self) -> str | None:
        """The stop string that ended the text (Anthropic's `stop_sequence` names it)."""
        return self._stops.matched

    def finish(self) -> str:
        """Text still held when generation ends (not called after a stop string)."""
        text, self.stopped = self._stops.feed(self._decoder.decode(b"", final=True))
        return text if self.stopped else text + self._stops.flush()
