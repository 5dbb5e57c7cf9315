"""Real image files for tests, made with Pillow: PNG, JPEG, WebP and GIF pictures, as bytes and
as data: URLs."""

from __future__ import annotations

import base64
import io

from PIL import Image, ImageDraw


def picture(seed: int, size: tuple[int, int] = (96, 64)) -> Image.Image:
    """A distinct picture per seed: coloured shapes on a coloured ground."""
    ground = ((seed * 97) % 256, (seed * 57 + 80) % 256, (seed * 31 + 160) % 256)
    image = Image.new("RGB", size, ground)
    draw = ImageDraw.Draw(image)
    for index in range(4):
        x = (seed * 13 + index * 29) % size[0]
        y = (seed * 7 + index * 17) % size[1]
        colour = ((seed + index) * 71 % 256, (seed * index + 40) % 256, (index * 90) % 256)
        draw.ellipse((x - 12, y - 12, x + 12, y + 12), fill=colour)
    return image


def encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def picture_url(seed: int, fmt: str = "PNG") -> str:
    mime = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}
    return data_url(encode(picture(seed), fmt), mime[fmt])
