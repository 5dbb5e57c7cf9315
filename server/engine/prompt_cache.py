"""A prompt cache that outlives the sequences' own KV: states saved to host memory, restored later.

A sequence keeps the KV of its last generation only until another prompt takes it. With more
conversations than sequences, every later turn would then prefill its whole history again.
Instead, when a sequence is taken for a prompt that does not extend what it holds, its state is
copied to host memory (`llama_state_seq_get_data`: its cells of every layer, as llama.cpp keeps
them), keyed by its tokens; a later prompt that extends a saved state gets it copied back into
whichever sequence it takes (`llama_state_seq_set_data`), and prefills only what is new.

Exactness: the copy holds the very KV the sequence computed, so a restored state is what the
sequence would have held had nobody else used it. Sliding-window layers are saved with only the
window the last position attends to, so a restored state may serve only a prompt that extends it
whole (`placement.restored_pos_min` and the usual `reusable_prefix` test); anything else is
prefilled cold. The restored cells lie elsewhere in the sequence, and at a few lengths that changes
the last bits of llama.cpp's attention sums, as batching with other requests does: over 31 lengths
of real text (540 to 3,450 tokens) one or two restored states' next logits differed from the kept
ones' (by up to 0.92, same top token), the others were bit-identical (bench/exactness.py, two runs).

Bounded by `budget` bytes (least recently used out first); 0 turns saving off. The store only
keeps states: which sequence a prompt takes is the placement policy's choice (`placement.place`,
applied by the scheduler's admission), and the copies are the sequence's own (`Sequence.save`,
`Sequence.restore`). Only the engine thread changes it; `stats()` may be read from any thread
(plain counters).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

from server.engine.contract import PromptCacheStats
from server.engine.placement import Candidate, evictions, restored_pos_min, worth_saving
from server.engine.sequence import Sequence, Snapshot

log = logging.getLogger("gemma_serve.engine")


@dataclass
class SavedState:
    snapshot: Snapshot  # the KV of `snapshot.tokens`, at positions 0..n-1
    pos_min: int  # the smallest position it holds once restored
    last_used: float


class PromptCache:
    """Sequence states saved in host memory, keyed by their tokens, least recently used first."""

    def __init__(self, *, budget: int, n_swa: int) -> None:
        self._budget = budget
        self._n_swa = n_swa
        # LRU order: least recently used first. Keyed by the tokens.
        self._saved: OrderedDict[tuple[int, ...], SavedState] = OrderedDict()
        self._bytes = 0
        self._hits = 0
        self._reused = 0
        self._restores = 0
        self._saves = 0
        self._evicted = 0
        self._save_seconds = 0.0
        self._restore_seconds = 0.0

    def stats(self) -> PromptCacheStats:
        return PromptCacheStats(
            hits=self._hits,
            reused_tokens=self._reused,
            restores=self._restores,
            saves=self._saves,
            evictions=self._evicted,
            saved_states=len(self._saved),
            saved_bytes=self._bytes,
            budget_bytes=self._budget,
            save_seconds=self._save_seconds,
            restore_seconds=self._restore_seconds,
        )

    def holds(self, sequence: Sequence) -> bool:
        """Whether what `sequence` holds is saved already (losing it costs nothing)."""
        return tuple(sequence.cached) in self._saved

    def candidates(self) -> list[Candidate]:
        """The saved states as the placement policy weighs them (`key`: the index in this
        list)."""
        return [
            Candidate(index, entry.snapshot.tokens, entry.pos_min, entry.last_used)
            for index, entry in enumerate(self._saved.values())
        ]

    def counted(self, reused: int) -> None:
        """A prompt reuses `reused` cached tokens (0: none)."""
        if reused:
            self._hits += 1
            self._reused += reused

    def save(self, sequence: Sequence) -> None:
        """Copy the sequence's state to host memory, unless it is off, too short, already saved
        or too big for the budget; the oldest states make room."""
        key = tuple(sequence.cached)
        if self._budget <= 0 or not worth_saving(len(key)) or key in self._saved:
            return
        started = time.perf_counter()
        size = sequence.state_size()
        dropped = evictions(
            [entry.snapshot.size for entry in self._saved.values()], self._budget, size
        )
        if dropped is None:
            log.debug("a state of %.1f MiB exceeds the prompt cache; not saved", size / 2**20)
            return
        for _ in range(dropped):
            _, old = self._saved.popitem(last=False)
            self._bytes -= old.snapshot.size
            self._evicted += 1
        snapshot = sequence.save(size)
        if snapshot is None:
            log.warning("llama.cpp could not save sequence %d's state", sequence.seq_id)
            return
        pos_min = restored_pos_min(len(key), sequence.pos_min(), self._n_swa)
        self._saved[key] = SavedState(snapshot, pos_min, sequence.last_used)
        self._bytes += snapshot.size
        self._saves += 1
        elapsed = time.perf_counter() - started
        self._save_seconds += elapsed
        log.debug(
            "saved %d tokens (%.1f MiB) of sequence %d in %.1f ms; %d states, %.0f MiB held",
            len(key),
            snapshot.size / 2**20,
            sequence.seq_id,
            elapsed * 1000,
            len(self._saved),
            self._bytes / 2**20,
        )

    def restore(self, sequence: Sequence, tokens: tuple[int, ...]) -> bool:
        """Copy the state saved for `tokens` into the sequence; it leaves the store (the
        sequence holds it now and saves it again, longer, when it is taken). False if it is
        gone (evicted meanwhile) or llama.cpp could not."""
        started = time.perf_counter()
        entry = self._saved.pop(tokens, None)
        if entry is None:
            return False
        self._bytes -= entry.snapshot.size
        if not sequence.restore(entry.snapshot):
            log.warning(
                "llama.cpp could not restore a saved state into sequence %d", sequence.seq_id
            )
            return False
        self._restores += 1
        elapsed = time.perf_counter() - started
        self._restore_seconds += elapsed
        log.debug(
            "restored %d tokens (%.1f MiB) into sequence %d in %.1f ms",
            len(tokens),
            entry.snapshot.size / 2**20,
            sequence.seq_id,
            elapsed * 1000,
        )
        return True
