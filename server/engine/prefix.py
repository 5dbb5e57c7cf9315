"""Prompt-prefix cache: which slot a prompt goes to, and how much of its KV can be reused.

A slot keeps the KV of the last sequence it ran (prompt and generated tokens), so the next turn
of a chat, whose prompt starts with the previous turn's, prefills only what is new. Gemma 3's
sliding-window layers (`swa_full=False`) keep just the last `n_swa` positions (plus a micro-batch),
so a prefix is reusable only if the cache still holds the window the next token attends to: the
smallest position the sequence still has (`llama_memory_seq_pos_min`) must be at most
`n_reuse - n_swa`. Otherwise the prompt is prefilled cold. (The same test as llama.cpp's server.)
Pure functions: the engine thread supplies `pos_min`.
"""

from __future__ import annotations

from collections.abc import Sequence

# Shorter shared prefixes (the chat template's opening, a common system line) are prefilled cold:
# reusing them saves a millisecond or two, but KV computed in another batch differs in its last
# bits, which would make the same seeded request give different texts depending on what ran
# before.
MIN_REUSE = 32


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def reusable_prefix(cached: Sequence[int], prompt: Sequence[int], pos_min: int, n_swa: int) -> int:
    """How many leading prompt tokens can keep their cached KV (0: prefill cold).

    At least the last prompt token is always decoded again: its logits start the generation.
    `pos_min` is the smallest position the slot's sequence still holds (-1 if empty); `n_swa` the
    model's sliding window (0 if none).
    """
    n = min(common_prefix(cached, prompt), len(prompt) - 1)
    if n < MIN_REUSE or pos_min < 0:
        return 0
    oldest_needed = max(0, n - n_swa) if n_swa > 0 else 0
    if pos_min > oldest_needed:
        return 0  # the window the next token attends to is gone from the sliding-window layers
    return n


def pick_slot(free: Sequence[tuple[int, Sequence[int], float]], prompt: Sequence[int]) -> int:
    """The free slot for `prompt`: the one whose cached tokens share the longest prefix with it;
    among equals the least recently used. `free` holds (slot id, cached tokens, last use)."""
    if not free:
        raise ValueError("no free slot")
    best = max(free, key=lambda slot: (common_prefix(slot[1], prompt), -slot[2]))
    return best[0]
