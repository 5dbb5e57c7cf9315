"""One sequence of the batch: a llama.cpp sequence id, its KV cells, and the generation it runs.

A `Sequence` owns its KV: the tokens whose cells it holds (`cached`) change only through its own
methods (truncate, forget, save, restore, and the prefill and decode steps that add to them), and
this module is the only one that removes cells (`llama_memory_seq_rm`) or copies a sequence's
state out or in. Its state (`State`) is held, not inferred, and moves only along `TRANSITIONS`.

Only the engine thread touches a sequence. A generation moves through it in two phases: prefill (its
prompt tokens, in chunks, the last one asking for logits; an image in a step of its own) and
decode (one sampled token per step). Each sampled token is turned into text once
(`TextAssembler`: UTF-8 safe, stop strings held back) and pushed to the generation's queue.
"""

from __future__ import annotations

import ctypes
import time
from collections import abc
from dataclasses import dataclass
from enum import Enum
from typing import Any

import llama_cpp

from server.engine.contract import Finished, FinishReason, TextDelta, TokenLogprob, Usage
from server.engine.generation import DONE, LlamaGeneration
from server.engine.sampling import SamplerChain
from server.engine.text_assembly import TextAssembler
from server.engine.vision import PromptImage


class State(Enum):
    """Where a sequence is with its generation."""

    FREE = "free"  # no generation; its KV still serves a later prompt that extends it
    PREFILLING = "prefilling"  # prompt tokens are left to put in a batch
    AWAITING_IMAGE = "awaiting image"  # the prompt's next positions are an image (a step alone)
    DECODING = "decoding"  # a token (sampled, or the prompt's last) waits for the next batch
    SAMPLING = "sampling"  # the batch in flight holds the row whose logits pick the next token


# Every move a sequence may make. Any busy state ends in FREE (finished, failed, cancelled or out
# of time); `start` leaves FREE for wherever the reused prefix leaves the prompt.
_PROMPT = frozenset({State.PREFILLING, State.AWAITING_IMAGE, State.DECODING})
TRANSITIONS: dict[State, frozenset[State]] = {
    State.FREE: _PROMPT,
    State.PREFILLING: _PROMPT | {State.SAMPLING, State.FREE},
    State.AWAITING_IMAGE: _PROMPT | {State.FREE},
    State.DECODING: frozenset({State.SAMPLING, State.FREE}),
    State.SAMPLING: frozenset({State.DECODING, State.FREE}),
}


@dataclass
class Snapshot:
    """A sequence's state copied to host memory: the KV of `tokens` at positions 0..n-1."""

    tokens: list[int]
    data: Any  # ctypes byte array: llama.cpp's serialised sequence state
    size: int


class Cells:
    """llama.cpp's calls on one context's KV memory, by sequence id; only `Sequence` uses them.
    (A test passes its own object with these methods.)"""

    def __init__(self, ctx: Any) -> None:
        self._ctx = ctx
        self._memory = llama_cpp.llama_get_memory(ctx)

    def remove(self, seq_id: int, start: int) -> bool:
        """Drop positions `start`.. (-1: all); False if llama.cpp cannot cut there."""
        return bool(llama_cpp.llama_memory_seq_rm(self._memory, seq_id, start, -1))

    def pos_min(self, seq_id: int) -> int:
        return int(llama_cpp.llama_memory_seq_pos_min(self._memory, seq_id))

    def copy_out(self, seq_id: int, size: int) -> tuple[Any, int] | None:
        data = (ctypes.c_uint8 * size)()
        written = int(llama_cpp.llama_state_seq_get_data(self._ctx, data, size, seq_id))
        return (data, written) if written else None

    def copy_in(self, seq_id: int, data: Any, size: int) -> bool:
        return bool(llama_cpp.llama_state_seq_set_data(self._ctx, data, size, seq_id))

    def state_size(self, seq_id: int) -> int:
        return int(llama_cpp.llama_state_seq_get_size(self._ctx, seq_id))


class Sequence:
    """A sequence of the llama.cpp context (`seq_id`), free or running one generation."""

    def __init__(self, seq_id: int, cells: Cells) -> None:
        self.seq_id = seq_id
        self._cells = cells
        self._cached: list[int] = []  # tokens whose KV this sequence holds, at positions 0..n-1
        self.state = State.FREE
        self.last_used = 0.0
        self.generation: LlamaGeneration | None = None
        self.sampler: SamplerChain | None = None
        self.next_prompt = 0  # index of the next prompt token to prefill
        self.next_token: int | None = None  # sampled, decoded in the next step
        self.generated = 0
        self._sent = 0  # generated tokens whose text was emitted
        self.reused = 0  # prompt tokens whose KV came from the cache
        self.split_last = False  # the prompt's last token is decoded in a step of its own
        self.deadline: float | None = None
        self._text = TextAssembler(())
        self._logprobs: list[TokenLogprob] = []

    # --- its KV cells -------------------------------------------------------------------------

    @property
    def cached(self) -> abc.Sequence[int]:
        """The tokens whose KV the sequence holds (read only: its methods change it)."""
        return self._cached

    def pos_min(self) -> int:
        """The smallest position its cells still hold (-1: none); sliding-window layers drop the
        oldest."""
        return self._cells.pos_min(self.seq_id)

    def truncate(self, keep: int) -> int:
        """Keep the KV of the first `keep` tokens only; returns how many are kept (0 when
        llama.cpp cannot cut there and everything is forgotten instead)."""
        if self._cells.remove(self.seq_id, keep):
            del self._cached[keep:]
            return keep
        self.forget()
        return 0

    def forget(self) -> None:
        """Drop every cell (they are wrong or about to be overwritten)."""
        self._cells.remove(self.seq_id, -1)
        self._cached = []

    def state_size(self) -> int:
        """Bytes a `save()` would copy now."""
        return self._cells.state_size(self.seq_id)

    def save(self, size: int) -> Snapshot | None:
        """A copy of its KV in host memory, `size` bytes as `state_size()` just said (None:
        llama.cpp could not)."""
        copied = self._cells.copy_out(self.seq_id, size)
        if copied is None:
            return None
        data, size = copied
        return Snapshot(list(self._cached), data, size)

    def restore(self, snapshot: Snapshot) -> bool:
        """Replace its KV with `snapshot`'s; on failure it holds nothing."""
        self._cells.remove(self.seq_id, -1)
        if not self._cells.copy_in(self.seq_id, snapshot.data, snapshot.size):
            self.forget()
            return False
        self._cached = snapshot.tokens
        return True

    # --- its state ----------------------------------------------------------------------------

    def _move(self, state: State) -> None:
        assert state in TRANSITIONS[self.state], f"sequence {self.seq_id}: {self.state} -> {state}"
        self.state = state

    def _prompt_state(self) -> State:
        """Where the prompt stands after the last step: an image next, text left, or the last
        token handed to decode (seeded), or done (its logits come from the batch in flight)."""
        assert self.generation is not None
        for image in self.generation.images:
            if image.start == self.next_prompt:
                return State.AWAITING_IMAGE
        if self.split_last and self.next_prompt == len(self.generation.tokens) - 1:
            # NOTE: a seeded request's last prompt token is decoded like a generated one, in a
            # step of its own, whether the rest came from the prefix cache or not: llama.cpp's
            # numerics depend on the batch a row is in, so this is what makes a repeated seeded
            # request (cold, then warm) give the same text. Other requests ask for no such
            # promise and save the step (a decode step of time to first token): their last
            # prompt token ends the prefill.
            self.next_token = self.generation.tokens[-1]
            self.next_prompt += 1
            return State.DECODING
        if self.next_prompt < len(self.generation.tokens):
            return State.PREFILLING
        return State.SAMPLING

    @property
    def busy(self) -> bool:
        return self.state is not State.FREE

    @property
    def prefilling(self) -> bool:
        return self.state is State.PREFILLING

    @property
    def prefilled(self) -> bool:
        """The whole prompt is in the batch and no token waits to be decoded: the row in flight
        samples the next token."""
        return self.state is State.SAMPLING

    def start(
        self, generation: LlamaGeneration, sampler: SamplerChain, timeout: float | None
    ) -> None:
        """Run `generation` here. Its KV must already be cut to the prompt's reusable prefix
        (what the sequence holds now is the prompt's first tokens)."""
        self.generation = generation
        self.sampler = sampler
        self.reused = len(self._cached)
        self.split_last = generation.request.sampling.seed is not None
        self.next_prompt = self.reused
        self.next_token = None
        self.generated = self._sent = 0
        self.deadline = time.monotonic() + timeout if timeout else None
        self._text = TextAssembler(generation.request.stop)
        self._logprobs = []
        self._move(self._prompt_state())

    def prefill_chunk(self, budget: int) -> list[int]:
        """The next prompt tokens to decode (at most `budget`; with `split_last` never the last
        one, which is then decoded next step with the generating sequences); they are cached from
        now on. A chunk that ends the prompt asks for its last token's logits (`prefilled`)."""
        assert self.generation is not None and self.state is State.PREFILLING
        end = min(
            self.next_prompt + budget, len(self.generation.tokens) - (1 if self.split_last else 0)
        )
        for image in self.generation.images:  # text only: an image is decoded in a step of its own
            if self.next_prompt <= image.start < end:
                end = image.start
        chunk = self.generation.tokens[self.next_prompt : end]
        self.next_prompt += len(chunk)
        self._cached += chunk
        self._move(self._prompt_state())
        return chunk

    def pending_image(self) -> PromptImage | None:
        """The image whose positions the prompt reaches next, if it is at one."""
        if self.generation is None or self.state is not State.AWAITING_IMAGE:
            return None
        return next(image for image in self.generation.images if image.start == self.next_prompt)

    def image_decoded(self, image: PromptImage) -> None:
        """The image's KV is in the sequence now."""
        assert self.generation is not None and self.state is State.AWAITING_IMAGE
        self._cached += self.generation.tokens[image.start : image.end]
        self.next_prompt = image.end
        self._move(self._prompt_state())

    def decode_token(self) -> int:
        """The sampled token to decode this step (its KV is cached from now on)."""
        assert self.next_token is not None
        token, self.next_token = self.next_token, None
        self._cached.append(token)
        self._move(State.SAMPLING)
        return token

    def accept(
        self,
        token: int,
        piece: bytes,
        end_of_turn: bool,
        logprob: TokenLogprob | None,
    ) -> bool:
        """Handle a sampled token; True when the sequence has finished (events pushed)."""
        assert self.generation is not None and self.state is State.SAMPLING
        if end_of_turn:
            return self._finish("stop")
        self.generated += 1
        if logprob is not None:
            self._logprobs.append(logprob)
        text = self._text.add(piece)
        if self._text.stopped:
            self._emit(text, dropping_held=True)
            return self._finish("stop")
        self._emit(text)
        if self.generated >= self.generation.max_new_tokens:
            return self._finish("length")
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return self._finish("length")
        self.next_token = token
        self._move(State.DECODING)
        return False

    def expired(self) -> bool:
        return (
            self.generation is not None
            and self.deadline is not None
            and time.monotonic() >= self.deadline
        )

    def expire(self) -> None:
        """The request ran past its time limit (`request_timeout`): end it as "length"."""
        self._finish("length")

    def fail(self, error: BaseException) -> None:
        """End the generation with `error` (raised to its consumer)."""
        assert self.generation is not None
        self.generation.push(error)
        self._release()

    def abort(self, error: BaseException) -> None:
        """llama.cpp failed on this sequence: its KV is not to be trusted. Forget it and end the
        generation (if any) with `error`."""
        self.forget()
        if self.generation is not None:
            self.fail(error)

    def cancel(self) -> None:
        """The consumer is gone: drop the generation without events."""
        self._release()

    def _emit(self, text: str, dropping_held: bool = False) -> None:
        assert self.generation is not None
        if text:
            self.generation.push(
                TextDelta(text, tuple(self._logprobs), self.generated - self._sent)
            )
            self._logprobs = []
            self._sent = self.generated
        elif dropping_held:
            self._logprobs = []  # the tokens of a stop string are not reported

    def _finish(self, reason: FinishReason) -> bool:
        assert self.generation is not None
        if not self._text.stopped:
            tail = self._text.finish()
            if self._text.stopped:
                reason = "stop"
            self._emit(tail, dropping_held=True)
        usage = Usage(self.generation.prompt_tokens, self.generated, self.reused)
        self.generation.push(Finished(reason, usage, stop_sequence=self._text.matched))
        self._release()
        return True

    def _release(self) -> None:
        assert self.generation is not None
        generation = self.generation
        if self.sampler is not None:
            self.sampler.free()
        self.generation = None
        self.sampler = None
        self.next_token = None
        self.deadline = None
        self.last_used = time.monotonic()
        self._move(State.FREE)
        # NOTE: the sequence is free before the consumer hears the end, so /health never reports
        # a finished request as active.
        generation.reservation.release()
        generation.push(DONE)
