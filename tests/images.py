"""Real image files for tests, made with Pillow: PNG, JPEG, WebP and GIF pictures, as bytes and
as data: URLs; damaged copies of them for fuzzing (`mutations`), and headers that declare more
pixels than they hold (`png_header_only`)."""

from __future__ import annotations

import base64
import io
import random
import struct
import zlib
from collections.abc import Iterator

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


def animated_gif(seed: int = 1, frames: int = 3) -> bytes:
    pictures = [picture(seed + index) for index in range(frames)]
    return encode(pictures[0], "GIF", save_all=True, append_images=pictures[1:], duration=100)


def seed_images() -> dict[str, bytes]:
    """One small file of each format the server accepts or must refuse cleanly, to mutate."""
    return {
        "png": encode(picture(1), "PNG"),
        "png-rgba": encode(picture(2).convert("RGBA"), "PNG"),
        "jpeg": encode(picture(3), "JPEG"),
        "jpeg-progressive": encode(picture(4), "JPEG", progressive=True),
        "webp": encode(picture(5), "WEBP"),
        "webp-lossless": encode(picture(6), "WEBP", lossless=True),
        "gif": encode(picture(7), "GIF"),
        "gif-animated": animated_gif(8),
    }


def mutations(seed: int, count: int) -> Iterator[tuple[str, bytes]]:
    """`count` damaged images, reproducibly from `seed`: truncations and byte mutations (random
    bytes overwritten, a run zeroed or set to 0xFF, bytes inserted or deleted) of each seed
    image, named so that a failure can be replayed."""
    generator = random.Random(seed)
    originals = list(seed_images().items())
    for case in range(count):
        name, data = originals[case % len(originals)]
        kind = generator.choice(["truncate", "flip", "run", "insert", "delete"])
        damaged = bytearray(data)
        if kind == "truncate":
            damaged = damaged[: generator.randrange(len(data))]
        elif kind == "flip":
            for _ in range(generator.randint(1, 8)):
                damaged[generator.randrange(len(damaged))] = generator.randrange(256)
        elif kind == "run":
            start, length = generator.randrange(len(damaged)), generator.randint(1, 64)
            damaged[start : start + length] = bytes([generator.choice([0, 0xFF])]) * length
        elif kind == "insert":
            where = generator.randrange(len(damaged))
            damaged[where:where] = generator.randbytes(generator.randint(1, 32))
        else:
            where = generator.randrange(len(damaged))
            del damaged[where : where + generator.randint(1, 32)]
        yield f"{name}/{kind}/case{case}", bytes(damaged)


def png_header_only(width: int, height: int, color_type: int = 0) -> bytes:
    """A PNG whose header declares `width` x `height` (colour type 0: grey, 6: RGBA) and whose
    pixel data is garbage: refused from its header it gives `image_too_large`, decoded it would
    give `invalid_image`."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", b"not zlib data at all")
        + chunk(b"IEND", b"")
    )
