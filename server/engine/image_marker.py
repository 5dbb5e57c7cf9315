"""The image marker: how a picture's place is written inside a message's text, in one module.

The API layer writes `marker(i)` where a request's i-th image stood among its content parts; the
engine splits the rendered text there (`split`) and puts the image's tokens in its place. The
marker is made of private-use characters, and `strip` replaces them in every piece of client
text, so typed text can never claim an image's place. Pure: the API layer imports it too.
"""

from __future__ import annotations

import re

_OPEN, _CLOSE = "\ue002", "\ue003"
_MARKER = re.compile(f"{_OPEN}(\\d+){_CLOSE}")


def marker(index: int) -> str:
    """The text standing for `GenerationRequest.images[index]`."""
    return f"{_OPEN}{index}{_CLOSE}"


def split(text: str) -> list[str | int]:
    """`text` as its text pieces and image indexes, in order (empty pieces left out)."""
    pieces: list[str | int] = []
    for position, piece in enumerate(_MARKER.split(text)):
        if position % 2:
            pieces.append(int(piece))
        elif piece:
            pieces.append(piece)
    return pieces


def strip(text: str) -> str:
    """Client text with the marker's characters replaced (U+FFFD), so it marks no image."""
    return text.replace(_OPEN, "\ufffd").replace(_CLOSE, "\ufffd")
