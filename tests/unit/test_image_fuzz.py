"""The image decoder (server/api/images.py) on damaged and hostile files: whatever Pillow's
plugins raise for truncated or corrupt data, the answer is a picture or a 400 naming the part,
never another exception (which the server would answer with a 500); and a file that declares
more pixels than the budget is refused from its header, before anything is decoded."""

from __future__ import annotations

import base64

import pytest

from server.api.errors import APIError
from server.api.images import ImageCollector, ImageLimits, decode_image, image_from_url
from tests.images import animated_gif, data_url, mutations, png_header_only, seed_images

PARAM = "messages[0].content[1]"
FUZZ_CASES = 1500


def outcome(data: bytes) -> str:
    """'ok', or the 400's code; anything else fails the test."""
    try:
        image = decode_image(data, PARAM)
    except APIError as error:
        assert (error.status, error.param) == (400, PARAM)
        return str(error.code)
    assert image.width > 0 and image.height > 0
    assert len(image.rgb) == image.width * image.height * 3
    return "ok"


@pytest.mark.parametrize(
    "data",
    [
        base64.b64decode("UklGRvoAAABXRUJQVlA4IA=="),  # the first 16 bytes of a WebP
        base64.b64decode("iVBORw0KGgoAAAANSUhEUg=="),  # the first 16 bytes of a PNG
        animated_gif()[:119],  # an animated GIF cut inside its second frame
    ],
    ids=["webp-16-bytes", "png-16-bytes", "animated-gif-119-bytes"],
)
def test_the_probes_cut_files_are_400s(data: bytes) -> None:
    assert outcome(data) == "invalid_image"


def test_every_truncation_of_each_format_is_a_picture_or_a_400() -> None:
    for name, data in seed_images().items():
        for length in range(0, len(data), max(1, len(data) // 97)):
            try:
                outcome(data[:length])
            except BaseException as exc:
                raise AssertionError(f"{name} cut to {length} bytes: {exc!r}") from exc


def test_fuzzed_images_are_pictures_or_400s() -> None:
    seen: dict[str, int] = {}
    for name, data in mutations(seed=26, count=FUZZ_CASES):
        try:
            code = outcome(data)
        except BaseException as exc:
            raise AssertionError(f"{name} ({len(data)} bytes): {exc!r}") from exc
        seen[code] = seen.get(code, 0) + 1
    # The generator damages files enough to exercise the refusals, not only the decodes.
    assert seen.get("invalid_image", 0) > FUZZ_CASES // 10, seen


@pytest.mark.parametrize(
    ("width", "height", "color_type"),
    [(1, 49_000_000, 0), (7000, 7000, 6), (65_000, 65_000, 2)],
    ids=["1x49M-grey", "7000x7000-rgba", "65000x65000-rgb"],
)
def test_a_picture_over_the_budget_is_refused_from_its_header(
    width: int, height: int, color_type: int
) -> None:
    # Its pixel data is garbage: decoding it would be `invalid_image`, not `image_too_large`.
    with pytest.raises(APIError) as caught:
        decode_image(png_header_only(width, height, color_type), PARAM)
    assert caught.value.code == "image_too_large"
    assert "--image-max-" in caught.value.message  # says which limit
    if width < 10_000:  # (Pillow itself refuses the largest before it says its size)
        assert f"{width} x {height}" in caught.value.message


def test_the_budget_is_a_setting() -> None:
    small = ImageLimits(max_pixels=1000, max_side=100)
    with pytest.raises(APIError, match="at most 1,000 pixels") as caught:
        decode_image(seed_images()["png"], PARAM, small)  # 96 x 64
    assert caught.value.code == "image_too_large"
    with pytest.raises(APIError, match="at most 50 pixels on a side"):
        decode_image(seed_images()["png"], PARAM, ImageLimits(max_side=50))


def test_a_large_jpeg_is_budgeted_at_its_reduced_decode() -> None:
    from PIL import Image

    from tests.images import encode

    photo = encode(Image.new("RGB", (6000, 4000), (90, 120, 200)), "JPEG")
    # 24 MP in the file, but decoded at half scale (3000 x 2000): within a 6 MP budget.
    image = decode_image(photo, PARAM, ImageLimits(max_pixels=6_000_000))
    assert (image.width, image.height) == (2048, 1365)


def test_a_model_without_projector_refuses_before_decoding() -> None:
    collector = ImageCollector(ImageLimits(accepted=False))
    with pytest.raises(APIError) as caught:  # garbage: decoding it would be `invalid_image`
        collector.add_image_url(data_url(b"not an image"), PARAM, "user")
    assert caught.value.code == "image_input_not_supported"
    assert caught.value.param == PARAM


def test_a_data_url_goes_through_the_same_checks() -> None:
    with pytest.raises(APIError) as caught:
        image_from_url(data_url(png_header_only(1, 49_000_000)), PARAM)
    assert caught.value.code == "image_too_large"
