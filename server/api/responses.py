"""OpenAI's Responses API, `POST /v1/responses`, stateless: pure converters and a thin router.

`to_generation_request` maps the request onto the engine's chat path (`instructions` becomes a
system message before the input) or refuses a field by name. Nothing is stored: `store` is
accepted and answered with `store: false`, and `previous_response_id` is a 400. A response cut
by `max_output_tokens` is `status: "incomplete"` with `incomplete_details.reason:
"max_output_tokens"`, and its stream ends with `response.incomplete` instead of
`response.completed`, as OpenAI's does.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel
from sse_starlette import EventSourceResponse

from server.api.deps import EngineDep, RuntimeDep, SettingsDep
from server.api.errors import APIError, stream_failure
from server.api.images import ImageCollector, clean_text
from server.api.remote_images import inline_remote_images, policy_of
from server.api.responses_protocol import (
    IncompleteDetails,
    InputItem,
    OutputMessage,
    OutputText,
    ResponseError,
    ResponseObject,
    ResponseRequest,
    ResponseUsage,
)
from server.api.routes import _PING_SECONDS, _ClientGone, _unless_disconnected
from server.engine.types import (
    ChatMessage,
    Event,
    Finished,
    GenerationRequest,
    JsonFormat,
    RequestRejected,
    Role,
    SamplingParams,
    TextDelta,
)

log = logging.getLogger("gemma_serve.api")

router = APIRouter()

_ROLES: dict[str, Role] = {
    "user": "user",
    "system": "system",
    "developer": "developer",
    "assistant": "assistant",
}
_REFUSED_PARTS = {"input_file": "files", "input_audio": "audio"}


def _unsupported(param: str, message: str) -> APIError:
    return APIError(400, message, param=param, code="unsupported_parameter")


def _refuse_unsupported(request: ResponseRequest) -> None:
    if request.previous_response_id is not None:
        raise _unsupported(
            "previous_response_id",
            "gemma-serve stores no responses; send the whole conversation as input instead.",
        )
    if request.conversation is not None:
        raise _unsupported("conversation", "gemma-serve keeps no conversations.")
    if request.background:
        raise _unsupported("background", "Background responses are not supported.")
    if request.tools:
        raise _unsupported("tools", "Tools are not supported by the Responses endpoint yet.")
    if request.tool_choice not in (None, "none", "auto"):
        raise _unsupported("tool_choice", "Tools are not supported by the Responses endpoint yet.")
    if request.reasoning is not None and request.reasoning.effort not in (None, "none"):
        raise _unsupported("reasoning.effort", "Gemma 3 is not a reasoning model.")
    if request.truncation == "auto":
        raise _unsupported("truncation", "Only truncation 'disabled' is supported.")
    if request.include:
        raise _unsupported("include", f"include {request.include[0]!r} is not supported.")
    if request.top_logprobs:
        raise _unsupported("top_logprobs", "Returning log probabilities is not supported yet.")
    if request.prompt is not None:
        raise _unsupported("prompt", "Stored prompt templates are not supported.")
    if request.text and request.text.verbosity not in (None, "medium"):
        raise _unsupported("text.verbosity", "Only verbosity 'medium' is supported.")


def _text(text: str, param: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # JSON allows lone surrogates ("\ud800"); UTF-8 does not
        raise APIError(
            400,
            "The text is not valid Unicode (a lone surrogate).",
            param=param,
            code="invalid_value",
        ) from exc
    return text


def _item_message(item: InputItem, index: int, images: ImageCollector) -> ChatMessage:
    param = f"input[{index}]"
    if item.type not in (None, "message"):
        raise _unsupported(f"{param}.type", f"Input items of type {item.type!r} are not supported.")
    role = _ROLES.get(item.role or "")
    if role is None:
        raise APIError(
            400,
            f"{param}.role must be one of {', '.join(_ROLES)} (got {item.role!r}).",
            param=f"{param}.role",
            code="invalid_value",
        )
    if item.content is None:
        raise APIError(
            400,
            f"Missing required parameter: '{param}.content'.",
            param=f"{param}.content",
            code="missing_required_parameter",
        )
    if isinstance(item.content, str):
        return ChatMessage(role, clean_text(_text(item.content, f"{param}.content")))
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
            raise APIError(
                400,
                f"{part_param} must be an input_text or output_text part with its text.",
                param=part_param,
                code="invalid_value",
            )
        texts.append(clean_text(_text(text, f"{part_param}.text")))
    return ChatMessage(role, "\n".join(texts))


def _messages(request: ResponseRequest, images: ImageCollector) -> tuple[ChatMessage, ...]:
    messages = []
    if request.instructions:
        text = clean_text(_text(request.instructions, "instructions"))
        messages.append(ChatMessage("system", text))
    if isinstance(request.input, str):
        messages.append(ChatMessage("user", clean_text(_text(request.input, "input"))))
    else:
        if not request.input:
            raise APIError(400, "input must not be empty.", param="input", code="invalid_value")
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


def to_generation_request(request: ResponseRequest) -> GenerationRequest:
    """Map a Responses request onto the engine, or raise `APIError` naming the field."""
    _refuse_unsupported(request)
    images = ImageCollector()
    return GenerationRequest(
        messages=_messages(request, images),
        images=tuple(images.images),
        sampling=_sampling(request),
        max_tokens=request.max_output_tokens,
        json_format=_json_format(request),
    )


@dataclass(frozen=True)
class ResponseFrame:
    """What the whole response and every snapshot of it share."""

    response_id: str
    message_id: str
    created_at: int
    request: ResponseRequest

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


def _final_status(finished: Finished) -> str:
    return "incomplete" if finished.reason == "length" else "completed"


async def to_response(events: AsyncGenerator[Event, None], frame: ResponseFrame) -> ResponseObject:
    """Collect a whole generation into one `response` object."""
    parts: list[str] = []
    finished: Finished | None = None
    async with aclosing(events):
        async for event in events:
            if isinstance(event, TextDelta):
                parts.append(event.text)
            else:
                finished = event
    if finished is None:
        raise RuntimeError("the engine ended a generation without finishing it")
    status = _final_status(finished)
    output = [frame.message("".join(parts), status)]
    return frame.response(status, output, finished)


async def to_response_events(
    events: AsyncGenerator[Event, None], frame: ResponseFrame
) -> AsyncIterator[dict[str, str]]:
    """Engine events -> the Responses stream: `{"event": type, "data": json}` for SSE, each
    payload with its `type` and a `sequence_number` counting from 0. The order is OpenAI's:
    created, in_progress, output_item.added, content_part.added, output_text.delta...,
    output_text.done, content_part.done, output_item.done, then completed (or incomplete).
    An error after the start is an `error` event followed by `response.failed`. No `[DONE]`:
    OpenAI's Responses streams end with their last event."""
    sequence = 0

    def event(type_: str, **fields: Any) -> dict[str, str]:
        nonlocal sequence
        payload = {"type": type_, "sequence_number": sequence}
        for name, value in fields.items():
            payload[name] = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
        sequence += 1
        return {"event": type_, "data": json.dumps(payload, ensure_ascii=False)}

    where = {"item_id": frame.message_id, "output_index": 0, "content_index": 0}
    parts: list[str] = []
    yield event("response.created", response=frame.response("in_progress"))
    yield event("response.in_progress", response=frame.response("in_progress"))
    try:
        item = frame.message("", "in_progress")
        yield event("response.output_item.added", output_index=0, item=item)
        yield event(
            "response.content_part.added",
            item_id=frame.message_id,
            output_index=0,
            content_index=0,
            part=OutputText(text=""),
        )
        finished: Finished | None = None
        async with aclosing(events):
            async for engine_event in events:
                if isinstance(engine_event, TextDelta):
                    parts.append(engine_event.text)
                    yield event(
                        "response.output_text.delta", **where, delta=engine_event.text, logprobs=[]
                    )
                else:
                    finished = engine_event
        if finished is None:
            raise RuntimeError("the engine ended a generation without finishing it")
        text = "".join(parts)
        status = _final_status(finished)
        yield event("response.output_text.done", **where, text=text, logprobs=[])
        yield event("response.content_part.done", **where, part=OutputText(text=text))
        message = frame.message(text, status)
        yield event("response.output_item.done", output_index=0, item=message)
        final = frame.response(status, [message], finished)
        yield event(f"response.{status}", response=final)
    except Exception as exc:
        message_text, code = stream_failure(exc)
        # OpenAI's Responses API names an unexpected failure `server_error`.
        code = "server_error" if code == "internal_error" else code
        yield event("error", code=code, message=message_text, param=None)
        error = ResponseError(code="server_error", message=message_text)
        partial = [frame.message("".join(parts), "incomplete")]
        yield event("response.failed", response=frame.response("failed", partial, error=error))


@router.post("/v1/responses", response_model=ResponseObject)
async def create_response(
    body: ResponseRequest,
    request: Request,
    runtime: RuntimeDep,
    engine: EngineDep,
    settings: SettingsDep,
) -> Response | ResponseObject:
    runtime.check_model(body.model)
    await inline_remote_images(body, policy_of(settings))
    try:
        prepared = await engine.prepare(to_generation_request(body))
    except RequestRejected as exc:
        param = "input" if exc.param == "messages" else exc.param
        raise APIError(400, exc.message, param=param, code=exc.code) from exc
    frame = ResponseFrame(
        response_id=f"resp_{uuid.uuid4().hex}",
        message_id=f"msg_{uuid.uuid4().hex}",
        created_at=int(time.time()),
        request=body,
    )
    if body.stream:
        events = to_response_events(prepared.events(), frame)
        return EventSourceResponse(events, sep="\n", ping=_PING_SECONDS)
    try:
        return await _unless_disconnected(request, to_response(prepared.events(), frame))
    except _ClientGone:
        return Response(status_code=499)  # nobody reads it; nginx's "client closed request"
