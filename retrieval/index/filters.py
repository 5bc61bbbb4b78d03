"""Metadata filters: which items' JSON metadata match `{"colour": "red", "tag": {"in": ["a", "b"]}, "year": {"gte": 2020}}`.

A filter maps field names to conditions, ANDed. A field name is a metadata key, or a dotted path into nested
objects (`camera.make`). A condition is an equality (a string, number or boolean) or an operator object:
`in` (equal to any of a list) and the range bounds `gte`, `gt`, `lte`, `lt` (numbers compare as numbers,
strings as strings, so ISO-8601 dates order correctly). A stored list matches when any of its elements does;
a value of another type than the condition's never matches (`"2020"` is not `2020`, `true` is not `1`), so
range bounds of mixed types match nothing. Numbers follow `retrieval.json_rules` (finite, within ±(2^53 − 1)),
in filters and in the stored values they are compared with: a stored value that breaks the rule (written by an
older version) matches nothing. `FILTER_SCHEMA` states exactly these rules as JSON Schema (the service's
OpenAPI schema uses it), and `check_filter` enforces them.

Evaluation is columnar, so a filtered search costs look-ups, not a scan of every row's JSON: the first filter on
a field loads that field's values for one modality from the store (one SQL pass) into sorted arrays, which
each write then updates (no rescan); a condition is then a binary search, and the filter's answer is the sorted array of
matching item ids that the FAISS search is restricted to (see `Collection.search`).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from retrieval.json_rules import NUMBER_RULE, NUMBER_SCHEMA, finite_number, is_safe_number, is_valid_text
from retrieval.store import ItemStore

FIELD = r"[A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64}){0,7}"
RANGE_OPS = ("gte", "gt", "lte", "lt")
OPERATORS = ("in", *RANGE_OPS)
MAX_FIELDS = 32
MAX_IN_VALUES = 1000

_SCALAR = {"anyOf": [{"type": "string"}, NUMBER_SCHEMA, {"type": "boolean"}]}
_BOUND = {"anyOf": [{"type": "string"}, NUMBER_SCHEMA]}
FILTER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "metadata conditions, ANDed: a field equals a value, or an operator object "
                   "(`in`: any of a list; `gte`/`gt`/`lte`/`lt`: numbers, or strings such as ISO dates)",
    "maxProperties": MAX_FIELDS,
    "propertyNames": {"pattern": f"^{FIELD}$"},
    "additionalProperties": {
        "anyOf": [
            _SCALAR,
            {
                "type": "object",
                "minProperties": 1,
                "additionalProperties": False,
                "properties": {
                    "in": {"type": "array", "items": _SCALAR, "minItems": 1, "maxItems": MAX_IN_VALUES},
                    **{op: _BOUND for op in RANGE_OPS},
                },
            },
        ]
    },
}


class FilterError(ValueError):
    """A filter that cannot be evaluated; the message says which field and why."""


Scalar = str | float | bool


@dataclass
class Column:
    """One metadata field of one modality: numbers and strings sorted with their item ids, and booleans."""

    numbers: np.ndarray  # float64, ascending
    number_ids: np.ndarray  # int64, aligned with `numbers`
    strings: np.ndarray  # str, ascending
    string_ids: np.ndarray
    true_ids: np.ndarray
    false_ids: np.ndarray

    @classmethod
    def from_rows(cls, rows: list[tuple[int, str, Any]]) -> Column:
        """(id, SQLite JSON type, value) rows → sorted arrays (other types — null, nested — and numbers that break
        `json_rules` are dropped: they match no condition)."""
        numbers = [(x, i) for i, kind, v in rows if kind in ("integer", "real") and (x := finite_number(v)) is not None]
        strings = [(v, i) for i, kind, v in rows if kind == "text"]
        numbers.sort()
        strings.sort()
        return cls(
            np.asarray([v for v, _ in numbers], np.float64), np.asarray([i for _, i in numbers], np.int64),
            np.asarray([v for v, _ in strings], dtype=str), np.asarray([i for _, i in strings], np.int64),
            np.asarray([i for i, kind, _ in rows if kind == "true"], np.int64),
            np.asarray([i for i, kind, _ in rows if kind == "false"], np.int64),
        )

    def changed(self, removed: np.ndarray, added: list[tuple[int, str, Any]]) -> Column:
        """A new column: this one without the values of the `removed` ids, with the `added` rows merged in."""
        new = Column.from_rows(added)

        def merge(values: np.ndarray, ids: np.ndarray, more: np.ndarray, more_ids: np.ndarray) -> tuple:
            keep = ~np.isin(ids, removed)
            values, ids = values[keep], ids[keep]
            if values.dtype.kind == "U":
                values = values.astype(np.result_type(values, more))  # room for longer strings
            at = np.searchsorted(values, more)  # `more` is sorted: inserting there keeps the order
            return np.insert(values, at, more), np.insert(ids, at, more_ids)

        def flags(ids: np.ndarray, more_ids: np.ndarray) -> np.ndarray:
            return np.concatenate([ids[~np.isin(ids, removed)], more_ids])

        return Column(*merge(self.numbers, self.number_ids, new.numbers, new.number_ids),
                      *merge(self.strings, self.string_ids, new.strings, new.string_ids),
                      flags(self.true_ids, new.true_ids), flags(self.false_ids, new.false_ids))

    def _sorted(self, value: Scalar) -> tuple[np.ndarray, np.ndarray]:
        return (self.strings, self.string_ids) if isinstance(value, str) else (self.numbers, self.number_ids)

    def equal(self, value: Scalar) -> np.ndarray:
        """Ids whose value equals `value` (same type)."""
        if isinstance(value, bool):
            return self.true_ids if value else self.false_ids
        values, ids = self._sorted(value)
        return ids[np.searchsorted(values, value, "left") : np.searchsorted(values, value, "right")]

    def between(self, bounds: dict[str, Scalar]) -> np.ndarray:
        """Ids whose value lies within range bounds (gte/gt/lte/lt; bounds of mixed types match nothing)."""
        if len({isinstance(b, str) for b in bounds.values()}) > 1:
            return self.number_ids[:0]
        values, ids = self._sorted(next(iter(bounds.values())))
        lo, hi = 0, len(values)
        if "gte" in bounds:
            lo = max(lo, int(np.searchsorted(values, bounds["gte"], "left")))
        if "gt" in bounds:
            lo = max(lo, int(np.searchsorted(values, bounds["gt"], "right")))
        if "lte" in bounds:
            hi = min(hi, int(np.searchsorted(values, bounds["lte"], "right")))
        if "lt" in bounds:
            hi = min(hi, int(np.searchsorted(values, bounds["lt"], "left")))
        return ids[lo:hi] if lo < hi else ids[:0]


def field_rows(item_id: int, metadata: dict[str, Any], field: str) -> list[tuple[int, str, Any]]:
    """The (id, JSON type, value) rows of one item's field, as `ItemStore.metadata_values` reads them."""
    value: Any = metadata
    for key in field.split("."):
        if not isinstance(value, dict) or key not in value:
            return []
        value = value[key]
    rows: list[tuple[int, str, Any]] = []
    for element in [] if isinstance(value, dict) else value if isinstance(value, list) else [value]:
        if isinstance(element, bool):
            rows.append((item_id, "true" if element else "false", int(element)))
        elif isinstance(element, int | float):
            if (number := finite_number(element)) is not None:
                rows.append((item_id, "real", number))
        elif isinstance(element, str):
            rows.append((item_id, "text", element))
    return rows


def check_filter(spec: dict[str, Any]) -> dict[str, Any]:
    """Validate a filter's shape; returns it unchanged or raises FilterError naming the bad field."""
    if not isinstance(spec, dict) or len(spec) > MAX_FIELDS:
        raise FilterError(f"filter must be a JSON object mapping up to {MAX_FIELDS} metadata fields to conditions")
    for field, condition in spec.items():
        if not isinstance(field, str) or not re.fullmatch(FIELD, field):
            raise FilterError(f"filter field {field!r}: use letters, digits, _ and -, dots for nested keys")
        if isinstance(condition, dict):
            _check_operators(field, condition)
        elif not _is_scalar(condition):
            raise FilterError(f"filter.{field}: give a string, number or boolean, or an operator object"
                              f"{_why_refused(condition)}")
    return spec


def _check_operators(field: str, condition: dict[str, Any]) -> None:
    unknown = set(condition) - set(OPERATORS)
    if not condition or unknown:
        raise FilterError(f"filter.{field}: operators are {', '.join(OPERATORS)}; got {sorted(unknown) or 'none'}")
    if "in" in condition:
        values = condition["in"]
        if not isinstance(values, list) or not 1 <= len(values) <= MAX_IN_VALUES or not all(map(_is_scalar, values)):
            note = next((_why_refused(v) for v in values if not _is_scalar(v)), "") if isinstance(values, list) else ""
            raise FilterError(f"filter.{field}.in: a list of 1 to {MAX_IN_VALUES} strings, numbers or booleans{note}")
    for op in RANGE_OPS:
        if op in condition and not (_is_scalar(condition[op]) and not isinstance(condition[op], bool)):
            raise FilterError(f"filter.{field}.{op}: a number, or a string such as an ISO date"
                              f"{_why_refused(condition[op])}")


def _is_scalar(value: Any) -> bool:
    return isinstance(value, bool) or (isinstance(value, str) and is_valid_text(value)) or is_safe_number(value)


def _why_refused(value: Any) -> str:
    """Why a number or a string was refused (empty for other values)."""
    if isinstance(value, str):
        return " (strings must be valid Unicode: no lone surrogates)"
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    return f" ({NUMBER_RULE})" if is_number else ""


class MetadataFilter:
    """Evaluates filters over an item store, caching one `Column` per (modality, field); writes update the
    cached columns in place of a rescan (`update`)."""

    def __init__(self, store: ItemStore) -> None:
        self.store = store
        self._columns: dict[tuple[str, str], Column] = {}
        self._lock = threading.Lock()
        self._generation = 0

    def invalidate(self) -> None:
        """Forget every column: the next filter on a field scans the store again."""
        with self._lock:
            self._columns.clear()
            self._generation += 1

    def update(self, modality: str, removed: Iterable[int] = (), added: Iterable[tuple[int, dict]] = ()) -> None:
        """Apply a committed write to the cached columns of `modality`: values of the `removed` ids out, the
        fields of the `added` (id, metadata) in. A column being loaded meanwhile is not cached (it may miss it)."""
        removed_ids = np.fromiter(removed, np.int64)
        added = list(added)
        with self._lock:
            self._generation += 1
            for (owner, field), column in list(self._columns.items()):
                if owner == modality:
                    rows = [row for item_id, meta in added for row in field_rows(item_id, meta, field)]
                    self._columns[(owner, field)] = column.changed(removed_ids, rows)

    def column(self, modality: str, field: str) -> Column:
        """The field's column, loaded from the store on first use."""
        with self._lock:
            cached = self._columns.get((modality, field))
            generation = self._generation
        if cached is not None:
            return cached
        column = Column.from_rows(self.store.metadata_values(modality, field.split(".")))
        with self._lock:
            if generation == self._generation:  # no write happened while loading
                self._columns[(modality, field)] = column
        return column

    def matching(self, modality: str, spec: dict[str, Any]) -> np.ndarray:
        """Sorted ids of `modality` items whose metadata satisfies every condition of `spec`."""
        result: np.ndarray | None = None
        for field, condition in check_filter(spec).items():
            ids = self._condition(self.column(modality, field), condition)
            result = ids if result is None else np.intersect1d(result, ids, assume_unique=True)
            if not len(result):
                break
        return self.store.ids(modality) if result is None else result

    @staticmethod
    def _condition(column: Column, condition: Any) -> np.ndarray:
        if not isinstance(condition, dict):
            return np.unique(column.equal(condition))
        parts = []
        if "in" in condition:
            parts.append(np.unique(np.concatenate([column.equal(v) for v in condition["in"]])))
        bounds = {op: condition[op] for op in RANGE_OPS if op in condition}
        if bounds:
            parts.append(np.unique(column.between(bounds)))
        ids = parts[0]
        for other in parts[1:]:
            ids = np.intersect1d(ids, other, assume_unique=True)
        return ids
