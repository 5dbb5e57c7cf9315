"""The image step: the scheduler's step that decodes one sequence's picture.

llama.cpp refuses a batch mixing token rows and embedding rows, and Gemma 3 reads an image with
causal attention off, so an image is decoded in a step of its own holding only its sequence.
`ImageSteps.due` allows at most one image step between two text steps while other sequences have
work, so their streams keep flowing beside a picture.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from server.engine.sequence import Sequence
from server.engine.vision import Projector

log = logging.getLogger("gemma_serve.engine")


class ImageSteps:
    """The scheduler's image steps: which sequence's picture goes next, and running it."""

    def __init__(self, projector: Projector, lctx: Any, n_batch: int) -> None:
        self._projector = projector
        self._lctx = lctx
        self._n_batch = n_batch
        self._last_was_image = False

    def due(self, sequences: list[Sequence]) -> Sequence | None:
        """The sequence whose image to decode now, or None for a text step."""
        waiting = [sequence for sequence in sequences if sequence.pending_image() is not None]
        if not waiting:
            self._last_was_image = False
            return None
        others = any(
            sequence.prefilling or sequence.next_token is not None for sequence in sequences
        )
        if self._last_was_image and others:
            self._last_was_image = False
            return None
        self._last_was_image = True
        return min(
            waiting,
            key=lambda sequence: sequence.generation.submitted_at if sequence.generation else 0.0,
        )

    def run(self, sequence: Sequence) -> None:
        """Encode and decode the sequence's next image. The consumer leaving or the time limit
        passing while the picture is encoded ends the generation before its decode."""
        image = sequence.pending_image()
        assert image is not None and sequence.generation is not None
        started = time.perf_counter()
        status = self._projector.encode(image.chunk)
        if status != 0:
            self._fail(sequence, f"the projector could not encode the image (status {status})")
            return
        if sequence.generation.cancelled.is_set():
            sequence.cancel()
            return
        if sequence.expired():
            sequence.expire()
            return
        pos = len(sequence.cached)
        status = self._projector.decode(
            self._lctx, image.chunk, pos, sequence.seq_id, self._n_batch
        )
        if status != 0:
            self._fail(sequence, f"llama.cpp could not decode the image (status {status})")
            return
        sequence.image_decoded(image)
        log.debug(
            "sequence %d: image of %d positions in %.0f ms",
            sequence.seq_id,
            image.chunk.n_pos,
            (time.perf_counter() - started) * 1000,
        )

    def _fail(self, sequence: Sequence, message: str) -> None:
        log.error("sequence %d: %s", sequence.seq_id, message)
        sequence.abort(RuntimeError(message))
