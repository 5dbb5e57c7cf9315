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
        self._grammar: Any = None
        self._candidates: _Candidates | None = None
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
                # Outside the chain: see `_sample_grammatical`.
                self._grammar = _checked(
                    llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
                )
                self._candidates = _Candidates(n_vocab)
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
        llama_cpp.llama_sampler_chain_add(self._chain, _checked(sampler))  # the chain owns it now

    def sample(self, context: Any, row: int) -> int:
        """Pick the next token from the logits of batch row `row` and accept it."""
        if self._grammar is not None:
            return self._sample_grammatical(llama_cpp.llama_get_logits_ith(context, row))
        if self._argmax_of:
            logits = llama_cpp.llama_get_logits_ith(context, row)
            return int(_logits_row(logits, self._argmax_of).argmax())
        return int(llama_cpp.llama_sampler_sample(self._chain, context, row))

    def _sample_grammatical(self, logits: Any) -> int:
        """A token the grammar allows, checking the grammar against one token first.

        llama.cpp's grammar sampler costs a walk of its parse stacks for each of the 262,144
        candidates (tens of milliseconds a token for plain JSON, on the engine thread that
        every sequence's step waits for). As llama.cpp's own server does, the chain picks a
        token from all candidates and the grammar checks that one alone; only when it refuses
        are the candidates filtered by the grammar and the chain applied again (greedy: the
        1,024 most likely first). Greedy picks exactly what grammar-first would; with
        temperature, a token the grammar allows keeps at least the probability it had among
        all tokens."""
        assert self._candidates is not None
        row = _logits_row(logits, self._candidates.size)
        chosen = row.argmax() if self._argmax_of else self._candidates.pick(self._chain, row)
        token = int(chosen)
        if not self._candidates.allows(self._grammar, token):
            # Greedy: the best allowed token is almost always among the most likely ones.
            found = self._candidates.best_allowed(self._grammar, row) if self._argmax_of else None
            if found is None:
                found = self._candidates.pick(self._chain, row, first=self._grammar)
            token = found
        llama_cpp.llama_sampler_accept(self._grammar, token)
        if not self._argmax_of:
            llama_cpp.llama_sampler_accept(self._chain, token)
        return token

    def free(self) -> None:
        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None
        if self._grammar is not None:
            llama_cpp.llama_sampler_free(self._grammar)
            self._grammar = None


def _checked(sampler: Any) -> Any:
    # NOTE: llama.cpp answers what it cannot build (a grammar it cannot parse) with NULL, and
    # a NULL sampler in a chain crashes the process on first use.
    if not sampler:
        raise ValueError("llama.cpp could not create a sampler")
    return sampler


class _Candidates:
    """A reusable `llama_token_data_array` of the whole vocabulary, for applying samplers
    outside `llama_sampler_sample` (which builds its own from the context's logits)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._data = (llama_cpp.llama_token_data * size)()
        self._view = np.ctypeslib.as_array(self._data)  # id, logit, p: written in place
        self._ids = np.arange(size, dtype=np.int32)

    def pick(self, chain: Any, logits: Any, first: Any = None) -> int:
        """The token `chain` selects from all of `logits`, after the sampler `first` if any."""
        self._view["id"] = self._ids  # samplers sort and cut the array: fill it anew
        self._view["logit"] = logits
        self._view["p"] = 0.0
        array = llama_cpp.llama_token_data_array(self._data, self.size, -1, False)
        if first is not None:
            llama_cpp.llama_sampler_apply(first, ctypes.byref(array))
        llama_cpp.llama_sampler_apply(chain, ctypes.byref(array))
        if array.selected < 0:
            raise RuntimeError("the sampler chain selected no token")
        return int(array.data[array.selected].id)

    def best_allowed(self, grammar: Any, logits: Any, count: int = 1024) -> int | None:
        """The most likely token the grammar allows if it is among the `count` most likely
        (the lowest id among equals, as the greedy sampler picks), else None."""
        count = min(count, self.size)
        top = np.argpartition(logits, -count)[-count:]
        view = self._view[:count]
        view["id"], view["logit"], view["p"] = top, logits[top], 0.0
        array = llama_cpp.llama_token_data_array(self._data, count, -1, False)
        llama_cpp.llama_sampler_apply(grammar, ctypes.byref(array))
        allowed = np.isfinite(view["logit"])
        if not allowed.any():
            return None
        ids, values = view["id"][allowed], view["logit"][allowed]
        return int(ids[values == values.max()].min())

    def allows(self, grammar: Any, token: int) -> bool:
        """Whether the grammar sampler, in its current state, lets `token` through."""
        one = llama_cpp.llama_token_data(token, 0.0, 0.0)
        array = llama_cpp.llama_token_data_array(ctypes.pointer(one), 1, -1, False)
        llama_cpp.llama_sampler_apply(grammar, ctypes.byref(array))
        return bool(np.isfinite(one.logit))


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
