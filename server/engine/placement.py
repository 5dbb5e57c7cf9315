"""The placement policy: which sequence a prompt goes to, and how much cached KV it can reuse.

A sequence keeps the KV of the last generation it ran (prompt and generated tokens), so the next
turn of a chat, whose prompt starts with the previous turn's, prefills only what is new. When a
sequence is taken for another prompt, its state may be saved to host memory
(`prompt_cache.PromptCache`) and restored later into any sequence. Gemma 3's sliding-window layers
(`swa_full=False`) keep just the last `n_swa` positions (plus a micro-batch), so a prefix is
reusable only if the cache still holds the window the next token attends to: the smallest position
the sequence still has (`llama_memory_seq_pos_min`) must be at most `n_reuse - n_swa`. Otherwise the
prompt is prefilled cold. (The same test as llama.cpp's server.) A saved state holds only the window
its last position attends to, so it serves a prompt only at its full length (`restored_pos_min`).

Where the prefix decides nothing, the choice keeps the busy sequences' ids consecutive: with one KV
stream per sequence (`kv_unified=false`) llama.cpp puts into one micro-batch only sequences whose
ids follow each other in the batch (`split_equal(..., sequential=true)`), so busy sequences 0, 5,
10 and 15 decode each step as four micro-batches where 0-3 decode as one (bench/RESULTS.md: +38% a
4-sequence step on the CPU; on a GPU each micro-batch costs about a whole step).
Pure functions: the engine thread supplies `pos_min`, the candidates and the busy ids.
"""

from __future__ import annotations

from collections.abc import Sequence, Set
from dataclasses import dataclass

# Shorter shared prefixes (the chat template's opening, a common system line) are prefilled cold:
# reusing them saves a millisecond or two, but KV computed in another batch differs in its last
# bits, which would make the same seeded request give different texts depending on what ran
# before. States this short are not saved either.
MIN_REUSE = 32


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    if type(a) is not type(b):  # a list never equals a tuple
        a, b = list(a), list(b)
    n = min(len(a), len(b))
    if a[:n] == b[:n]:  # the usual case (a next turn), compared at C speed
        return n
    low, high = 0, n  # a[:low] == b[:low] and a[:high] != b[:high]
    while high - low > 1:
        mid = (low + high) // 2
        if a[low:mid] == b[low:mid]:
            low = mid
        else:
            high = mid
    return low


def reusable_prefix(cached: Sequence[int], prompt: Sequence[int], pos_min: int, n_swa: int) -> int:
    """How many leading prompt tokens can keep their cached KV (0: prefill cold).

    At least the last prompt token is always decoded again: its logits start the generation.
    `pos_min` is the smallest position the sequence still holds (-1 if empty); `n_swa` the
    model's sliding window (0 if none).
    """
    n = min(common_prefix(cached, prompt), len(prompt) - 1)
    if n < MIN_REUSE or pos_min < 0:
        return 0
    oldest_needed = max(0, n - n_swa) if n_swa > 0 else 0
    if pos_min > oldest_needed:
        return 0  # the window the next token attends to is gone from the sliding-window layers
    return n


def restored_pos_min(n_tokens: int, live_pos_min: int, n_swa: int) -> int:
    """The smallest position a saved state holds once restored.

    llama.cpp writes a sequence's sliding-window cells only if its last position (`n_tokens - 1`)
    still attends to them, i.e. positions from `n_tokens - n_swa` on; the global layers keep all.
    """
    if n_swa <= 0:
        return live_pos_min
    return max(live_pos_min, n_tokens - n_swa)


def worth_saving(n_tokens: int) -> bool:
    """Only a state a later prompt could reuse is saved (the copy is not free on a GPU)."""
    return n_tokens > MIN_REUSE


@dataclass(frozen=True)
class Candidate:
    """A KV state a prompt could start from: a free sequence's (`key` is its seq_id) or a saved one
    (`key` indexes the saved states). `saved`: a free sequence whose state the store already holds.
    `last_used`: monotonic seconds."""

    key: int
    tokens: Sequence[int]
    pos_min: int
    last_used: float = 0.0
    saved: bool = False


@dataclass(frozen=True)
class Placement:
    """Where a prompt runs: sequence `seq_id`, after restoring saved state `restore` (None: keep the
    sequence's own KV), expecting to reuse `reuse` prompt tokens."""

    seq_id: int
    restore: int | None
    reuse: int


def added_splits(seq_id: int, busy: Set[int]) -> int:
    """How many more micro-batches a decode step takes once `seq_id` joins the busy sequences: 1
    beside no busy neighbour, 0 beside one (it extends a run of consecutive ids), -1 between two
    (it joins their runs)."""
    return 1 - ((seq_id - 1) in busy) - ((seq_id + 1) in busy)


def place(
    free: Sequence[Candidate],
    saved: Sequence[Candidate],
    prompt: Sequence[int],
    n_swa: int,
    *,
    busy: Set[int],
) -> Placement:
    """The sequence for `prompt`, and whether to restore a saved state into it first.

    The longest reusable prefix wins, a free sequence's own KV before a saved state's at equal
    length (no copy); among equal sequences the one beside the `busy` ones (`added_splits`), then
    the least recently used. Without a useful live prefix the prompt takes a sequence beside the
    busy ones, and among those the one that is cheapest to lose: one whose state is already saved,
    else the shortest, else the least recently used. (A state lost that way is saved first when it
    is worth it: admission does that.)
    """
    if not free:
        raise ValueError("no free sequence")

    def reuse(candidate: Candidate) -> int:
        return reusable_prefix(candidate.tokens, prompt, candidate.pos_min, n_swa)

    live = max(
        free,
        key=lambda sequence: (
            reuse(sequence),
            -added_splits(sequence.key, busy),
            -sequence.last_used,
        ),
    )
    live_reuse = reuse(live)
    best_saved = max(saved, key=reuse, default=None)
    saved_reuse = reuse(best_saved) if best_saved is not None else 0
    if live_reuse >= saved_reuse and live_reuse > 0:
        return Placement(live.key, None, live_reuse)
    victim = min(
        free,
        key=lambda sequence: (
            added_splits(sequence.key, busy),
            not sequence.saved,
            len(sequence.tokens),
            sequence.last_used,
        ),
    )
    if best_saved is not None and saved_reuse > 0:
        return Placement(victim.key, best_saved.key, saved_reuse)
    return Placement(victim.key, None, 0)


def evictions(sizes: Sequence[int], budget: int, incoming: int) -> int | None:
    """How many of the oldest saved states (sizes in bytes, least recently used first) must go for
    `incoming` more bytes to fit `budget`; None if it cannot fit even alone."""
    if incoming > budget:
        return None
    used = sum(sizes)
    dropped = 0
    while used + incoming > budget:
        used -= sizes[dropped]
        dropped += 1
    return dropped
