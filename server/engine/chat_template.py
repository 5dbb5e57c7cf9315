"""Chat messages -> Gemma 3 prompt text, rendered only in jinja2's immutable sandbox.

Gemma 3 knows two roles, `user` and `model`, which must alternate, and no system role: Google's
template folds the system prompt into the first user turn. OpenAI clients send more shapes than
that (several system messages, a `developer` message, two user messages in a row, a greeting from
the assistant first), so `normalize` first reshapes any conversation into what the template
expects, and both the pinned template and a model's own receive the same clean input.

A template that comes from a model file is untrusted (CVE-2024-34359): it is rendered in
`ImmutableSandboxedEnvironment`, and one that fails a trial render is refused at load time.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import NoReturn

from jinja2.exceptions import SecurityError, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from server.engine.contract import ChatMessage, Refused, RequestRejected

BOS_TOKEN = "<bos>"
END_OF_TURN = "<end_of_turn>"
START_OF_TURN = "<start_of_turn>"


# Message contents are rendered as these placeholders, then put back as untrusted segments.
_PLACEHOLDER = re.compile("\ue000(\\d+)\ue001")


@dataclass(frozen=True)
class Segment:
    """A piece of the prompt. `trusted` text comes from the template, so its special tokens
    (<start_of_turn>, ...) are real; untrusted text is a message's content, tokenised as plain
    text so that a user cannot forge turn markers."""

    text: str
    trusted: bool


class TemplateRejected(ValueError):
    """A chat template that cannot be used (syntax error, sandbox escape, no output)."""


def pinned_template_source() -> str:
    return resources.files("server.engine").joinpath("templates/gemma3.jinja").read_text("utf-8")


def normalize(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    """Reshape any OpenAI conversation into: [system?] then alternating user/assistant turns.

    - `developer` is OpenAI's newer name for `system`.
    - System messages before the first turn become the one system prompt; a system message later
      in the conversation is an instruction to the model, so it joins the user turn that follows.
    - Consecutive messages of the same role are joined with a blank line into one turn.
    - A conversation must open with a user turn (Google's template enforces it): one that opens
      with the assistant (a greeting) gets a user turn before it holding the system prompt, or
      nothing; a system prompt alone becomes the user turn.
    - Contents are trimmed, as Gemma's template does.
    """
    system_parts: list[str] = []
    turns: list[dict[str, str]] = []
    for message in messages:
        role = "system" if message.role == "developer" else message.role
        content = message.content.strip()
        if role == "system" and not turns:
            system_parts.append(content)
            continue
        if role == "system":
            role = "user"
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += "\n\n" + content
        else:
            turns.append({"role": role, "content": content})
    system = "\n\n".join(system_parts)
    if turns and turns[0]["role"] == "user":
        return [{"role": "system", "content": system}, *turns] if system_parts else turns
    return [{"role": "user", "content": system}, *turns]


def _raise_exception(message: str) -> NoReturn:
    raise RequestRejected(message, Refused.CONVERSATION)


class ChatTemplate:
    """A compiled chat template; `render` is safe to call from any thread."""

    def __init__(self, source: str, *, origin: str) -> None:
        self.origin = origin
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_exception
        try:
            self._template = env.from_string(source)
        except TemplateError as exc:
            raise TemplateRejected(f"the {origin} chat template does not compile: {exc}") from exc
        self._check()

    @classmethod
    def pinned(cls) -> ChatTemplate:
        return cls(pinned_template_source(), origin="pinned Gemma 3")

    def _check(self) -> None:
        """Trial-render a small conversation so a broken or hostile template fails at load."""
        trial = [
            ChatMessage("system", "Be brief."),
            ChatMessage("user", "Hi"),
            ChatMessage("assistant", "Hello."),
            ChatMessage("user", "Bye"),
        ]
        try:
            text = self.render(trial)
        except SecurityError as exc:
            raise TemplateRejected(
                f"the {self.origin} chat template tried to leave the sandbox: {exc}"
            ) from exc
        except (TemplateError, RequestRejected, TypeError, ValueError) as exc:
            raise TemplateRejected(f"the {self.origin} chat template fails: {exc}") from exc
        if "Bye" not in text:
            raise TemplateRejected(f"the {self.origin} chat template drops the conversation")

    def render(self, messages: Sequence[ChatMessage]) -> str:
        """The prompt text, BOS included, ending with an open model turn."""
        return "".join(segment.text for segment in self.render_segments(messages))

    def render_segments(self, messages: Sequence[ChatMessage]) -> list[Segment]:
        """The prompt as template text and message contents, told apart for tokenisation."""
        turns = normalize(messages)
        masked = [{**turn, "content": f"\ue000{i}\ue001"} for i, turn in enumerate(turns)]
        text = self._render(masked)
        segments = []
        position = 0
        for match in _PLACEHOLDER.finditer(text):
            if match.start() > position:
                segments.append(Segment(text[position : match.start()], trusted=True))
            index = int(match.group(1))
            if index < len(turns) and turns[index]["content"]:
                segments.append(Segment(turns[index]["content"], trusted=False))
            position = match.end()
        if position < len(text):
            segments.append(Segment(text[position:], trusted=True))
        return segments

    def _render(self, turns: list[dict[str, str]]) -> str:
        try:
            return self._template.render(
                messages=turns,
                bos_token=BOS_TOKEN,
                eos_token=END_OF_TURN,
                add_generation_prompt=True,
            )
        except SecurityError:
            raise
        except TemplateError as exc:
            raise RequestRejected(
                f"the chat template could not render these messages: {exc}",
                Refused.CONVERSATION,
            ) from exc
