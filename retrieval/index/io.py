"""Crash-safe files: atomic writes (temp file + fsync + rename) and FAISS index (de)serialisation."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import faiss
import numpy as np


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (the directory entry itself is data)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes | memoryview | np.ndarray) -> None:
    """Replace `path` with `data` so that readers (and a crash) see the old file or the new one, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(memoryview(data).cast("B") if isinstance(data, np.ndarray) else data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not stay full of our half-written temp file
        raise
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_json(path: str | Path, payload: Any) -> None:
    """`atomic_write_bytes` for a JSON document (indented, UTF-8)."""
    atomic_write_bytes(path, (json.dumps(payload, indent=2, ensure_ascii=False) + "\n").encode())


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete temp files a killed writer left behind (`.NAME.tmp`); they were never renamed, so unused."""
    stale = list(Path(folder).glob(".*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def serialize(index: faiss.Index) -> np.ndarray:
    """The index as bytes in memory (taken under the index lock; written to disk outside it)."""
    return faiss.serialize_index(index)


def write_index(index: faiss.Index, path: str | Path) -> None:
    """Atomically write a FAISS index file."""
    atomic_write_bytes(path, serialize(index))


def read_index(path: str | Path, mmap: bool = False) -> faiss.Index:
    """Read a FAISS index; `mmap` maps IVF lists from the file instead of loading them (read-only)."""
    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
    return faiss.read_index(str(path), flags)
