"""Image decoding for datasets: PIL, RGB, and one clear error naming the file when it cannot be read."""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from retrieval.errors import UserError

# Everything PIL raises for a missing, truncated, corrupt or oversized file. (Broken PNG chunks raise
# SyntaxError; a decompression bomb over PIL's default limit raises DecompressionBombError.) PIL's default
# MAX_IMAGE_PIXELS is kept: dataset files are the user's own, and the service sets its own limit.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


class BadImageError(UserError):
    """An image file of a dataset that cannot be decoded (missing, truncated, not an image)."""

    def __str__(self) -> str:
        text = super().__str__()
        # Re-raised by a DataLoader worker, the message carries the worker's traceback; the user needs
        # only its last line ("...BadImageError: cannot read image FILE (SOURCE): reason").
        if "Original Traceback" in text:
            return text.strip().splitlines()[-1].split(": ", 1)[-1]
        return text


def load_image(path: str | Path, source: str = "") -> Image.Image:
    """Fully decode `path` as an RGB PIL image; raise BadImageError naming the file and its entry."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")  # convert() forces the full decode, so truncation shows here
    except _DECODE_ERRORS as err:
        where = f" ({source})" if source else ""
        raise BadImageError(f"cannot read image {path}{where}: {err}") from None


def find_unreadable(paths: Iterable[Path], workers: int = 2) -> dict[Path, str]:
    """Decode every image once (threads: PIL releases the GIL while decoding); map bad path → reason."""

    def check(path: Path) -> tuple[Path, str | None]:
        try:
            load_image(path)
        except BadImageError as err:
            return path, str(err)
        return path, None

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return {path: reason for path, reason in pool.map(check, paths) if reason is not None}
