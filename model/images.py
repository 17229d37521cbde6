"""Turn untrusted image bytes into RGB uint8 arrays, or raise one clear error.

Every photo and frame enters the model through `decode_image`, so the checks
for size, pixel count, corrupt data and odd colour modes live in one place.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000  # a 40 MP photo; a 20000x20000 bomb is 400 MP

# We enforce our own pixel cap before decoding; Pillow's own warning would only duplicate it.
Image.MAX_IMAGE_PIXELS = None


class ImageError(ValueError):
    """The bytes are not a usable image. The message is safe to show to a user."""


def decode_image(
    data: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> NDArray[np.uint8]:
    """Decode image bytes (JPEG, PNG, WebP, BMP, ...) to an RGB array.

    EXIF orientation is applied; grayscale, palette, CMYK, RGBA (composited on
    white) and 16-bit images are converted. The pixel count is checked from the
    header, before the pixels are decoded.

    :return: uint8 array [H, W, 3], RGB order.
    :raises ImageError: empty, too large, not an image, corrupt or truncated.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageError("expected image bytes")
    if len(data) == 0:
        raise ImageError("the file is empty")
    if len(data) > max_bytes:
        raise ImageError(f"the file is too large ({len(data) / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.0f} MB)")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError("not an image file (or an image format we cannot read)") from None
    except Exception as exc:  # Pillow raises many types on hostile headers
        raise ImageError(f"cannot read the image: {exc}") from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageError("the image has no pixels")
    if width * height > max_pixels:
        raise ImageError(f"the image is too large ({width}x{height}; the limit is {max_pixels / 1e6:.0f} megapixels)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image.load()
            image = ImageOps.exif_transpose(image)
        return _to_rgb(image)
    except ImageError:
        raise
    except Exception as exc:  # truncated streams raise OSError, others vary
        raise ImageError(f"the image is corrupt or truncated ({exc})") from None


def load_image(path: str | Path, **limits) -> NDArray[np.uint8]:
    """Read a file and decode it with `decode_image`. Raises ImageError, also for a missing file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot open {path}: {exc.strerror}") from None
    return decode_image(data, **limits)


def _to_rgb(image: Image.Image) -> NDArray[np.uint8]:
    """Convert any Pillow mode to RGB uint8, keeping the look of the picture."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        gray = np.asarray(image, dtype=np.float64)
        top = gray.max()
        scale = 255.0 / top if top > 255 else 1.0
        gray8 = np.clip(gray * scale, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray8[:, :, None], 3, axis=2))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(rgb)
