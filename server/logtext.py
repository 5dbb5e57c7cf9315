"""Text from clients made safe for a log line (log injection).

A request path may hold a percent-encoded newline, a header any control character: written raw,
they could forge log lines or send escape sequences to an operator's terminal.
"""

from __future__ import annotations


def _escape(ch: str) -> str:
    if ch == '"':
        return '\\"'
    if ch == "\\" or not ch.isprintable():
        return ch.encode("unicode_escape").decode("ascii")
    return ch


def printable(text: str, limit: int = 1000) -> str:
    """`text` with control and other non-printable characters, quotes and backslashes escaped
    (`\\n`, `\\x1b`, `\\u2028`, `\\"`), cut to `limit` characters."""
    if len(text) > limit:
        text = text[:limit] + "..."
    if text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return "".join(_escape(ch) for ch in text)
