"""The item store: the durable truth behind an index (SQLite in WAL mode, stdlib `sqlite3`).

Every item (an image or a text) is a row with its caption, uri, metadata and embedding. A write returns
only after its transaction is committed with `synchronous=FULL`, so an acknowledged item survives a
kill -9 or a power cut; the FAISS files are snapshots rebuilt from these rows when they lag behind.
Ids come from AUTOINCREMENT, so a deleted id is never reused (the index relies on that to drop stale
entries). Three connections, each under its own lock: one for writes; one for reads, so searches reading
item rows never wait behind a write's fsync (WAL lets readers see the last committed state meanwhile);
one for scans of a metadata field over every row (filters), so searches never wait behind those either.
"""

from __future__ import annotations

import errno
import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.errors import UserError
from retrieval.json_rules import loads_stored

MODALITIES = ("image", "text")
# The largest id: SQLite's INTEGER ends at 2^63 − 1 (a larger one cannot even be bound); this is the largest
# integer below it that a double holds exactly, so JSON tools that read numbers as doubles agree on the bound.
MAX_ID = 2**63 - 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    modality TEXT NOT NULL CHECK (modality IN ('image', 'text')),
    caption TEXT,
    uri TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    embedding BLOB NOT NULL,
    created TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS items_by_modality ON items (modality, id);
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- Items per modality, kept in each write's own transaction: COUNT(*) walks every row (~4 s at 10M items, at
-- each server start). Not triggers: a per-row trigger made bulk inserts ~45 % slower.
CREATE TABLE IF NOT EXISTS item_counts (modality TEXT PRIMARY KEY, n INTEGER NOT NULL);
-- One row per deleted item, in the delete's own transaction: an on-disk index reconciles by reading the
-- deletions after its snapshot's `deletions_seq` instead of comparing every id it holds with the store.
CREATE TABLE IF NOT EXISTS deletions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id INTEGER NOT NULL,
    modality TEXT NOT NULL
);
"""


def utc_now() -> str:
    """ISO-8601 UTC timestamp, second precision (what the store and manifests record)."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


@dataclass
class NewItem:
    """An item to add: its modality, normalised embedding (D,), and what search results show."""

    modality: str
    embedding: np.ndarray
    caption: str | None = None
    uri: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Item:
    """A stored item, as search results and `GET /v1/items/{id}` report it (no embedding)."""

    id: int
    modality: str
    caption: str | None
    uri: str | None
    metadata: dict[str, Any]
    created: str


class ItemStore:
    """Items of one index directory in `items.sqlite`; thread-safe."""

    def __init__(self, path: str | Path, dim: int | None = None, create: bool = False, read_only: bool = False) -> None:
        """`read_only`: a replica's view of a store another process writes; its connections are opened read-only
        (SQLite's `mode=ro`), so it creates no table, fills no count and never checkpoints the primary's WAL."""
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise UserError(f"item store not found: {self.path} (build the index with `retrieval index build`)")
        self._write_lock, self._read_lock = threading.Lock(), threading.Lock()
        self._writer = self._connect(read_only)
        if not read_only:
            self._writer.execute("PRAGMA journal_mode=WAL")
            self._writer.execute("PRAGMA synchronous=FULL")  # a COMMIT is on disk before we acknowledge
            self._writer.executescript(_SCHEMA)
        self._reader = self._connect(read_only)
        # Scans of a metadata field over every row (filters, `metadata_values`) take their own connection, so
        # the searches' item reads never wait the ~1 s such a scan of 100k rows takes.
        self._scan_lock = threading.Lock()
        self._scanner = self._connect(read_only)
        if not read_only:
            self._fill_counts()
        stored = self.get_info("dim")
        if stored is None and dim is not None and not read_only:
            self.set_info("dim", str(dim))
            stored = str(dim)
        if stored is None:
            raise UserError(f"{self.path}: item store has no embedding dimension recorded")
        self.dim = int(stored)
        if dim is not None and dim != self.dim:
            raise UserError(f"{self.path}: the store holds {self.dim}-d embeddings, not {dim}-d")

    def _connect(self, read_only: bool) -> sqlite3.Connection:
        target, uri = (self.path.resolve().as_uri() + "?mode=ro", True) if read_only else (self.path, False)
        return sqlite3.connect(target, check_same_thread=False, isolation_level=None, uri=uri)

    def _fill_counts(self) -> None:
        """Count the items once for a store written before `item_counts` existed (or a new, empty one)."""
        with self._write_lock:
            cur = self._writer.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                if cur.execute("SELECT COUNT(*) FROM item_counts").fetchone()[0] < len(MODALITIES):
                    cur.executemany(
                        "INSERT OR REPLACE INTO item_counts (modality, n) "
                        "SELECT ?, COUNT(*) FROM items WHERE modality = ?", [(m, m) for m in MODALITIES]
                    )
                cur.execute("COMMIT")
            except BaseException:
                _rollback(cur)
                raise

    def close(self) -> None:
        """Close the connections (the WAL is checkpointed by SQLite)."""
        with self._write_lock, self._read_lock, self._scan_lock:
            self._scanner.close()
            self._reader.close()
            self._writer.close()

    def get_info(self, key: str) -> str | None:
        """A value of the key/value `info` table (dim, fingerprint)."""
        with self._read_lock:
            row = self._reader.execute("SELECT value FROM info WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_info(self, key: str, value: str) -> None:
        """Set a key of the `info` table (committed)."""
        with self._write_lock:
            self._writer.execute("INSERT OR REPLACE INTO info (key, value) VALUES (?, ?)", (key, value))

    def add(self, items: Sequence[NewItem]) -> list[int]:
        """Insert items in one committed transaction; returns their new ids in order."""
        for item in items:
            if item.modality not in MODALITIES:
                raise ValueError(f"modality must be image or text, not {item.modality!r}")
            if np.size(item.embedding) != self.dim:
                raise ValueError(f"embedding has {np.size(item.embedding)} dimensions, the store holds {self.dim}")
        vectors = np.empty((len(items), self.dim), np.float32)
        for row, item in zip(vectors, items, strict=True):
            row[:] = np.asarray(item.embedding).reshape(-1)
        rows = ((item.modality, item.caption, item.uri, _json(item.metadata), vector.tobytes())
                for item, vector in zip(items, vectors, strict=True))
        return self._insert(rows, len(items)).tolist()

    def add_rows(self, modality: str, vectors: np.ndarray, captions: Sequence[str | None],
                 uris: Sequence[str | None], metadata: Sequence[dict[str, Any]]) -> np.ndarray:
        """Bulk insert of one modality (index builds): one committed transaction; returns the new ids (int64)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if modality not in MODALITIES or vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"add_rows: {modality} rows of {vectors.shape[1:]} values, the store holds {self.dim}")
        rows = ((modality, c, u, _json(m), v.tobytes()) for c, u, m, v in zip(captions, uris, metadata, vectors, strict=True))
        return self._insert(rows, len(vectors))

    def _insert(self, rows: Iterator[tuple[str, str | None, str | None, str, bytes]], n: int) -> np.ndarray:
        """(modality, caption, uri, metadata JSON, embedding bytes) rows in one committed transaction with
        `executemany`; returns their ids (int64). AUTOINCREMENT ids of one transaction under the write lock are
        consecutive, so they are read from `sqlite_sequence` instead of one `lastrowid` per row."""
        created = utc_now()
        added = dict.fromkeys(MODALITIES, 0)

        def counted(row: tuple[str, str | None, str | None, str, bytes]) -> tuple:
            added[row[0]] += 1
            return row + (created,)

        with self._write_lock:
            cur = self._writer.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                first = self._last_id(cur) + 1
                cur.executemany(
                    "INSERT INTO items (modality, caption, uri, metadata, embedding, created) VALUES (?, ?, ?, ?, ?, ?)",
                    map(counted, rows),
                )
                cur.executemany("UPDATE item_counts SET n = n + ? WHERE modality = ?",
                                [(k, m) for m, k in added.items() if k])
                last = self._last_id(cur)
                cur.execute("COMMIT")
            except BaseException:
                _rollback(cur)
                raise
        if last - first + 1 != n:
            raise RuntimeError(f"item store: {n} rows inserted as ids {first}..{last}")
        return np.arange(first, last + 1, dtype=np.int64)

    @staticmethod
    def _last_id(cur: sqlite3.Cursor) -> int:
        row = cur.execute("SELECT seq FROM sqlite_sequence WHERE name = 'items'").fetchone()
        return int(row[0]) if row else 0

    def last_id(self) -> int:
        """The largest id ever given (deleted ids included; AUTOINCREMENT never reuses them)."""
        with self._read_lock:
            return self._last_id(self._reader.cursor())

    def delete(self, item_id: int) -> Item | None:
        """Remove an item (committed, with its `deletions` row); returns it, or None when there is no such id."""
        with self._write_lock:
            cur = self._writer.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                row = cur.execute(
                    "DELETE FROM items WHERE id = ? RETURNING id, modality, caption, uri, metadata, created", (item_id,)
                ).fetchone()
                if row is not None:
                    cur.execute("INSERT INTO deletions (id, modality) VALUES (?, ?)", (row[0], row[1]))
                    cur.execute("UPDATE item_counts SET n = n - 1 WHERE modality = ?", (row[1],))
                cur.execute("COMMIT")
            except BaseException:
                _rollback(cur)
                raise
        return _item(row) if row else None

    def deletions_since(self, modality: str, seq: int) -> tuple[np.ndarray, int]:
        """Ids of `modality` deleted after deletion number `seq`, and the newest deletion number (any modality)."""
        with self._read_lock:
            rows = self._reader.execute(
                "SELECT id FROM deletions WHERE seq > ? AND modality = ?", (seq, modality)
            ).fetchall()
            row = self._reader.execute("SELECT MAX(seq) FROM deletions").fetchone()
        return np.fromiter((r[0] for r in rows), np.int64, len(rows)), int(row[0] or 0)

    def update_metadata(self, item_id: int, changes: dict[str, Any]) -> Item | None:
        """Merge `changes` into an item's metadata (a None value removes the key), committed; None if no such id."""
        with self._write_lock:
            cur = self._writer.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                row = cur.execute("SELECT metadata FROM items WHERE id = ?", (item_id,)).fetchone()
                if row is not None:
                    metadata = json.loads(row[0])
                    for key, value in changes.items():
                        if value is None:
                            metadata.pop(key, None)
                        else:
                            metadata[key] = value
                    row = cur.execute(
                        "UPDATE items SET metadata = ? WHERE id = ? RETURNING id, modality, caption, uri, metadata, created",
                        (json.dumps(metadata), item_id),
                    ).fetchone()
                cur.execute("COMMIT")
            except BaseException:
                _rollback(cur)
                raise
        return _item(row) if row else None

    def page(self, modality: str | None, offset: int, limit: int) -> list[Item]:
        """Items in id order (of one modality, or all), `limit` of them from position `offset`."""
        where, args = ("WHERE modality = ?", (modality,)) if modality else ("", ())
        with self._read_lock:
            rows = self._reader.execute(
                f"SELECT id, modality, caption, uri, metadata, created FROM items {where} ORDER BY id LIMIT ? OFFSET ?",
                (*args, limit, offset),
            ).fetchall()
        return [_item(row) for row in rows]

    def metadata_values(self, modality: str, keys: Sequence[str]) -> list[tuple[int, str, Any]]:
        """(id, JSON type, value) of the metadata field at `keys` (nested), one row per element for lists.

        Types are SQLite's JSON type names (text, integer, real, true, false, null, array, object); a field
        holding an object yields nothing. `keys` must be plain names (letters, digits, `_`, `-`). Metadata that
        SQLite cannot parse (NaN or Infinity written by older versions) is read as `{}`: it matches nothing,
        and a filter never fails on it (the guard sits inside the JSON calls, whatever order they run in)."""
        path = "$" + "".join(f'."{key}"' for key in keys)
        parsed = "CASE WHEN json_valid(items.metadata) THEN items.metadata ELSE '{}' END"
        with self._scan_lock:
            return self._scanner.execute(
                f"SELECT items.id, e.type, e.value FROM items, json_each({parsed}, ?) AS e "
                f"WHERE items.modality = ? AND json_type({parsed}, ?) != 'object'",
                (path, modality, path),
            ).fetchall()

    def get(self, ids: Sequence[int]) -> dict[int, Item]:
        """The items among `ids` that exist, by id (for search results)."""
        found: dict[int, Item] = {}
        unique = list(dict.fromkeys(int(i) for i in ids))
        for start in range(0, len(unique), 500):  # stay under SQLite's bound-parameter limit
            part = unique[start : start + 500]
            marks = ",".join("?" * len(part))
            with self._read_lock:
                rows = self._reader.execute(
                    f"SELECT id, modality, caption, uri, metadata, created FROM items WHERE id IN ({marks})", part
                ).fetchall()
            found.update((row[0], _item(row)) for row in rows)
        return found

    def embeddings_of(self, ids: Sequence[int]) -> np.ndarray:
        """(len(ids), D) float32 embeddings in the order of `ids` (all must exist)."""
        out = np.empty((len(ids), self.dim), np.float32)
        position = {int(i): n for n, i in enumerate(ids)}
        keys = list(position)
        for start in range(0, len(keys), 500):
            part = keys[start : start + 500]
            with self._read_lock:
                rows = self._reader.execute(
                    f"SELECT id, embedding FROM items WHERE id IN ({','.join('?' * len(part))})", part
                ).fetchall()
            for item_id, blob in rows:
                out[position[item_id]] = np.frombuffer(blob, np.float32)
            if len(rows) != len(part):
                missing = set(part) - {r[0] for r in rows}
                raise KeyError(f"items not in the store: {sorted(missing)[:5]}")
        return out

    def ids(self, modality: str) -> np.ndarray:
        """All item ids of one modality, ascending (int64)."""
        with self._read_lock:
            rows = self._reader.execute("SELECT id FROM items WHERE modality = ? ORDER BY id", (modality,)).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def iter_embeddings(self, modality: str, chunk: int = 20_000, after: int = -1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, (n, D) embeddings) chunks of one modality in id order (ids above `after`), without holding all
        in memory."""
        last = after
        while True:
            with self._read_lock:
                rows = self._reader.execute(
                    "SELECT id, embedding FROM items WHERE modality = ? AND id > ? ORDER BY id LIMIT ?",
                    (modality, last, chunk),
                ).fetchall()
            if not rows:
                return
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            vectors = np.frombuffer(b"".join(r[1] for r in rows), np.float32).reshape(len(rows), self.dim)
            yield ids, vectors
            last = int(ids[-1])

    def count(self, modality: str | None) -> int:
        """Number of items of one modality (None: all), from the maintained `item_counts`."""
        where, args = ("WHERE modality = ?", (modality,)) if modality else ("", ())
        with self._read_lock:
            return int(self._reader.execute(f"SELECT COALESCE(SUM(n), 0) FROM item_counts {where}", args).fetchone()[0])

    def absolute_uris(self, modality: str) -> list[str]:
        """The distinct uris of `modality` that are absolute paths: what an index build stores (the API's uris
        carry a scheme), so the image roots of an index built before they were recorded."""
        with self._read_lock:
            rows = self._reader.execute(
                "SELECT DISTINCT uri FROM items WHERE modality = ? AND uri LIKE '/%'", (modality,)
            ).fetchall()
        return [row[0] for row in rows]

    def uris(self, modality: str) -> dict[str, int]:
        """uri → id for one modality (maps dataset files to items, e.g. for evaluation through an index)."""
        with self._read_lock:
            rows = self._reader.execute(
                "SELECT uri, id FROM items WHERE modality = ? AND uri IS NOT NULL", (modality,)
            ).fetchall()
        return {uri: item_id for uri, item_id in rows}

    def integrity_ok(self) -> bool:
        """SQLite's own consistency check (used after crashes in tests and by operators)."""
        with self._read_lock:
            return self._reader.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def _rollback(cur: sqlite3.Cursor) -> None:
    """Undo the open transaction; SQLite may have rolled it back already (a full disk does), and a second
    ROLLBACK would then raise and hide the error that matters."""
    if cur.connection.in_transaction:
        cur.execute("ROLLBACK")


def storage_full(error: BaseException) -> bool:
    """Is this the disk (or quota) being full, from SQLite or from a file write?"""
    if isinstance(error, sqlite3.OperationalError):
        return getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(error)
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def _json(metadata: dict[str, Any]) -> str:
    return json.dumps(metadata) if metadata else "{}"  # most bulk rows have none: skip the encoder


def _item(row: tuple) -> Item:
    item_id, modality, caption, uri, metadata, created = row
    return Item(int(item_id), modality, caption, uri, loads_stored(metadata), created)
