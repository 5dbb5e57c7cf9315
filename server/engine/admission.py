"""Admission: which free sequence a new prompt runs in, and the KV it starts from.

The choice is the placement policy's (`placement.place`, pure: the longest reusable prefix among the
free sequences and the saved states); this module applies it with the sequence's own operations
(save, restore, truncate) and the prompt cache's store, so that the cache keeps states and
never chooses, and the sequence alone changes its KV.
"""

from __future__ import annotations

import logging

from server.engine.generation import LlamaGeneration
from server.engine.placement import Candidate, place, reusable_prefix
from server.engine.prompt_cache import PromptCache
from server.engine.sequence import Sequence
from server.engine.vision import safe_reuse

log = logging.getLogger("gemma_serve.engine")


def admit(
    sequences: list[Sequence], generation: LlamaGeneration, cache: PromptCache, n_swa: int
) -> Sequence:
    """The free sequence for `generation`, holding the best KV there is for its prompt, cut to
    the reusable prefix, which never ends inside one of the prompt's images
    (`vision.safe_reuse`). What the sequence held is saved first if it is about to be lost."""
    free = [sequence for sequence in sequences if not sequence.busy]
    busy = {sequence.seq_id for sequence in sequences if sequence.busy}
    prompt = generation.tokens
    live = [
        Candidate(s.seq_id, s.cached, s.pos_min(), s.last_used, saved=cache.holds(s)) for s in free
    ]
    saved = cache.candidates()
    placement = place(live, saved, prompt, n_swa, busy=busy)
    sequence = next(s for s in free if s.seq_id == placement.seq_id)
    restored = False
    if placement.restore is not None:
        cache.save(sequence)  # what the sequence held is about to be overwritten
        restored = cache.restore(sequence, tuple(saved[placement.restore].tokens))
    elif placement.reuse < len(sequence.cached):
        cache.save(sequence)  # about to be cut
    reused = reusable_prefix(sequence.cached, prompt, sequence.pos_min(), n_swa)
    if restored and reused != placement.reuse:
        log.warning(
            "a restored state serves %d prompt tokens, %d expected", reused, placement.reuse
        )
    cache.counted(sequence.truncate(safe_reuse(reused, generation.images)))
    return sequence
