"""The `ondisk` kind: an IVF index whose inverted lists live in a file that every server memory-maps.

Layout in INDEX_DIR, per modality (`image` shown):

- `image.trained.faiss` — the trained, empty index (coarse quantizer + code format): the template of every
  generation and of the in-RAM delta.
- `image.gN.faiss` + `image.gN.ivfdata` — generation N: FAISS's `OnDiskInvertedLists` (codes and item ids
  per list) and the small header that points to it (`IO_FLAG_ONDISK_SAME_DIR`: found next to the header, so
  a folder can be moved or shared read-only). The manifest names the live generation.

Serving: the base generation is opened read-only and memory-mapped, so start-up reads only list offsets and
the resident memory is the page cache of the lists queries touch. Items added since the base was written
go to a small in-RAM `delta` (a copy of the trained index); deleted items become tombstones (an
`IDSelectorNot` at search time). Base and delta are searched with the same nprobe and their top-k merged.

Durability: the store is the truth. The manifest records for the base `max_id` (every item of the modality
with a larger id is newer) and `deletions_seq` (the last deletion it has applied), so opening replays only the
store's newer rows and deletions — no comparison of ten million ids.

Compaction (`compact`) writes generation N+1 from the base and the delta less the tombstones with FAISS's
`merge_from_multiple` (the `merge_ondisk` recipe) while the server keeps searching the old generation, then
swaps it in under a short lock.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm import tqdm

from retrieval.errors import UserError
from retrieval.index.budget import format_bytes
from retrieval.index.collection import bitmap_selector
from retrieval.index.factory import new_index, set_search_params
from retrieval.index.io import fsync_dir, write_index

log = logging.getLogger(__name__)

SHARD_ROWS = 1_000_000  # vectors per in-RAM shard during a build (bounded build memory)
ADD_CHUNK = 100_000
ASSIGN_EF_SEARCH = 16  # FAISS's default: the quantizer's effort when adding, in builds and deltas alike
FLAT_ASSIGN_MAX_LISTS = 4096  # builds assign by exact search over at most this many centroids (`list_assigner`)
MAX_TRAIN_POINTS_PER_LIST = 30  # k-means sample: 30 points per list (FAISS warns below 39, recall barely moves)


def trained_file(modality: str) -> str:
    return f"{modality}.trained.faiss"


def generation_files(modality: str, generation: int) -> tuple[str, str]:
    """(header, lists) file names of one generation."""
    return f"{modality}.g{generation}.faiss", f"{modality}.g{generation}.ivfdata"


def generation_of(file: str) -> int:
    """N of `modality.gN.faiss`."""
    return int(file.rsplit(".", 2)[-2].removeprefix("g"))


def open_base(path: Path) -> faiss.Index:
    """A generation, lists memory-mapped read-only from the file next to the header."""
    return faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)


def check_free_space(folder: Path, needed: int, what: str) -> None:
    """A one-line UserError before writing `needed` bytes to a disk that lacks them (a memory-mapped list file
    on a full disk would fail with SIGBUS, not with an error we could report)."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise UserError(f"{folder}: {what} needs about {format_bytes(needed)} of disk, only {format_bytes(free)} is "
                        f"free; free space or choose another folder (nothing existing was changed)")


def lists_bytes(n: int, index: faiss.Index) -> int:
    """Disk size of `n` vectors' codes and ids in lists of this index's format (with slack for list slots)."""
    return int(1.1 * n * (faiss.extract_index_ivf(index).code_size + 8)) + (1 << 20)


@contextmanager
def assigning(index: faiss.Index) -> Iterator[None]:
    """Adds find each vector's list with the coarse quantizer's HNSW at `ASSIGN_EF_SEARCH`, as a build does; the
    search-time efSearch (≥ 64, sized to return nprobe lists) would cost 3-8× for the one list an add needs."""
    quantizer = faiss.downcast_index(faiss.extract_index_ivf(index).quantizer)
    ef = quantizer.hnsw.efSearch
    quantizer.hnsw.efSearch = ASSIGN_EF_SEARCH
    try:
        yield
    finally:
        quantizer.hnsw.efSearch = ef


def list_assigner(index: faiss.Index):
    """For builds: a function from (n, d) float32 vectors to their (n,) int64 list numbers. Up to
    `FLAT_ASSIGN_MAX_LISTS` lists, an exact search over the centroids (one matrix product per chunk, BLAS) is
    2-3× faster than the HNSW quantizer's graph walk, which was nearly all of a build's add time; beyond, each
    vector would cost too many products, and the HNSW quantizer assigns (at `ASSIGN_EF_SEARCH`)."""
    ivf = faiss.extract_index_ivf(index)
    quantizer = faiss.downcast_index(ivf.quantizer)
    if ivf.nlist <= FLAT_ASSIGN_MAX_LISTS:
        exact = faiss.IndexFlat(ivf.d, ivf.metric_type)
        exact.add(faiss.downcast_index(quantizer.storage).reconstruct_n(0, ivf.nlist))
        return lambda x: exact.search(x, 1)[1].reshape(-1)

    def walk(x: np.ndarray) -> np.ndarray:
        with assigning(index):
            return quantizer.search(x, 1)[1].reshape(-1)

    return walk


def train(index: faiss.Index, vectors: np.ndarray, seed: int = 0) -> None:
    """k-means + code training on a sorted random sample (rows read from a memory map in order)."""
    ivf = faiss.extract_index_ivf(index)
    n_train = min(len(vectors), max(10_000, MAX_TRAIN_POINTS_PER_LIST * ivf.nlist))
    rows = np.sort(np.random.default_rng(seed).choice(len(vectors), n_train, replace=False))
    sample = np.ascontiguousarray(vectors[rows], np.float32)
    # 30 points per list is the chosen sample (above): tell k-means, or FAISS prints a warning to stderr
    # (below its default of 39) on every build.
    ivf.cp.min_points_per_centroid = MAX_TRAIN_POINTS_PER_LIST
    log.info("training the quantizer: %d lists, %d vectors (k-means, %d iterations)", ivf.nlist, n_train, ivf.cp.niter)
    start = time.perf_counter()
    index.train(sample)
    log.info("trained in %.1f s", time.perf_counter() - start)


def build(folder: Path, modality: str, vectors: np.ndarray, ids: np.ndarray, params: dict[str, Any],
          seed: int = 0, progress: bool = True) -> tuple[str, float]:
    """Train, add in shards and merge into generation 1; returns its header file name and the add rate
    (vectors/s, training excluded)."""
    dim = vectors.shape[1]
    trained = new_index("ondisk", dim, params)
    train(trained, vectors, seed)
    write_index(trained, folder / trained_file(modality))
    check_free_space(folder, lists_bytes(len(vectors), trained) * 2, f"the {modality} index")
    assign = list_assigner(trained)
    shards: list[faiss.Index] = []
    shard_files: list[Path] = []
    bar = tqdm(total=len(vectors), desc=f"add {modality}", unit="vec", unit_scale=True, disable=not progress)
    start = time.perf_counter()
    try:
        for first in range(0, len(vectors), SHARD_ROWS):
            shard = faiss.clone_index(trained)
            for lo in range(first, min(first + SHARD_ROWS, len(vectors)), ADD_CHUNK):
                hi = min(lo + ADD_CHUNK, first + SHARD_ROWS, len(vectors))
                chunk = np.ascontiguousarray(vectors[lo:hi], np.float32)
                chunk_ids = np.ascontiguousarray(ids[lo:hi], np.int64)
                lists = assign(chunk)
                faiss.extract_index_ivf(shard).add_core(len(chunk), faiss.swig_ptr(chunk), faiss.swig_ptr(chunk_ids),
                                                        faiss.swig_ptr(lists))
                shard.ntotal = faiss.extract_index_ivf(shard).ntotal
                bar.update(hi - lo)
            if len(vectors) > SHARD_ROWS:  # spill to disk: build memory stays at one shard
                shard_files.append(folder / f".{modality}.shard{len(shard_files)}.faiss")
                write_index(shard, shard_files[-1])
                shard = faiss.read_index(str(shard_files[-1]), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
            shards.append(shard)
        rate = len(vectors) / max(1e-9, time.perf_counter() - start)
        bar.close()
        name = write_generation(folder, modality, 1, trained, shards, dead=())
    finally:
        bar.close()
        del shards
        for path in shard_files:
            path.unlink(missing_ok=True)
    return name, rate


def write_generation(folder: Path, modality: str, generation: int, trained: faiss.Index,
                     sources: list[faiss.Index], dead: Iterable[int]) -> str:
    """Merge the lists of `sources` (kept alive by the caller) into a new on-disk generation, drop the `dead`
    ids, fsync; returns the header's file name. The manifest still names the old generation until the caller
    switches it, so a crash here leaves only unreferenced files (removed at the next start)."""
    header, lists = generation_files(modality, generation)
    (folder / lists).unlink(missing_ok=True)
    out = faiss.clone_index(trained)
    ivf = faiss.extract_index_ivf(out)
    invlists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(folder / lists))
    pointers = faiss.InvertedListsPtrVector()
    for source in sources:
        pointers.push_back(faiss.extract_index_ivf(source).invlists)
    start = time.perf_counter()
    ntotal = invlists.merge_from_multiple(pointers.data(), pointers.size(), False, False)
    ivf.replace_invlists(invlists, True)
    invlists.this.disown()
    out.ntotal = ivf.ntotal = ntotal
    dead = np.fromiter(dead, np.int64)
    if len(dead):
        out.remove_ids(faiss.IDSelectorBatch(dead))
    fd = os.open(folder / lists, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    write_index(out, folder / header)
    fsync_dir(folder)
    log.info("%s generation %d: %d vectors written in %.1f s", modality, generation, out.ntotal,
             time.perf_counter() - start)
    return header


def remove_unreferenced(folder: Path, modality: str, live: str) -> None:
    """Delete generation files the manifest does not name (left by a crash, or replaced by a compaction)."""
    keep = set(generation_files(modality, generation_of(live)))
    for path in folder.glob(f"{modality}.g*.*"):
        if path.name not in keep and path.suffix in (".faiss", ".ivfdata"):
            path.unlink(missing_ok=True)
    for path in folder.glob(f".{modality}.shard*.faiss"):
        path.unlink(missing_ok=True)


class DiskCollection:
    """Base generation (memory-mapped) + in-RAM delta + tombstones; the `Collection` interface. Not
    thread-safe: the owner serialises writes against searches."""

    kind = "ondisk"

    def __init__(self, modality: str, folder: Path, file: str, search_params: dict[str, Any]) -> None:
        self.modality = modality
        self.folder = folder
        self.file = file
        self.index = open_base(folder / file)  # the base: what tuning and `ivf_of` look at
        self.trained = faiss.read_index(str(folder / trained_file(modality)))
        self.delta = faiss.clone_index(self.trained)
        self.frozen: faiss.Index | None = None  # the delta a running compaction is merging
        self.tombstones: set[int] = set()
        self._dead: faiss.SearchParametersIVF | None = None
        self.search_params: dict[str, Any] = {}
        self.configure(search_params)

    @property
    def parts(self) -> list[faiss.Index]:
        return [p for p in (self.index, self.frozen, self.delta) if p is not None and p.ntotal]

    @property
    def ntotal(self) -> int:
        """Vectors held (tombstoned ones included)."""
        return sum(p.ntotal for p in self.parts)

    @property
    def nlist(self) -> int:
        return faiss.extract_index_ivf(self.index).nlist

    def configure(self, search_params: dict[str, Any]) -> None:
        """Switch search parameters (nprobe) on every part."""
        self.search_params = dict(search_params)
        for part in (self.index, self.frozen, self.delta, self.trained):
            if part is not None:
                set_search_params(part, "ondisk", self.search_params)
        self._dead = None

    def _params(self, nprobe: int, sel: faiss.IDSelector | None) -> faiss.SearchParametersIVF:
        params = faiss.SearchParametersIVF()
        params.nprobe = min(self.nlist, max(1, int(nprobe)))
        if sel is not None:
            params.sel = sel
        return params

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (n, k), best first; -1 where fewer than k items exist (or are `allowed`)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        nprobe = int(self.search_params.get("nprobe", 1))
        if allowed is None:
            return self._search(queries, k, self._tombstone_params(nprobe))
        allowed = np.asarray(allowed, np.int64)  # live ids from the store: no tombstone among them
        scores, ids = self.search_ann(queries, k, allowed)
        short = (ids >= 0).sum(axis=1) < min(k, len(allowed))
        if short.any():  # a rare filter: scan every list
            sel, _bits = bitmap_selector(allowed)
            scores[short], ids[short] = self._search(queries[short], k, self._params(self.nlist, sel))
        return scores, ids

    def search_ann(self, queries: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`search` restricted to `allowed` with a selector and nprobe widened by the inverse of the allowed
        fraction, without the scan of every list for queries left short (what `retrieval eval --index` measures)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        sel, _bits = bitmap_selector(np.asarray(allowed, np.int64))  # the bitmap lives until the search is done
        scale = int(np.ceil(max(1, self.ntotal) / max(1, len(allowed))))
        return self._search(queries, k, self._params(int(self.search_params.get("nprobe", 1)) * scale, sel))

    def _search(self, queries: np.ndarray, k: int, params: faiss.SearchParametersIVF) -> tuple[np.ndarray, np.ndarray]:
        parts = self.parts
        if not parts:
            return np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
        results = [part.search(queries, k, params=params) for part in parts]
        if len(results) == 1:
            return results[0]
        scores = np.concatenate([r[0] for r in results], axis=1)  # (n, parts·k)
        ids = np.concatenate([r[1] for r in results], axis=1)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)

    def _tombstone_params(self, nprobe: int) -> faiss.SearchParametersIVF:
        if self._dead is None:
            if self.tombstones:
                batch = faiss.IDSelectorBatch(np.fromiter(self.tombstones, np.int64, len(self.tombstones)))
                sel = faiss.IDSelectorNot(batch)
                self._dead = self._params(nprobe, sel)
                self._dead_refs = (batch, sel)  # the parameters point to these
            else:
                self._dead = self._params(nprobe, None)
        return self._dead

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """New items go to the in-RAM delta, each into its list found as a build finds it (`assigning`)."""
        if len(ids):
            with assigning(self.delta):
                self.delta.add_with_ids(np.ascontiguousarray(vectors, np.float32), np.ascontiguousarray(ids, np.int64))

    def remove(self, ids: np.ndarray) -> None:
        """Deleted items become tombstones until the next compaction."""
        self.tombstones.update(int(i) for i in np.asarray(ids).reshape(-1))
        self._dead = None

    def freeze(self) -> tuple[list[faiss.Index], set[int]]:
        """Start a compaction: the delta stops taking adds (a fresh one does); returns what to merge."""
        if self.frozen is not None:
            raise RuntimeError("a compaction is already running")
        self.frozen, self.delta = self.delta, faiss.clone_index(self.trained)
        set_search_params(self.delta, "ondisk", self.search_params)
        return [p for p in (self.index, self.frozen) if p.ntotal], set(self.tombstones)

    def swap(self, file: str, dead: set[int]) -> None:
        """Finish a compaction: serve the new generation; the merged delta and applied tombstones go."""
        self.index, self.file, self.frozen = open_base(self.folder / file), file, None
        self.tombstones -= dead
        self.configure(self.search_params)

    def abort(self) -> None:
        """A failed compaction: fold the frozen delta back into the live one."""
        if self.frozen is not None:
            self.frozen.merge_from(self.delta, 0)
            self.delta, self.frozen = self.frozen, None
