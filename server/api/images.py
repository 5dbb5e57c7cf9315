"""Image content parts -> validated RGB pixels for the engine (pure: no network, no llama_cpp).

A client's picture arrives as a `data:` URL (chat `image_url`, Responses `input_image`). It is
decoded here with Pillow, which checks what llama.cpp would not: that the bytes are an image of
a format OpenAI accepts (PNG, JPEG, WebP, still GIF), that it is not a decompression bomb
(the pixel count is read from the header before anything is decoded), its EXIF orientation
(phones store photos sideways and say so in EXIF). The engine gets plain RGB bytes with their
size and a content hash (the prefix cache recognises an image it has seen by it). Every refusal
is a 400 naming the content part (`messages[0].content[1]`).

Remote `http(s)` URLs are refused: a server that fetches any URL a request names lets whoever can
reach it probe the home network behind it (SSRF).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import warnings
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from server.api.errors import APIError
from server.engine.contract import ImageInput, image_marker

# Formats OpenAI's vision API accepts.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
# A 48-megapixel phone photo fits; a decompression bomb (a small file declaring a huge canvas)
# is refused from its header, before its pixels are decoded.
MAX_PIXELS = 50_000_000
# The projector resizes every image to its own input size (896 x 896 for Gemma 3): larger
# pictures are scaled down here first, so a 48 MP photo does not travel as 144 MB of RGB.
MAX_SIDE = 2048
MAX_IMAGES_PER_REQUEST = 8

_DATA_URL = re.compile(r"^data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*?);base64,", re.I)
# Marks an image's place in a message's text; the engine splits the text there. Client text never
# carries it (see `clean_text`).
_MARKER_CHARS = ("\ue002", "\ue003")


def _bad(param: str, message: str, code: str = "invalid_image") -> APIError:
    return APIError(400, message, param=param, code=code)


def check_detail(detail: Any, param: str) -> None:
    """`detail` ("auto", "low", "high") is accepted and changes nothing: a Gemma 3 projector
    sees every image at its one resolution."""
    if detail not in (None, "auto", "low", "high"):
        raise _bad(
            param, f"detail must be 'auto', 'low' or 'high' (got {detail!r}).", "invalid_value"
        )


def image_url_of(part_value: Any, param: str) -> str:
    """The URL of a chat `image_url` value ({"url": ..., "detail": ...} or a bare string)."""
    if isinstance(part_value, str):
        return part_value
    if isinstance(part_value, dict) and isinstance(part_value.get("url"), str):
        check_detail(part_value.get("detail"), param)
        return str(part_value["url"])
    raise _bad(param, "An image_url part needs image_url.url (a data: URL).", "invalid_value")


def image_from_url(url: str, param: str) -> ImageInput:
    """A `data:` URL -> the image, or a 400 naming `param`."""
    if url[:8].lower().startswith(("http://", "https://")):
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
    return decode_image(data, param)


def decode_image(data: bytes, param: str) -> ImageInput:
    """Image file bytes -> RGB pixels, upright, at most MAX_SIDE on a side."""
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check warns below twice its limit; ours refuses earlier.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError as exc:
        raise _bad(
            param, "The data is not an image in a supported format (PNG, JPEG, WebP, GIF)."
        ) from exc
    except Image.DecompressionBombError as exc:
        raise _bad(
            param, f"The image has too many pixels (at most {MAX_PIXELS:,}).", "image_too_large"
        ) from exc
    width, height = opened.size
    if width * height > MAX_PIXELS:
        raise _bad(
            param,
            f"The image has too many pixels: {width} x {height} (at most {MAX_PIXELS:,}).",
            "image_too_large",
        )
    if getattr(opened, "n_frames", 1) > 1:
        raise _bad(param, "Animated images are not supported; send a still image.")
    try:
        opened.draft("RGB", (MAX_SIDE, MAX_SIDE))  # JPEG: decode at a reduced scale when large
        image = ImageOps.exif_transpose(opened)
        image = _to_rgb(image)
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # A truncated or corrupt file fails only when its pixels are decoded.
        raise _bad(param, f"The image could not be decoded: {exc}.") from exc
    rgb = image.tobytes()
    digest = hashlib.sha256(f"{image.width}x{image.height}:".encode() + rgb).hexdigest()
    return ImageInput(rgb, image.width, image.height, digest, param)


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB; transparent pixels over white (what a viewer shows), not over whatever colour the
    invisible pixels happen to hold."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def clean_text(text: str) -> str:
    """Client text with the private characters that mark image places replaced, so typed text
    can never claim an image's place."""
    for char in _MARKER_CHARS:
        text = text.replace(char, "\ufffd")
    return text


class ImageCollector:
    """Gathers a request's images in order while its messages are converted: each image part
    becomes `image_marker(i)` in the message's text and `images[i]` for the engine."""

    def __init__(self) -> None:
        self.images: list[ImageInput] = []

    def add(self, url: str, param: str, role: str | None) -> str:
        """The marker text for the image at `url` (a data: URL), found at `param`."""
        if role != "user":
            raise _bad(param, "Images are accepted in user messages only.", "invalid_value")
        if len(self.images) >= MAX_IMAGES_PER_REQUEST:
            raise _bad(
                param,
                f"Too many images: at most {MAX_IMAGES_PER_REQUEST} per request.",
                "too_many_images",
            )
        self.images.append(image_from_url(url, param))
        return image_marker(len(self.images) - 1)

    def add_image_url(self, value: Any, param: str, role: str | None) -> str:
        """A chat `image_url` part's value."""
        return self.add(image_url_of(value, param), param, role)

    def add_input_image(self, image_url: Any, detail: Any, param: str, role: str | None) -> str:
        """A Responses `input_image` part (`image_url` a data: URL; `file_id` is not kept)."""
        if not isinstance(image_url, str):
            raise _bad(param, "An input_image part needs image_url (a data: URL).", "invalid_value")
        check_detail(detail, param)
        return self.add(image_url, param, role)
