"""A prompt cache that outlives the slots: sequence states saved to host memory, restored later.

A slot keeps its last sequence's KV only until another prompt takes it. With more conversations
than slots, every later turn would then prefill its whole history again. Instead, when a slot is
taken for a prompt that does not extend what it holds, its state is copied to host memory
(`llama_state_seq_get_data`: the sequence's cells of every layer, as llama.cpp keeps them), keyed
by its tokens; a later prompt that extends a saved state gets it copied back into whichever slot it
takes (`llama_state_seq_set_data`), and prefills only what is new.

Exactness: the copy holds the very KV the sequence computed, so a restored state is what the slot
would have held had nobody else used it. Sliding-window layers are saved with only the window the
last position attends to, so a restored state may serve only a prompt that extends it whole
(`prefix.restored_pos_min` and the usual `reusable_prefix` test); anything else is prefilled cold.
The restored cells lie elsewhere in the slot, and at a few lengths that changes the last bits of
llama.cpp's attention sums, as batching with other requests does: over 31 lengths of real text
(540 to 3,450 tokens) one or two restored states' next logits differed from the kept ones' (by
up to 0.92, same top token), the others were bit-identical (bench/exactness.py, two runs).

Bounded by `budget` bytes (least recently used out first); 0 turns saving off. Only the engine
thread calls `admit`; `stats()` may be read from any thread (plain counters).
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import llama_cpp

from server.engine.prefix import (
    Candidate,
    evictions,
    place,
    restored_pos_min,
    reusable_prefix,
    worth_saving,
)
from server.engine.sequence import Slot
from server.engine.types import PromptCacheStats
from server.engine.vision import PromptImage, safe_reuse

log = logging.getLogger("gemma_serve.engine")


@dataclass
class SavedState:
    tokens: list[int]  # the tokens whose KV `data` holds, at positions 0..n-1
    data: Any  # ctypes byte array: llama.cpp's serialised sequence state
    size: int
    pos_min: int  # the smallest position it holds once restored
    last_used: float


class PromptCache:
    """Places prompts into free slots, saving and restoring sequence states on the way."""

    def __init__(self, ctx: Any, memory: Any, *, budget: int, n_swa: int) -> None:
        self._ctx = ctx
        self._memory = memory
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

    def admit(
        self, free: Sequence[Slot], prompt: list[int], images: Sequence[PromptImage] = ()
    ) -> tuple[Slot, int]:
        """Choose the slot for `prompt` among `free`, give it the best KV there is, and cut that
        KV to the reusable prefix, which never ends inside one of the prompt's `images`
        (`vision.safe_reuse`); returns the slot and how many prompt tokens it reuses."""
        candidates = [
            Candidate(
                slot.seq_id,
                slot.cached,
                self._pos_min(slot),
                slot.last_used,
                saved=tuple(slot.cached) in self._saved,
            )
            for slot in free
        ]
        entries = list(self._saved.values())
        saved = [
            Candidate(index, entry.tokens, entry.pos_min, entry.last_used)
            for index, entry in enumerate(entries)
        ]
        placement = place(candidates, saved, prompt, self._n_swa)
        slot = next(slot for slot in free if slot.seq_id == placement.seq_id)
        restored = False
        if placement.restore is not None:
            self._save(slot)  # what the slot held is about to be overwritten
            restored = self._restore(slot, entries[placement.restore])
        elif placement.reuse < len(slot.cached):
            self._save(slot)  # about to be cut
        reused = reusable_prefix(slot.cached, prompt, self._pos_min(slot), self._n_swa)
        if restored and reused != placement.reuse:
            log.warning(
                "a restored state serves %d prompt tokens, %d expected", reused, placement.reuse
            )
        reused = safe_reuse(reused, images)
        if not llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, reused, -1):
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
            reused = 0
        slot.cached = slot.cached[:reused]
        if reused:
            self._hits += 1
            self._reused += reused
        return slot, reused

    def _pos_min(self, slot: Slot) -> int:
        return int(llama_cpp.llama_memory_seq_pos_min(self._memory, slot.seq_id))

    def _save(self, slot: Slot) -> None:
        """Copy the slot's state to host memory, unless it is off, too short, already saved or
        too big for the budget; the oldest states make room."""
        key = tuple(slot.cached)
        if self._budget <= 0 or not worth_saving(len(key)) or key in self._saved:
            return
        started = time.perf_counter()
        size = int(llama_cpp.llama_state_seq_get_size(self._ctx, slot.seq_id))
        dropped = evictions([entry.size for entry in self._saved.values()], self._budget, size)
        if dropped is None:
            log.debug("a state of %.1f MiB exceeds the prompt cache; not saved", size / 2**20)
            return
        for _ in range(dropped):
            _, old = self._saved.popitem(last=False)
            self._bytes -= old.size
            self._evicted += 1
        data = (ctypes.c_uint8 * size)()
        written = int(llama_cpp.llama_state_seq_get_data(self._ctx, data, size, slot.seq_id))
        if written == 0:
            log.warning("llama.cpp could not save sequence %d's state", slot.seq_id)
            return
        pos_min = restored_pos_min(len(key), self._pos_min(slot), self._n_swa)
        self._saved[key] = SavedState(list(key), data, written, pos_min, slot.last_used)
        self._bytes += written
        self._saves += 1
        elapsed = time.perf_counter() - started
        self._save_seconds += elapsed
        log.debug(
            "saved %d tokens (%.1f MiB) of sequence %d in %.1f ms; %d states, %.0f MiB held",
            len(key),
            written / 2**20,
            slot.seq_id,
            elapsed * 1000,
            len(self._saved),
            self._bytes / 2**20,
        )

    def _restore(self, slot: Slot, entry: SavedState) -> bool:
        """Copy `entry` into the slot's sequence; it leaves the store (the slot holds it now and
        saves it again, longer, when it is taken)."""
        started = time.perf_counter()
        del self._saved[tuple(entry.tokens)]
        self._bytes -= entry.size
        llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
        read = int(
            llama_cpp.llama_state_seq_set_data(self._ctx, entry.data, entry.size, slot.seq_id)
        )
        if read == 0:
            log.warning("llama.cpp could not restore a saved state into sequence %d", slot.seq_id)
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
            slot.cached = []
            return False
        slot.cached = entry.tokens
        self._restores += 1
        elapsed = time.perf_counter() - started
        self._restore_seconds += elapsed
        log.debug(
            "restored %d tokens (%.1f MiB) into sequence %d in %.1f ms",
            len(entry.tokens),
            entry.size / 2**20,
            slot.seq_id,
            elapsed * 1000,
        )
        return True
