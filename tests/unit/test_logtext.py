"""Client text is escaped before it reaches a log line (log injection)."""

from __future__ import annotations

import pytest

from server.logtext import printable


@pytest.mark.parametrize(
    ("raw", "logged"),
    [
        ("/v1/models", "/v1/models"),
        ("/a\r\nFAKE", "/a\\r\\nFAKE"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ('say "hi"', 'say \\"hi\\"'),
        ("back\\slash", "back\\\\slash"),
        ("line\u2028sep", "line\\u2028sep"),
        ("café ünïcode", "café ünïcode"),
        ("\x00\x7f", "\\x00\\x7f"),
    ],
)
def test_printable(raw: str, logged: str) -> None:
    assert printable(raw) == logged
    assert logged.isprintable()


def test_long_text_is_cut() -> None:
    assert printable("x" * 50, limit=10) == "x" * 10 + "..."
