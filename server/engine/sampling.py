"""One llama.cpp sampler chain per sequence, and logprobs from the raw logits.

A chain holds state (the grammar's parse position, the penalties' token history, the random
generator), so every sequence gets its own. `llama_sampler_sample(chain, ctx, i)` reads the logits
of batch row `i`, applies the chain, picks a token and lets every sampler accept it.
"""

from __future__ import annotations

import ctypes
import random
from typing import Any

import llama_cpp
import numpy as np

from server.engine.contract import SamplingParams

# OpenAI penalises every token generated so far; llama.cpp keeps a ring of the last N.
PENALTY_WINDOW = 4096


class SamplerChain:
    """A llama.cpp sampler chain for one sequence; `free()` exactly once when it is done."""

    def __init__(
        self,
        vocab: Any,
        sampling: SamplingParams,
        *,
        grammar: str | None = None,
        seed: int | None = None,
    ) -> None:
        n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        if not chain:
            raise RuntimeError("llama.cpp could not create a sampler chain")
        self._chain: Any = chain
        try:
            if sampling.logit_bias:
                biases = (llama_cpp.llama_logit_bias * len(sampling.logit_bias))(
                    *(
                        llama_cpp.llama_logit_bias(token, bias)
                        for token, bias in sampling.logit_bias
                    )
                )
                self._add(llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(biases), biases))
            if sampling.presence_penalty or sampling.frequency_penalty:
                self._add(
                    llama_cpp.llama_sampler_init_penalties(
                        n_vocab,
                        PENALTY_WINDOW,
                        1.0,
                        sampling.frequency_penalty,
                        sampling.presence_penalty,
                    )
                )
            if grammar is not None:
                # Before the truncating samplers, so they choose among grammatical tokens only.
                self._add(llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root"))
            if sampling.temperature <= 0:
                self._add(llama_cpp.llama_sampler_init_greedy())
            else:
                self._add(llama_cpp.llama_sampler_init_top_k(sampling.top_k))
                self._add(llama_cpp.llama_sampler_init_top_p(sampling.top_p, 1))
                self._add(llama_cpp.llama_sampler_init_min_p(sampling.min_p, 1))
                self._add(llama_cpp.llama_sampler_init_temp(sampling.temperature))
                chosen_seed = seed if seed is not None else random.getrandbits(32)
                self._add(llama_cpp.llama_sampler_init_dist(chosen_seed & 0xFFFFFFFF))
        except BaseException:
            self.free()
            raise
        # A chain of the greedy sampler alone picks the first maximum of the logits: numpy finds it
        # in 0.03 ms where the chain, which first copies all 262,144 candidates, takes 0.6 ms, and
        # that runs for every sequence between two decode steps.
        greedy_alone = sampling.temperature <= 0 and llama_cpp.llama_sampler_chain_n(chain) == 1
        self._argmax_of = n_vocab if greedy_alone else 0

    def _add(self, sampler: Any) -> None:
        # NOTE: llama.cpp answers what it cannot build (a grammar it cannot parse) with NULL, and
        # a NULL sampler in a chain crashes the process on first use.
        if not sampler:
            raise ValueError("llama.cpp could not create a sampler")
        llama_cpp.llama_sampler_chain_add(self._chain, sampler)  # the chain owns it now

    def sample(self, context: Any, row: int) -> int:
        """Pick the next token from the logits of batch row `row` and accept it."""
        if self._argmax_of:
            logits = llama_cpp.llama_get_logits_ith(context, row)
            return int(_logits_row(logits, self._argmax_of).argmax())
        return int(llama_cpp.llama_sampler_sample(self._chain, context, row))

    def free(self) -> None:
        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None


def logprobs_of(
    logits: Any, n_vocab: int, token: int, top: int
) -> tuple[float, list[tuple[int, float]]]:
    """Log-softmax of the raw logits row: the chosen `token`'s logprob and the `top` most likely
    tokens with theirs, most likely first. `logits` is llama.cpp's float pointer (not copied)."""
    row = _logits_row(logits, n_vocab)
    peak = float(row.max())
    log_total = peak + float(np.log(np.exp(row - peak, dtype=np.float64).sum()))
    chosen = float(row[token]) - log_total
    top = min(top, n_vocab)
    if top <= 0:
        return chosen, []
    best = np.argpartition(row, -top)[-top:]
    best = best[np.argsort(row[best])[::-1]]
    return chosen, [(int(t), float(row[t]) - log_total) for t in best]


def _logits_row(logits: Any, n_vocab: int) -> Any:
    """llama.cpp's float pointer to one row of logits as a numpy array (a view, not a copy)."""
    return np.ctypeslib.as_array(ctypes.cast(logits, ctypes.POINTER(ctypes.c_float)), (n_vocab,))
