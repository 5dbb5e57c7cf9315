"""One slot of the batch: a llama.cpp sequence id, the tokens its KV holds, and the job it runs.

Only the engine thread touches a slot. A job moves through the slot in two phases: prefill (its
prompt tokens, in chunks, the last one asking for logits) and decode (one sampled token per step).
Each sampled token is turned into text once (`TextAssembler`: UTF-8 safe, stop strings held back)
and pushed to the job's queue.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from server.engine.job import DONE, Job
from server.engine.sampling import SamplerChain
from server.engine.text import TextAssembler
from server.engine.types import Finished, FinishReason, TextDelta, TokenLogprob, Usage

if TYPE_CHECKING:
    from server.engine.vision import PromptImage


class Slot:
    """A sequence of the llama.cpp context (`seq_id`), free or running one job."""

    def __init__(self, seq_id: int) -> None:
        self.seq_id = seq_id
        self.cached: list[int] = []  # tokens whose KV this sequence holds, at positions 0..n-1
        self.last_used = 0.0
        self.job: Job | None = None
        self.sampler: SamplerChain | None = None
        self.next_prompt = 0  # index of the next prompt token to prefill
        self.next_token: int | None = None  # sampled, decoded in the next step
        self.generated = 0
        self.reused = 0  # prompt tokens whose KV came from the cache
        self.split_last = False  # the prompt's last token is decoded in a step of its own
        self.deadline: float | None = None
        self._text = TextAssembler(())
        self._logprobs: list[TokenLogprob] = []

    @property
    def busy(self) -> bool:
        return self.job is not None

    @property
    def prefilling(self) -> bool:
        return self.job is not None and self.next_prompt < len(self.job.tokens)

    def _hand_last_prompt_token_to_decode(self) -> None:
        # NOTE: a seeded request's last prompt token is decoded like a generated one, in a step
        # of its own, whether the rest came from the prefix cache or not: llama.cpp's numerics
        # depend on the batch a row is in, so this is what makes a repeated seeded request (cold,
        # then warm) give the same text. Other requests ask for no such promise and save the
        # step (a decode step of time to first token): their last prompt token ends the prefill.
        assert self.job is not None
        if self.split_last and self.next_prompt == len(self.job.tokens) - 1:
            self.next_token = self.job.tokens[-1]
            self.next_prompt += 1

    def start(self, job: Job, sampler: SamplerChain, reused: int, timeout: float | None) -> None:
        """Run `job` here; the first `reused` prompt tokens' KV is already in the sequence."""
        self.job = job
        self.sampler = sampler
        self.reused = reused
        self.split_last = job.request.sampling.seed is not None
        self.cached = job.tokens[:reused]
        self.next_prompt = reused
        self.next_token = None
        self.generated = 0
        self.deadline = time.monotonic() + timeout if timeout else None
        self._text = TextAssembler(job.request.stop)
        self._logprobs = []
        self._hand_last_prompt_token_to_decode()

    def prefill_chunk(self, budget: int) -> list[int]:
        """The next prompt tokens to decode (at most `budget`; with `split_last` never the last
        one, which is then decoded next step with the generating sequences); they are cached from
        now on. A chunk that ends the prompt asks for its last token's logits (`prefilled`)."""
        assert self.job is not None
        end = min(self.next_prompt + budget, len(self.job.tokens) - (1 if self.split_last else 0))
        for image in self.job.images:  # text only: an image is decoded in a step of its own
            if self.next_prompt <= image.start < end:
                end = image.start
        chunk = self.job.tokens[self.next_prompt : end]
        self.next_prompt += len(chunk)
        self.cached += chunk
        self._hand_last_prompt_token_to_decode()
        return chunk

    def pending_image(self) -> PromptImage | None:
        """The image whose positions the prompt reaches next, if it is at one."""
        if self.job is None:
            return None
        for image in self.job.images:
            if image.start == self.next_prompt:
                return image
        return None

    def image_decoded(self, image: PromptImage) -> None:
        """The image's KV is in the sequence now."""
        assert self.job is not None
        self.cached += self.job.tokens[image.start : image.end]
        self.next_prompt = image.end
        self._hand_last_prompt_token_to_decode()

    @property
    def prefilled(self) -> bool:
        """The whole prompt is in the batch and no token waits to be decoded: the next row's
        logits sample the first token."""
        return (
            self.job is not None
            and self.next_prompt == len(self.job.tokens)
            and self.next_token is None
        )

    def decode_token(self) -> int:
        """The sampled token to decode this step (its KV is cached from now on)."""
        assert self.next_token is not None
        token, self.next_token = self.next_token, None
        self.cached.append(token)
        return token

    def accept(
        self,
        token: int,
        piece: bytes,
        end_of_turn: bool,
        logprob: TokenLogprob | None,
    ) -> bool:
        """Handle a sampled token; True when the sequence has finished (events pushed)."""
        assert self.job is not None
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
        if self.generated >= self.job.max_new_tokens:
            return self._finish("length")
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return self._finish("length")
        self.next_token = token
        return False

    def expired(self) -> bool:
        return (
            self.job is not None and self.deadline is not None and time.monotonic() >= self.deadline
        )

    def expire(self) -> None:
        """The request ran past its time limit (`request_timeout`): end it as "length"."""
        self._finish("length")

    def fail(self, error: BaseException) -> None:
        """End the job with `error` (raised to its consumer)."""
        assert self.job is not None
        self.job.push(error)
        self._release()

    def cancel(self) -> None:
        """The consumer is gone: drop the job without events."""
        self._release()

    def _emit(self, text: str, dropping_held: bool = False) -> None:
        assert self.job is not None
        if text:
            self.job.push(TextDelta(text, tuple(self._logprobs)))
            self._logprobs = []
        elif dropping_held:
            self._logprobs = []  # the tokens of a stop string are not reported

    def _finish(self, reason: FinishReason) -> bool:
        assert self.job is not None
        if not self._text.stopped:
            tail = self._text.finish()
            if self._text.stopped:
                reason = "stop"
            self._emit(tail, dropping_held=True)
        usage = Usage(self.job.prompt_tokens, self.generated, self.reused)
        self.job.push(Finished(reason, usage, stop_sequence=self._text.matched))
        self._release()
        return True

    def _release(self) -> None:
        assert self.job is not None
        job = self.job
        if self.sampler is not None:
            self.sampler.free()
        self.job = None
        self.sampler = None
        self.next_token = None
        self.deadline = None
        self.last_used = time.monotonic()
        # NOTE: the slot is free before the consumer hears the end, so /health never reports a
        # finished request as active.
        job.reservation.release()
        job.push(DONE)
