"""Which files an index may serve as an item's image, and which uris may not be stored at all.

An item's `uri` is data a writer chose (or a crawl did), so it is never trusted as a path. Two kinds of uri
name a servable file: `images/NAME` — an upload the service stored in the index folder's `images/` — and an
absolute path under one of the image roots recorded when the index was built (the folders its images came
from). Both are resolved (`..`, symlinks) before the check, so a link out of a root serves nothing, and no
file of the index folder outside `images/` (the item store, the manifest, the FAISS files) is ever served,
whatever the roots. Every other uri (`https://…`, `s3://…`, `file:…`) is metadata only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote, urlsplit

from retrieval.index.manifest import IMAGES

SERVED_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def _real(path: str | Path) -> Path:
    return Path(os.path.realpath(path))


def roots_of(image_files: Iterable[str]) -> list[str]:
    """The image roots to record for a build: the resolved folders holding its image files, none inside another."""
    folders = sorted({str(_real(path).parent) for path in image_files})
    roots: list[str] = []
    for folder in folders:  # sorted, so a folder's ancestors come before it
        if not any(Path(folder).is_relative_to(root) for root in roots):
            roots.append(folder)
    return roots


class ImageFiles:
    """The serving rule for one index folder and its recorded image roots."""

    def __init__(self, index_dir: str | Path, roots: Iterable[str] | None) -> None:
        self.folder = _real(index_dir)
        self.uploads = self.folder / IMAGES
        self.roots = [_real(root) for root in roots or ()]  # resolved once, not on every request

    def path(self, uri: str | None) -> Path | None:
        """The resolved file to serve for an image item's uri, or None when it is not one this index may serve."""
        if not uri:
            return None
        if uri.startswith(f"{IMAGES}/"):
            real, allowed = _real(self.folder / uri), [self.uploads]
        elif os.path.isabs(uri):
            real, allowed = _real(uri), self.roots
        else:
            return None
        if not any(real.is_relative_to(root) for root in allowed):
            return None
        if real.is_relative_to(self.folder) and not real.is_relative_to(self.uploads):
            return None  # a root that holds the index folder still never exposes the store or the manifest
        if real.suffix.lower() not in SERVED_SUFFIXES or not real.is_file():
            return None
        return real

    def names_index_file(self, uri: str) -> bool:
        """Does the uri, read as a path in any way a careless client might (relative to the index folder, after
        its scheme, percent-decoded, with backslashes as separators), name an existing file of the index folder?
        Such a uri is refused when an item is added."""
        for text in {uri, unquote(uri)} | {uri.replace("\\", "/"), unquote(uri).replace("\\", "/")}:
            candidates = [text, urlsplit(text).path]
            for candidate in candidates:
                if not candidate:
                    continue
                real = _real(self.folder / candidate)  # an absolute candidate replaces the folder
                if (real == self.folder or real.is_relative_to(self.folder)) and real.exists():
                    return True
        return False
