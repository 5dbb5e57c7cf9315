"""The ceiling: llama.cpp driven in this process through llama-cpp-python's low-level API.

No HTTP, no server, no text streaming: the same prompt tokens a server would build, greedy
sampling, and a decode loop that does nothing in Python but fill a `llama_batch` and call
`llama_decode` / `llama_sampler_sample`. With one sequence it is the single-stream ceiling; with
`clients` sequences it decodes them together, one batch per step with a token for each (what
`llama-batched-bench` measures), which is the ceiling for continuous batching.

Its results are `RoundResult`s with the same fields as the HTTP rounds (every sequence is "sent"
when the prefill starts; its first token is "received" when it is sampled), so one report covers
every system.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from streaming import RoundResult, StreamResult

# Gemma 3's chat turn around one user message; the same tokens gemma-serve's pinned template and
# the peer's `gemma` chat format produce (`<bos>` comes from the vocabulary).
USER_TURN_OPEN = "<start_of_turn>user\n"
USER_TURN_CLOSE_AND_MODEL_OPEN = "<end_of_turn>\n<start_of_turn>model\n"


class Tokenizer:
    """The model's tokenizer (a vocab-only load: no weights, no context)."""

    def __init__(self, model_path: str) -> None:
        import llama_cpp

        # llama.cpp's own log lines go through this logger; keep the bench's output readable.
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
        self._llama = llama_cpp.Llama(model_path, vocab_only=True, verbose=False)

    def count(self, text: str) -> int:
        """Tokens in `text` as plain text (no BOS, no special-token parsing)."""
        if not text:
            return 0
        return len(self._llama.tokenize(text.encode(), add_bos=False, special=False))

    def chat_prompt(self, prompt: str) -> list[int]:
        """`<bos>` + one user turn + the opening of the model's turn; user text stays plain."""
        llama = self._llama

        def special(text: str) -> list[int]:
            return list(llama.tokenize(text.encode(), add_bos=False, special=True))

        plain = list(llama.tokenize(prompt.encode(), add_bos=False, special=False))
        close = special(USER_TURN_CLOSE_AND_MODEL_OPEN)
        return [llama.token_bos(), *special(USER_TURN_OPEN), *plain, *close]

    def text(self, tokens: list[int]) -> str:
        return self._llama.detokenize(tokens).decode("utf-8", errors="replace")


class RawLoop:
    """The model weights loaded once; one fresh llama.cpp context per `round`."""

    def __init__(self, model_path: str, threads: int, ctx: int) -> None:
        import llama_cpp

        self._lc: Any = llama_cpp
        self._threads = threads
        self._ctx = ctx
        llama_cpp.llama_backend_init()
        self._model = llama_cpp.llama_model_load_from_file(
            model_path.encode(), llama_cpp.llama_model_default_params()
        )
        if not self._model:
            raise RuntimeError(f"llama.cpp could not load {model_path}")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)

    def close(self) -> None:
        if self._model:
            self._lc.llama_model_free(self._model)
            self._model = None

    def round(self, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
        """Decode one sequence per prompt, all together, greedy, up to `max_tokens` each.

        Returns the generated tokens per sequence, and stores the timings in `last_timings`
        as (start, first-token times, last-token times), `time.perf_counter()` seconds.
        """
        lc = self._lc
        params = lc.llama_context_default_params()
        params.n_ctx = self._ctx
        params.n_batch = max(512, sum(len(p) for p in prompts))
        params.n_ubatch = 512
        params.n_seq_max = len(prompts)
        params.n_threads = self._threads
        params.n_threads_batch = self._threads
        params.kv_unified = True
        params.swa_full = False
        params.no_perf = True
        ctx = lc.llama_init_from_model(self._model, params)
        if not ctx:
            raise RuntimeError("llama.cpp could not create a context")
        sampler = lc.llama_sampler_init_greedy()
        batch = lc.llama_batch_init(params.n_batch, 0, 1)
        try:
            return self._decode(ctx, sampler, batch, prompts, max_tokens)
        finally:
            lc.llama_batch_free(batch)
            lc.llama_sampler_free(sampler)
            lc.llama_free(ctx)

    def _decode(
        self,
        ctx: Any,
        sampler: Any,
        batch: Any,
        prompts: list[list[int]],
        max_tokens: int,
    ) -> list[list[int]]:
        lc = self._lc
        clients = len(prompts)
        outputs: list[list[int]] = [[] for _ in range(clients)]
        first_at: list[float] = [0.0] * clients
        last_at: list[float] = [0.0] * clients
        start = time.perf_counter()
        # Prefill: every sequence's prompt in one batch, logits only for each prompt's last token.
        n = 0
        logit_rows: list[int] = []
        for seq, prompt in enumerate(prompts):
            for pos, token in enumerate(prompt):
                _put(batch, n, token, pos, seq, pos == len(prompt) - 1)
                n += 1
            logit_rows.append(n - 1)
        active = list(range(clients))
        positions = [len(prompt) for prompt in prompts]
        while active:
            batch.n_tokens = n
            if lc.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            still_active: list[int] = []
            for seq, row in zip(active, logit_rows, strict=True):
                token = lc.llama_sampler_sample(sampler, ctx, row)
                if lc.llama_vocab_is_eog(self._vocab, token):
                    continue
                now = time.perf_counter()
                if not outputs[seq]:
                    first_at[seq] = now
                last_at[seq] = now
                outputs[seq].append(token)
                if len(outputs[seq]) < max_tokens:
                    still_active.append(seq)
            # One step: the newest token of every sequence still generating.
            active = still_active
            for i, seq in enumerate(active):
                _put(batch, i, outputs[seq][-1], positions[seq], seq, True)
                positions[seq] += 1
            logit_rows, n = list(range(len(active))), len(active)
        self.last_timings = (start, first_at, last_at)
        return outputs


def _put(batch: Any, i: int, token: int, pos: int, seq: int, logits: bool) -> None:
    batch.token[i] = token
    batch.pos[i] = pos
    batch.n_seq_id[i] = 1
    batch.seq_id[i][0] = seq
    batch.logits[i] = logits


def ceiling_round(
    loop: RawLoop, tokenizer: Tokenizer, prompts: list[str], max_tokens: int
) -> RoundResult:
    """One round of the raw loop (one sequence per prompt), as a `RoundResult`."""
    outputs = loop.round([tokenizer.chat_prompt(p) for p in prompts], max_tokens)
    start, first_at, last_at = loop.last_timings
    streams = [
        StreamResult(
            sent_at=start,
            first_token_at=first_at[seq],
            last_token_at=last_at[seq],
            done_at=last_at[seq],
            text=tokenizer.text(tokens),
            content_chunks=len(tokens),
            usage_completion_tokens=len(tokens),
            finish_reason="length" if len(tokens) >= max_tokens else "stop",
        )
        for seq, tokens in enumerate(outputs)
    ]
    return RoundResult(clients=len(prompts), streams=streams)
