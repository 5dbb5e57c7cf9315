"""OpenAI's Responses API, `POST /v1/responses`, stateless: pure converters (request and answer).

`to_response_generations` maps the request onto the engine's chat path (`instructions` becomes a
system message before the input) or refuses a field by name. Nothing is stored: `store` is
accepted and answered with `store: false`, and `previous_response_id` is a 400. A response cut
by `max_output_tokens` is `status: "incomplete"` with `incomplete_details.reason:
"max_output_tokens"`, and its stream ends with `response.incomplete` instead of
`response.completed`, as OpenAI's does.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, get_args

from pydantic import BaseModel

from server.api import validators
from server.api.error_shape import APIError
from server.api.images import ImageCollector, clean_text
from server.api.refusals import RefusalFields
from server.api.responses_protocol import (
    IncompleteDetails,
    InputItem,
    InputTokensDetails,
    OutputMessage,
    OutputText,
    ResponseError,
    ResponseObject,
    ResponseRequest,
    ResponseUsage,
)
from server.api.serving_types import GenerationRequests, ServerEvent
from server.api.validators import invalid, unsupported
from server.engine.contract import (
    ChatMessage,
    Event,
    Finished,
    GenerationRequest,
    JsonFormat,
    Role,
    SamplingParams,
    TextDelta,
)

_ROLES: tuple[Role, ...] = get_args(Role)
_REFUSED_PARTS = {"input_file": "files", "input_audio": "audio"}


def _refuse_unsupported(request: ResponseRequest) -> None:
    if request.previous_response_id is not None:
        raise unsupported(
            "previous_response_id",
            "gemma-serve stores no responses; send the whole conversation as input instead.",
        )
    if request.conversation is not None:
        raise unsupported("conversation", "gemma-serve keeps no conversations.")
    if request.background:
        raise unsupported("background", "Background responses are not supported.")
    if request.tools:
        raise unsupported("tools", "Tools are not supported by the Responses endpoint yet.")
    if request.tool_choice not in (None, "none", "auto"):
        raise unsupported("tool_choice", "Tools are not supported by the Responses endpoint yet.")
    if request.reasoning is not None and request.reasoning.effort not in (None, "none"):
        raise unsupported("reasoning.effort", "Gemma 3 is not a reasoning model.")
    if request.truncation == "auto":
        raise unsupported("truncation", "Only truncation 'disabled' is supported.")
    if request.include:
        raise unsupported("include", f"include {request.include[0]!r} is not supported.")
    if request.top_logprobs:
        raise unsupported("top_logprobs", "Returning log probabilities is not supported yet.")
    if request.prompt is not None:
        raise unsupported("prompt", "Stored prompt templates are not supported.")
    if request.text and request.text.verbosity not in (None, "medium"):
        raise unsupported("text.verbosity", "Only verbosity 'medium' is supported.")
    for name, what in (
        ("background_options", "Background responses are not supported."),
        ("context_management", "gemma-serve does not compact or trim the context."),
        ("moderation", "gemma-serve runs no moderation model."),
        ("image", "This model does not generate images."),
        ("access_programs", "gemma-serve has no access programs."),
    ):
        if getattr(request, name) is not None:
            raise unsupported(name, what)
    if request.stream_options is not None and not request.stream:
        raise invalid("stream_options", "stream_options is only allowed when stream is true.")


def _item_message(item: InputItem, index: int, images: ImageCollector) -> ChatMessage:
    param = f"input[{index}]"
    if item.type not in (None, "message"):
        raise unsupported(f"{param}.type", f"Input items of type {item.type!r} are not supported.")
    role = next((role for role in _ROLES if role == item.role), None)
    if role is None:
        raise invalid(
            f"{param}.role", f"{param}.role must be one of {', '.join(_ROLES)} (got {item.role!r})."
        )
    if item.content is None:
        raise APIError(
            400,
            f"Missing required parameter: '{param}.content'.",
            param=f"{param}.content",
            code="missing_required_parameter",
        )
    if isinstance(item.content, str):
        return ChatMessage(role, clean_text(validators.text(item.content, f"{param}.content")))
    texts = []
    for part_index, part in enumerate(item.content):
        part_param = f"{param}.content[{part_index}]"
        if part.type == "input_image":
            texts.append(images.add_input_image(part.image_url, part.detail, part_param, role))
            continue
        if part.type in _REFUSED_PARTS:
            raise APIError(
                400,
                f"This model does not accept {_REFUSED_PARTS[part.type]}; send text parts only.",
                param=part_param,
                code="unsupported_content",
            )
        text = part.refusal if part.type == "refusal" else part.text
        if part.type not in ("input_text", "output_text", "refusal") or text is None:
            raise invalid(
                part_param, f"{part_param} must be an input_text or output_text part with its text."
            )
        texts.append(clean_text(validators.text(text, f"{part_param}.text")))
    return ChatMessage(role, "\n".join(texts))


def _messages(request: ResponseRequest, images: ImageCollector) -> tuple[ChatMessage, ...]:
    messages = []
    if request.instructions:
        instructions = validators.text(request.instructions, "instructions")
        messages.append(ChatMessage("system", clean_text(instructions)))
    if isinstance(request.input, str):
        messages.append(ChatMessage("user", clean_text(validators.text(request.input, "input"))))
    else:
        if not request.input:
            raise invalid("input", "input must not be empty.")
        messages += [_item_message(item, index, images) for index, item in enumerate(request.input)]
    return tuple(messages)


def _json_format(request: ResponseRequest) -> JsonFormat | None:
    text_format = request.text.format if request.text else None
    if text_format is None or text_format.type == "text":
        return None
    if text_format.type == "json_object":
        return JsonFormat()
    if text_format.schema_ is None:
        raise APIError(
            400,
            "text.format of type 'json_schema' needs a schema.",
            param="text.format.schema",
            code="missing_required_parameter",
        )
    return JsonFormat(schema=text_format.schema_)


def _sampling(request: ResponseRequest) -> SamplingParams:
    """What the engine samples with; the response reports the same values."""
    return SamplingParams.given(
        temperature=request.temperature, top_p=request.top_p, seed=request.seed
    )


# The engine's refusals of a Responses request: its conversation is `input`, JSON output is asked
# for by `text.format` (Responses has no `response_format`).
_REFUSAL_FIELDS = RefusalFields(prompt="input", output_format="text.format")


def to_generation_request(
    request: ResponseRequest, images: ImageCollector | None = None
) -> GenerationRequest:
    """Map a Responses request onto the engine, or raise `APIError` naming the field. `images`
    decodes its pictures (see `chat.to_chat_plan`)."""
    _refuse_unsupported(request)
    images = ImageCollector() if images is None else images
    return GenerationRequest(
        messages=_messages(request, images),
        images=tuple(images.images),
        sampling=_sampling(request),
        max_tokens=request.max_output_tokens,
        json_format=_json_format(request),
    )


def to_response_generations(
    request: ResponseRequest, images: ImageCollector | None = None
) -> GenerationRequests:
    """The one sequence a Responses request asks for."""
    return GenerationRequests(
        (to_generation_request(request, images),), "input", (_REFUSAL_FIELDS,)
    )


@dataclass
class ResponseAnswer:
    """The answer to one Responses request: the whole `response`, or its stream of events.
    Every snapshot of the response shares these ids."""

    ends_with_done = False  # OpenAI's Responses streams end with their last event

    response_id: str
    message_id: str
    created_at: int
    request: ResponseRequest
    _sequence: Iterator[int] = field(default_factory=itertools.count, init=False)
    _parts: list[str] = field(default_factory=list, init=False)  # the text streamed so far

    def response(
        self,
        status: str,
        output: list[OutputMessage] | None = None,
        finished: Finished | None = None,
        error: ResponseError | None = None,
    ) -> ResponseObject:
        request = self.request
        sampling = _sampling(request)
        text_format = request.text.format if request.text else None
        incomplete = (
            IncompleteDetails(reason="max_output_tokens") if status == "incomplete" else None
        )
        usage = None
        if finished is not None:
            usage = ResponseUsage(
                input_tokens=finished.usage.prompt_tokens,
                input_tokens_details=InputTokensDetails(cached_tokens=finished.usage.cached_tokens),
                output_tokens=finished.usage.completion_tokens,
                total_tokens=finished.usage.total_tokens,
            )
        return ResponseObject.model_validate(
            {
                "id": self.response_id,
                "created_at": self.created_at,
                "status": status,
                "error": error,
                "incomplete_details": incomplete,
                "instructions": request.instructions,
                "max_output_tokens": request.max_output_tokens,
                "model": request.model,
                "output": output or [],
                "parallel_tool_calls": request.parallel_tool_calls is not False,
                # The values used: Gemma 3's defaults where the request left them unset.
                "temperature": sampling.temperature,
                "top_p": sampling.top_p,
                "text": {
                    "format": (
                        text_format.model_dump(by_alias=True, exclude_none=True)
                        if text_format
                        else {"type": "text"}
                    )
                },
                "tool_choice": "none" if request.tool_choice == "none" else "auto",
                "usage": usage,
                "user": request.user,
                "metadata": request.metadata or {},
            }
        )

    def message(self, text: str, status: str) -> OutputMessage:
        content = [OutputText(text=text)] if status != "in_progress" else []
        return OutputMessage.model_validate(
            {"id": self.message_id, "status": status, "content": content}
        )

    async def whole(self, events: AsyncIterator[tuple[int, Event]]) -> ResponseObject:
        """Collect the generation into one `response` object."""
        parts: list[str] = []
        async for _, event in events:
            if isinstance(event, TextDelta):
                parts.append(event.text)
                continue
            status = _final_status(event)
            return self.response(status, [self.message("".join(parts), status)], event)
        raise AssertionError("interleave ends every generation with Finished")

    def _event(self, type_: str, **fields: Any) -> dict[str, str]:
        payload: dict[str, Any] = {"type": type_, "sequence_number": next(self._sequence)}
        for name, value in fields.items():
            payload[name] = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
        return {"event": type_, "data": json.dumps(payload, ensure_ascii=False)}

    async def stream(self, events: AsyncIterator[tuple[int, Event]]) -> AsyncIterator[ServerEvent]:
        """The Responses stream: `{"event": type, "data": json}` for SSE, each payload with its
        `type` and a `sequence_number` counting from 0. The order is OpenAI's: created,
        in_progress, output_item.added, content_part.added, output_text.delta...,
        output_text.done, content_part.done, output_item.done, then completed (or incomplete).
        No `[DONE]`: OpenAI's Responses streams end with their last event."""
        where = {"item_id": self.message_id, "output_index": 0, "content_index": 0}
        yield self._event("response.created", response=self.response("in_progress"))
        yield self._event("response.in_progress", response=self.response("in_progress"))
        item = self.message("", "in_progress")
        yield self._event("response.output_item.added", output_index=0, item=item)
        yield self._event("response.content_part.added", **where, part=OutputText(text=""))
        async for _, event in events:
            if isinstance(event, TextDelta):
                self._parts.append(event.text)
                yield self._event(
                    "response.output_text.delta", **where, delta=event.text, logprobs=[]
                )
                continue
            text = "".join(self._parts)
            status = _final_status(event)
            yield self._event("response.output_text.done", **where, text=text, logprobs=[])
            yield self._event("response.content_part.done", **where, part=OutputText(text=text))
            message = self.message(text, status)
            yield self._event("response.output_item.done", output_index=0, item=message)
            yield self._event(
                f"response.{status}", response=self.response(status, [message], event)
            )

    def failed(self, message: str, code: str) -> list[ServerEvent]:
        """An `error` event, then `response.failed` with the text generated so far."""
        # OpenAI's Responses API names an unexpected failure `server_error`.
        code = "server_error" if code == "internal_error" else code
        error = ResponseError(code="server_error", message=message)
        partial = [self.message("".join(self._parts), "incomplete")]
        return [
            self._event("error", code=code, message=message, param=None),
            self._event("response.failed", response=self.response("failed", partial, error=error)),
        ]


def _final_status(finished: Finished) -> str:
    return "incomplete" if finished.reason == "length" else "completed"
