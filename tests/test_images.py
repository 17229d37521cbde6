"""Decoding untrusted image bytes: every bad input raises ImageError, odd modes convert."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from model.images import ImageError, decode_image, load_image


def encode(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"hello, this is text", "not an image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "image"),
    ],
)
def test_bad_bytes_raise_image_error(data, message):
    with pytest.raises(ImageError, match=message):
        decode_image(data)


def test_oversized_file_is_refused_before_decoding():
    with pytest.raises(ImageError, match="too large"):
        decode_image(b"\xff\xd8" + b"\x00" * 2000, max_bytes=1000)


def test_pixel_bomb_is_refused_from_the_header():
    # A 20000x20000 PNG compresses to a few hundred kB; the cap must trigger before decoding.
    bomb = encode(Image.new("L", (20000, 20000)), "PNG")
    assert len(bomb) < 2_000_000
    with pytest.raises(ImageError, match="20000x20000"):
        decode_image(bomb)


def test_not_bytes_is_refused():
    with pytest.raises(ImageError):
        decode_image("a string")  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "I;16", "I", "1"])
def test_colour_modes_become_rgb(mode):
    image = Image.new("RGB", (32, 24), (200, 100, 50)).convert(mode)
    fmt = "TIFF" if mode in ("CMYK", "I") else "PNG"
    rgb = decode_image(encode(image, fmt))
    assert rgb.shape == (24, 32, 3) and rgb.dtype == np.uint8


def test_sixteen_bit_gray_keeps_its_contrast():
    ramp = np.linspace(0, 65535, 64 * 8, dtype=np.uint16).reshape(8, 64)
    rgb = decode_image(encode(Image.fromarray(ramp), "PNG"))
    assert rgb[..., 0].min() == 0 and rgb[..., 0].max() == 255


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    rgb = decode_image(encode(image))
    assert (rgb == 255).all()


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    rgb = decode_image(encode(image, "JPEG", exif=exif.tobytes()))
    assert rgb.shape == (40, 20, 3)


def test_samples_readme_cases(samples_dir):
    assert load_image(samples_dir / "rgba_face.png").shape[2] == 3
    gray = load_image(samples_dir / "grayscale_face.jpg")
    assert gray.shape[2] == 3 and np.array_equal(gray[..., 0], gray[..., 2])
    with pytest.raises(ImageError, match="corrupt or truncated"):
        load_image(samples_dir / "truncated.jpg")
    with pytest.raises(ImageError, match="not an image"):
        load_image(samples_dir / "not_an_image.jpg")


def test_missing_file_raises_image_error(tmp_path):
    with pytest.raises(ImageError, match="cannot open"):
        load_image(tmp_path / "nope.jpg")


def test_live_frame_jpeg_decodes_to_the_same_pixels_as_pillow():
    """Upright RGB JPEGs (every live frame) take OpenCV's faster decoder: same pixels, and a cut-off stream is
    still an error, not a half-grey frame."""
    rng = np.random.default_rng(0)
    picture = np.clip(rng.normal(128, 40, (480, 640, 3)), 0, 255).astype(np.uint8)
    data = encode(Image.fromarray(picture), "JPEG", quality=85)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    decoded = decode_image(data)
    assert decoded.shape == (480, 640, 3) and decoded.flags.c_contiguous and decoded.flags.writeable
    assert np.array_equal(decoded, expected)
    with pytest.raises(ImageError, match="corrupt or truncated"):
        decode_image(data[: len(data) // 2])
