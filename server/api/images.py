"""Image content parts -> validated RGB pixels for the engine (pure: no network, no llama_cpp).

A client's picture arrives as a `data:` URL (chat `image_url`, Responses `input_image`), or as
the bytes `remote_images.py` fetched for an http(s) URL. It is decoded here with Pillow, which
checks what llama.cpp would not: that the bytes are an image of a format OpenAI accepts (PNG,
JPEG, WebP, still GIF), its EXIF orientation (phones store photos sideways and say so in EXIF).
The engine gets plain RGB bytes with their size and a content hash (the prefix cache recognises
an image it has seen by it).

Untrusted bytes never cost the server more than the budget (`ImageLimits`): the size a picture
would decode to is read from its header (`Image.open` decodes nothing) and checked before any
pixel is, at most two pictures decode at once, and the memory is handed back to the system
afterwards. Every refusal, whatever Pillow raised, is a 400 naming the content part
(`messages[0].content[1]`).
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import ctypes.util
import functools
import hashlib
import io
import re
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from server.api.error_shape import APIError
from server.engine import image_marker
from server.engine.contract import ImageInput
from server.settings import Settings

# Formats OpenAI's vision API accepts.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
# The projector resizes every image to its own input size (896 x 896 for Gemma 3): larger
# pictures are scaled down here first, so a 48 MP photo does not travel as 144 MB of RGB.
MAX_SIDE = 2048
MAX_IMAGES_PER_REQUEST = 8
# NOTE: process-wide, because memory is: with at most this many pictures decoding at once, the
# peak is bounded by this many budgets, however many requests send pictures together.
_DECODE_SLOTS = threading.BoundedSemaphore(2)
# Pictures decoded at more pixels than this hand their freed memory back to the system.
_TRIM_ABOVE_PIXELS = 1 << 20

# Client text with the image marker's characters replaced: it can never claim an image's place.
clean_text = image_marker.strip

_DATA_URL = re.compile(r"^data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*?);base64,", re.I)


@dataclass(frozen=True)
class ImageLimits:
    """What a request's pictures may cost: decoded pixels (`--image-max-pixels`: width x height
    as decoded, after a JPEG's reduced-scale decode) and the longest side (`--image-max-side`).
    `accepted`: the model takes images (a projector is loaded); if not, an image part is refused
    before anything is fetched or decoded."""

    max_pixels: int = 4096 * 4096
    max_side: int = 8192
    accepted: bool = True


def image_limits(settings: Settings, accepted: bool) -> ImageLimits:
    return ImageLimits(settings.image_max_pixels, settings.image_max_side, accepted)


def _bad(param: str, message: str, code: str = "invalid_image") -> APIError:
    return APIError(400, message, param=param, code=code)


def is_remote(url: object) -> bool:
    """An http(s) URL (fetched only with --image-urls, by `remote_images`)."""
    return isinstance(url, str) and url[:8].lower().startswith(("http://", "https://"))


def check_detail(detail: Any, param: str) -> None:
    """`detail` ("auto", "low", "high") is accepted and changes nothing: a Gemma 3 projector
    sees every image at its one resolution."""
    if detail not in (None, "auto", "low", "high"):
        raise _bad(
            param, f"detail must be 'auto', 'low' or 'high' (got {detail!r}).", "invalid_value"
        )


def check_place(role: str | None, index: int, param: str, limits: ImageLimits) -> None:
    """The rules an image part meets before its bytes are fetched or decoded: the model takes
    images, it is in a user message, and it is at most the request's `MAX_IMAGES_PER_REQUEST`th
    (`index` counts from 0)."""
    if not limits.accepted:
        raise _bad(
            param,
            "This model does not take images (it is served without a vision projector); "
            "send text only.",
            "image_input_not_supported",
        )
    if role != "user":
        raise _bad(param, "Images are accepted in user messages only.", "invalid_value")
    if index >= MAX_IMAGES_PER_REQUEST:
        raise _bad(
            param,
            f"Too many images: at most {MAX_IMAGES_PER_REQUEST} per request.",
            "too_many_images",
        )


def image_url_of(part_value: Any, param: str) -> str:
    """The URL of a chat `image_url` value ({"url": ..., "detail": ...} or a bare string)."""
    if isinstance(part_value, str):
        return part_value
    if isinstance(part_value, dict) and isinstance(part_value.get("url"), str):
        check_detail(part_value.get("detail"), param)
        return str(part_value["url"])
    raise _bad(param, "An image_url part needs image_url.url (a data: URL).", "invalid_value")


def image_from_url(url: str, param: str, limits: ImageLimits | None = None) -> ImageInput:
    """A `data:` URL -> the image, or a 400 naming `param`."""
    if is_remote(url):
        raise _bad(
            param,
            "This server does not fetch image URLs (a server that fetches any URL it is sent "
            "is a way into the network behind it); send the image inline as a "
            "data:image/...;base64,... URL.",
            "unsupported_image_url",
        )
    match = _DATA_URL.match(url)
    if match is None:
        raise _bad(
            param, "The image must be a data: URL with base64 content (data:image/png;base64,...)."
        )
    try:
        data = base64.b64decode(url[match.end() :], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _bad(param, "The image data is not valid base64.") from exc
    return decode_image(data, param, limits)


def decode_image(data: bytes, param: str, limits: ImageLimits | None = None) -> ImageInput:
    """Image file bytes -> RGB pixels, upright, at most MAX_SIDE on a side; a 400 naming `param`
    for anything that is not a picture this server will decode, whatever Pillow raised."""
    limits = limits or ImageLimits()
    decoded_pixels = 0
    try:
        with _DECODE_SLOTS:
            image, decoded_pixels = _decode(data, param, limits)
            rgb = image.tobytes()
            width, height = image.size
    except APIError:
        raise
    except Exception as exc:  # Pillow's plugins raise many kinds for corrupt or truncated data
        raise _bad(param, f"The image could not be decoded ({_reason(exc)}).") from exc
    finally:
        if decoded_pixels > _TRIM_ABOVE_PIXELS:
            release_free_memory()
    digest = hashlib.sha256(f"{width}x{height}:".encode() + rgb).hexdigest()
    return ImageInput(rgb, width, height, digest, param)


def _reason(exc: Exception) -> str:
    detail = str(exc).strip().rstrip(".")
    return f"{type(exc).__name__}: {detail[:200]}" if detail else type(exc).__name__


def _decode(data: bytes, param: str, limits: ImageLimits) -> tuple[Image.Image, int]:
    """(the RGB picture, the pixels decoded for it)."""
    with warnings.catch_warnings():
        # Pillow's own bomb check warns below twice its limit; ours refuses earlier.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            opened = Image.open(io.BytesIO(data), formats=FORMATS)
        except UnidentifiedImageError as exc:
            raise _bad(
                param, "The data is not an image in a supported format (PNG, JPEG, WebP, GIF)."
            ) from exc
        except Image.DecompressionBombError as exc:  # Pillow's own check, far above ours
            raise _bad(
                param,
                "The image has far too many pixels; this server decodes at most "
                f"{limits.max_pixels:,} pixels an image (--image-max-pixels).",
                "image_too_large",
            ) from exc
    with opened:
        check_size(*opened.size, param, limits)  # the header's size, before any pixel
        if getattr(opened, "is_animated", False):
            raise _bad(param, "Animated images are not supported; send a still image.")
        # JPEG: decode at a reduced scale (1/2 to 1/8) when the picture is larger than needed;
        # the budget then holds for what is really decoded.
        opened.draft("RGB", _scaled_size(*opened.size))
        width, height = opened.size
        check_pixels(width, height, param, limits)
        opened.load()
        image = opened if opened.mode == "RGB" else _to_rgb_or_rgba(opened)
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS, reducing_gap=3.0)
        # After the resize: the orientation of a smaller picture costs less to apply.
        image = ImageOps.exif_transpose(image) if opened.getexif().get(0x0112) else image
        return _over_white(image), width * height


def _scaled_size(width: int, height: int) -> tuple[int, int]:
    """The size a picture is scaled to: at most MAX_SIDE on a side, its shape kept."""
    scale = min(1.0, MAX_SIDE / width, MAX_SIDE / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def check_size(width: int, height: int, param: str, limits: ImageLimits) -> None:
    """The header's size against the longest side allowed (before a JPEG's reduced decode)."""
    if width < 1 or height < 1:
        raise _bad(param, f"The image has no pixels ({width} x {height}).")
    if max(width, height) > limits.max_side:
        raise _bad(
            param,
            f"The image is {width} x {height}; this server takes at most {limits.max_side} "
            "pixels on a side (--image-max-side).",
            "image_too_large",
        )


def check_pixels(width: int, height: int, param: str, limits: ImageLimits) -> None:
    """The pixels that would be decoded against the budget (`--image-max-pixels`)."""
    if width * height > limits.max_pixels:
        raise _bad(
            param,
            f"The image is {width} x {height} ({width * height:,} pixels to decode); this "
            f"server decodes at most {limits.max_pixels:,} pixels an image (--image-max-pixels).",
            "image_too_large",
        )


def _to_rgb_or_rgba(image: Image.Image) -> Image.Image:
    """RGBA if the picture has transparency (composed over white once it is small), else RGB."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        return image.convert("RGBA")
    return image.convert("RGB")


def _over_white(image: Image.Image) -> Image.Image:
    """RGB; transparent pixels over white (what a viewer shows), not over whatever colour the
    invisible pixels happen to hold."""
    if image.mode != "RGBA":
        return image.convert("RGB")
    background = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, image).convert("RGB")


@functools.cache
def _libc_malloc_trim() -> Any:
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def release_free_memory() -> None:
    """Give the memory freed by a large decode back to the system. glibc keeps freed blocks in
    its arenas (one per thread that allocated), so without this a burst of large pictures leaves
    the server gigabytes larger for good; elsewhere (musl, macOS) this does nothing."""
    trim = _libc_malloc_trim()
    if trim is not None:
        trim(0)


class ImageCollector:
    """Gathers a request's images in order while its messages are converted: each image part
    becomes `image_marker.marker(i)` in the message's text and `images[i]` for the engine.
    `fetched`: the bytes `remote_images` fetched, by the part's param."""

    def __init__(
        self, limits: ImageLimits | None = None, fetched: Mapping[str, bytes] | None = None
    ) -> None:
        self.images: list[ImageInput] = []
        self.limits = limits or ImageLimits()
        self.fetched = fetched or {}

    def add(self, url: str, param: str, role: str | None) -> str:
        """The marker text for the image at `url` (a data: URL, or one fetched), at `param`."""
        check_place(role, len(self.images), param, self.limits)
        if is_remote(url) and param in self.fetched:
            image = decode_image(self.fetched[param], param, self.limits)
        else:
            image = image_from_url(url, param, self.limits)
        self.images.append(image)
        return image_marker.marker(len(self.images) - 1)

    def add_image_url(self, value: Any, param: str, role: str | None) -> str:
        """A chat `image_url` part's value."""
        return self.add(image_url_of(value, param), param, role)

    def add_input_image(self, image_url: Any, detail: Any, param: str, role: str | None) -> str:
        """A Responses `input_image` part (`image_url` a data: URL; `file_id` is not kept)."""
        if not isinstance(image_url, str):
            raise _bad(param, "An input_image part needs image_url (a data: URL).", "invalid_value")
        check_detail(detail, param)
        return self.add(image_url, param, role)
