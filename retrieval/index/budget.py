"""Memory budgets: parse "4GiB", estimate what each index kind keeps in RAM, and pick the kind `auto` means.

The estimate is what a serving process needs resident for full speed: vectors or codes, graph links, ids
and the coarse quantizer. For `ondisk` the codes live in a memory-mapped file, so they are page cache (shared
between replicas, evictable) rather than private memory, but a query that has to fault them in from disk is
an order of magnitude slower, so they count against the budget too.
"""

from __future__ import annotations

import math
import re

from retrieval.errors import UserError

UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": 1 << 20, "mb": 1000**2, "mib": 1 << 20,
         "g": 1 << 30, "gb": 1000**3, "gib": 1 << 30, "t": 1 << 40, "tb": 1000**4, "tib": 1 << 40}
FLAT_MAX_ITEMS = 20_000  # exact search over 20k vectors costs about a millisecond per query
# An HNSW build adds ~4–5k vectors/s on 2 cores here (100k items built in 24 s, store included, docs/results.md),
# slowing as the graph grows: past 500k it takes many minutes; `ondisk` assigns vectors to lists by a matrix product.
HNSW_MAX_ITEMS = 500_000
HNSW_M = 32
IDMAP2_BYTES = 48  # per vector: the IDMap2 id array (8 B) and its reverse hash map (~40 B)


def parse_bytes(text: str | int | float | None) -> int | None:
    """ "4GiB", "512MB", "1.5g", 1e9 → bytes (None stays None); a bad value is a UserError."""
    if text is None or isinstance(text, int | float):
        return None if text is None else int(text)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in UNITS:
        raise UserError(f"memory budget {text!r}: give a size such as 4GiB, 512MiB or 8GB")
    value = int(float(match.group(1)) * UNITS[match.group(2).lower()])
    if value <= 0:
        raise UserError(f"memory budget {text!r} must be positive")
    return value


def format_bytes(n: float) -> str:
    """Bytes in GiB or MiB, for messages."""
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.0f} MiB"


def nlist_for(n: int) -> int:
    """IVF lists ≈ 4·√n rounded to a power of two (autofaiss' rule), at least 39 training points per list."""
    nlist = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n))))
    return max(1, min(nlist, n // 39))


def code_ladder(dim: int) -> list[tuple[str, float]]:
    """`ondisk` code formats from most to least accurate, with their bytes per vector."""
    pq_m = next((m for m in (64, 48, 32, 24, 16, 8, 4, 2, 1) if m <= max(1, dim // 8) and dim % m == 0), 1)
    return [("SQ8", dim), ("SQ4", math.ceil(dim / 2)), (f"PQ{pq_m}x8", pq_m)]


def ondisk_bytes(n: int, dim: int, code_bytes: float, nlist: int | None = None) -> int:
    """Codes + ids (8 B) in the lists, plus the coarse quantizer (centroids and their HNSW graph)."""
    nlist = nlist or nlist_for(n)
    return int(n * (code_bytes + 8) + nlist * (4 * dim + 8 * HNSW_M))


def kind_bytes(kind: str, n: int, dim: int) -> int:
    """Estimated resident bytes of an index kind (`ondisk`: with SQ8 codes)."""
    if kind == "flat":
        return n * (4 * dim + IDMAP2_BYTES)
    if kind == "hnsw":
        return n * (4 * dim + 8 * HNSW_M + IDMAP2_BYTES)
    if kind == "ivfpq":  # PQ codes + the SQ8 refine vectors, both in RAM
        return n * (dim // 4 + dim + IDMAP2_BYTES)
    return ondisk_bytes(n, dim, dim)


def choose_kind(n: int, dim: int, memory_budget: int | None = None) -> str:
    """The kind `auto` means: exact while cheap, HNSW while it fits the budget and builds in reasonable time,
    an IVF index with memory-mapped on-disk lists beyond. No budget: only the item limits decide."""
    if n < FLAT_MAX_ITEMS and (memory_budget is None or kind_bytes("flat", n, dim) <= memory_budget):
        return "flat"
    if n <= HNSW_MAX_ITEMS and (memory_budget is None or kind_bytes("hnsw", n, dim) <= memory_budget):
        return "hnsw"
    ondisk_codes(n, dim, memory_budget)  # raises when nothing fits
    return "ondisk"


def ondisk_codes(n: int, dim: int, memory_budget: int | None) -> str:
    """The most accurate `ondisk` code format whose index fits `memory_budget`; a UserError when none does."""
    ladder = code_ladder(dim)
    for codes, size in ladder:
        if memory_budget is None or ondisk_bytes(n, dim, size) <= memory_budget:
            return codes
    smallest = ondisk_bytes(n, dim, ladder[-1][1])
    raise UserError(
        f"memory budget {format_bytes(memory_budget)} is too small for {n:,} {dim}-d vectors: the smallest index "
        f"(IVF-{ladder[-1][0]} on disk) needs {format_bytes(smallest)}; raise --memory-budget to at least that"
    )
