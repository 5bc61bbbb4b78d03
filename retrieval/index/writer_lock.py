"""One writer per FAISS index folder: an exclusive `flock` held while an `IndexDir` is open for writing.

Two writers on one folder each keep their own in-memory FAISS index (neither searches the other's adds) and
race on the same snapshot temp files; a second service, or `retrieval index evaluate` against a running
one, would corrupt nothing in the store but serve stale results and fail its snapshots. The kernel drops
the lock when the holder dies (kill -9 included), so a crashed writer never blocks the next start.
Memory-mapped replicas do not take it: they never write.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import BinaryIO

from retrieval.errors import UserError

LOCK_FILE = ".writer.lock"


class WriterLock:
    """The held lock; `release()`, leaving a `with` block, or process exit frees it."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / LOCK_FILE
        handle = open(self.path, "a+b")  # noqa: SIM115 -- held open for the writer's lifetime, closed in release()
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read(32).decode(errors="replace").strip() or "unknown"
            handle.close()
            raise UserError(
                f"index {self.path.parent} is already open for writing (process {holder}); one writer per "
                f"folder: stop it first, or open this one read-only (mmap) as a replica"
            ) from None
        handle.truncate(0)
        handle.write(str(os.getpid()).encode())
        handle.flush()
        self._handle: BinaryIO | None = handle  # an abandoned writer's handle closes (and unlocks) when collected

    def __enter__(self) -> WriterLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the file drops the flock
            self._handle = None
