"""Server-sent events for token streams: sse-starlette's response (client-disconnect detection,
keep-alive pings, shutdown) without two costs it adds to every event, which a token stream pays
once a token (measured with bench/step_cost.py: the event loop's CPU per streamed token).

- Encoding: sse-starlette's general encoder builds a `ServerSentEvent` and splits its data into
  lines with a regex. A chat, completions or responses payload is one line of JSON, so it is
  framed here directly; anything else (named events, data with line breaks) goes through
  sse-starlette's encoder unchanged.
- Sending: sse-starlette opens an anyio cancel scope around every send to apply its per-send
  timeout, also when no timeout is set (none is here: a slow reader is the client's choice, and
  a gone one is noticed by the disconnect listener).
"""

from __future__ import annotations

from sse_starlette import EventSourceResponse
from sse_starlette.event import ensure_bytes
from starlette.types import Message, Send

from server.api.serving_types import ServerEvent

# Lines end with "\n" alone, as OpenAI's and Anthropic's streams do.
SEPARATOR = "\n"


def sse_frame(payload: ServerEvent) -> bytes:
    """One event as its bytes on the wire: `data: <payload>` and a blank line."""
    if isinstance(payload, str) and "\n" not in payload and "\r" not in payload:
        return b"data: " + payload.encode() + b"\n\n"
    return ensure_bytes(payload, SEPARATOR)


class EventStream(EventSourceResponse):
    """An `EventSourceResponse` over events already framed by `sse_frame`."""

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        # NOTE: overrides a private method of sse-starlette (3.x); tests/unit/test_sse.py fails
        # if it is ever renamed, rather than this silently costing the scope again.
        if self.send_timeout is None:
            await send(message)
            return
        await super()._send_with_timeout(send, message)
