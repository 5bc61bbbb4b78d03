"""Checking and decoding uploaded images: every way an upload can be bad maps to one 4xx and a message."""

from __future__ import annotations

import base64
import binascii
import io
import warnings

from PIL import Image, UnidentifiedImageError

# PIL format → file suffix for stored uploads. Anything else PIL can open is refused as unsupported.
FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tiff"}


class ImageRejected(Exception):
    """An upload that is not a usable image; `status` is the HTTP code to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def decode_base64(text: str, what: str = "image_b64") -> bytes:
    """Standard base64 (a `data:image/...;base64,` prefix is accepted) → bytes."""
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ImageRejected(400, f"{what} is not valid base64") from None


def decode_image(data: bytes, max_pixels: int, what: str = "image") -> tuple[Image.Image, str]:
    """Bytes → (RGB image, file suffix). The pixel count is checked from the header before decoding."""
    if not data:
        raise ImageRejected(400, f"{what}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # parses the header only
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRejected(413, f"{what}: too many pixels (decompression bomb protection)") from None
    except UnidentifiedImageError:
        raise ImageRejected(415, f"{what}: not an image, or a format that cannot be read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageRejected(400, f"{what}: unreadable image header ({err})") from None
    if image.format not in FORMATS:
        raise ImageRejected(
            415, f"{what}: unsupported image type {image.format}; send {', '.join(FORMATS)}"
        )
    width, height = image.size
    if width * height > max_pixels:
        raise ImageRejected(
            413, f"{what}: {width}×{height} = {width * height} pixels, over the limit of {max_pixels}"
        )
    try:
        rgb = image.convert("RGB")  # the full decode: truncated or corrupt data fails here
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
        raise ImageRejected(400, f"{what}: truncated or corrupt image data ({err})") from None
    return rgb, FORMATS[image.format]
