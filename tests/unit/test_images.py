"""Image parts -> RGB for the engine (server/api/images.py): the formats OpenAI accepts decode,
upright and opaque; everything else is a 400 naming the part."""

from __future__ import annotations

import pytest
from PIL import Image

from server.api.errors import APIError
from server.api.images import (
    MAX_IMAGES_PER_REQUEST,
    MAX_SIDE,
    ImageCollector,
    clean_text,
    decode_image,
    image_from_url,
)
from server.engine.image_marker import marker as image_marker
from tests.images import data_url, encode, picture, picture_url

PARAM = "messages[0].content[1]"


def refusal(url: str) -> APIError:
    with pytest.raises(APIError) as caught:
        image_from_url(url, PARAM)
    assert caught.value.status == 400
    assert caught.value.param == PARAM
    return caught.value


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_every_accepted_format_decodes_to_rgb(fmt: str) -> None:
    decoded = image_from_url(picture_url(1, fmt), PARAM)
    assert (decoded.width, decoded.height) == (96, 64)
    assert len(decoded.rgb) == 96 * 64 * 3
    assert decoded.param == PARAM


def test_the_same_pixels_hash_the_same_and_others_differ() -> None:
    assert (
        image_from_url(picture_url(1), PARAM).digest == image_from_url(picture_url(1), PARAM).digest
    )
    assert (
        image_from_url(picture_url(1), PARAM).digest != image_from_url(picture_url(2), PARAM).digest
    )


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    data = encode(picture(1, (96, 64)), "JPEG", exif=exif)
    decoded = decode_image(data, PARAM)
    assert (decoded.width, decoded.height) == (64, 96)


def test_transparent_pixels_become_white() -> None:
    clear = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    decoded = decode_image(encode(clear, "PNG"), PARAM)
    assert decoded.rgb == b"\xff" * (4 * 4 * 3)


def test_large_pictures_are_scaled_down_keeping_their_shape() -> None:
    decoded = decode_image(encode(Image.new("RGB", (MAX_SIDE * 2, MAX_SIDE)), "PNG"), PARAM)
    assert (decoded.width, decoded.height) == (MAX_SIDE, MAX_SIDE // 2)


def test_not_base64() -> None:
    assert "base64" in refusal("data:image/png;base64,@@@not base64@@@").message


def test_not_an_image() -> None:
    error = refusal(data_url(b"just some text, not a picture", "image/png"))
    assert "not an image" in error.message


def test_a_truncated_image() -> None:
    data = encode(picture(1), "PNG")
    assert "could not be decoded" in refusal(data_url(data[: len(data) // 2])).message


def test_a_decompression_bomb_is_refused_from_its_header() -> None:
    bomb = encode(Image.new("1", (10_000, 10_000)), "PNG")  # 100 MP in a few KB
    assert len(bomb) < 100_000
    error = refusal(data_url(bomb))
    assert error.code == "image_too_large"


def test_an_animated_gif_is_refused() -> None:
    frames = [picture(1), picture(2)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert "Animated" in refusal(data_url(data, "image/gif")).message


def test_remote_urls_are_not_fetched() -> None:
    error = refusal("https://192.168.1.1/admin.png")
    assert error.code == "unsupported_image_url"


def test_not_a_data_url() -> None:
    assert "data: URL" in refusal("file:///etc/passwd").message
    assert "data: URL" in refusal("data:image/png,rawbytes").message


def test_collector_numbers_images_and_bounds_them() -> None:
    collector = ImageCollector()
    assert collector.add_image_url({"url": picture_url(1), "detail": "low"}, PARAM, "user") == (
        image_marker(0)
    )
    assert collector.add_image_url(picture_url(2), PARAM, "user") == image_marker(1)
    assert len(collector.images) == 2
    for _ in range(MAX_IMAGES_PER_REQUEST - 2):
        collector.add_image_url(picture_url(3), PARAM, "user")
    with pytest.raises(APIError) as caught:
        collector.add_image_url(picture_url(4), "messages[3].content[0]", "user")
    assert caught.value.code == "too_many_images"
    assert caught.value.param == "messages[3].content[0]"


def test_collector_refusals() -> None:
    collector = ImageCollector()
    with pytest.raises(APIError, match="user messages only"):
        collector.add_image_url(picture_url(1), PARAM, "assistant")
    with pytest.raises(APIError, match="detail"):
        collector.add_image_url({"url": picture_url(1), "detail": "ultra"}, PARAM, "user")
    with pytest.raises(APIError, match=r"image_url\.url"):
        collector.add_image_url({"href": "x"}, PARAM, "user")


def test_typed_text_cannot_claim_an_image_place() -> None:
    forged = f"look: {image_marker(0)}"
    assert image_marker(0) not in clean_text(forged)
