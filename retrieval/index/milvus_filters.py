"""The metadata filter grammar (`retrieval.index.filters`) as Milvus boolean expressions, with the same answers.

Milvus's own comparisons on a JSON field are looser than ours (a JSON `true` equals `1` there, and nothing
compares "any element of a list"), so expressions never test `metadata` itself. Every item carries a second
JSON field, `facets`, derived from its metadata on each write by `facets_of`: for each dotted path a filter can
name, the path's values split by type, exactly as `filters.field_rows` reads them (the FAISS backend's rule):

    n:PATH  [numbers]    s:PATH  [strings]    b:PATH  [0 | 1 for false | true]
    N:PATH  the number   S:PATH  the string   (only when the path holds exactly one of that type)
    L:PATH  1            (the path holds several numbers or several strings)

An equality or `in` is then `json_contains(_any)` on one typed list (so "2020" never meets 2020, nor true 1,
and a list matches when any element does); a range bound compares the typed scalar `N:`/`S:` key. "Some element
of a list lies in the range" has no Milvus expression: for those, `refine_ranges` reads the few items marked
`L:PATH` and checks their values here, and the expression names the matching ids.

Injection: field names are checked by `check_filter` (letters, digits, `_`, `-`, dots) and still written as
quoted string literals; values are rendered by `literal` — numbers through `float` (finite, by `check_filter`),
strings quoted with every quote and backslash escaped. Milvus Lite does not take expression templates
(`filter_params`), so quoting is ours; tests feed hostile keys and values through both backends.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from retrieval.index.filters import RANGE_OPS, check_filter, field_rows

FACETS = "facets"
KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")  # one segment of `filters.FIELD`
MAX_DEPTH = 8  # `filters.FIELD` allows up to 8 segments
NOTHING = "id < 0"  # matches no item (ids are positive)
_OPS = {"gte": ">=", "gt": ">", "lte": "<=", "lt": "<"}
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _paths(metadata: dict[str, Any], prefix: str = "", depth: int = 1) -> Iterable[str]:
    """Every dotted path a filter can name in this metadata (keys a filter cannot spell are unreachable)."""
    for key, value in metadata.items():
        if not isinstance(key, str) or not KEY.fullmatch(key):
            continue
        path = f"{prefix}{key}"
        yield path
        if isinstance(value, dict) and depth < MAX_DEPTH:
            yield from _paths(value, f"{path}.", depth + 1)


def facets_of(metadata: dict[str, Any]) -> dict[str, Any]:
    """The typed values of every filterable path (see the module docstring)."""
    facets: dict[str, Any] = {}
    for path in _paths(metadata):
        rows = field_rows(0, metadata, path)
        typed = {
            "n": sorted({float(v) for _, kind, v in rows if kind == "real"}),
            "s": sorted({v for _, kind, v in rows if kind == "text"}),
            "b": sorted({int(v) for _, kind, v in rows if kind in ("true", "false")}),
        }
        for tag, values in typed.items():
            if values:
                facets[f"{tag}:{path}"] = values
        for tag in ("n", "s"):
            if len(typed[tag]) == 1:
                facets[f"{tag.upper()}:{path}"] = typed[tag][0]
            elif len(typed[tag]) > 1:
                facets[f"L:{path}"] = 1
    return facets


def literal(value: Any) -> str:
    """A filter value as a Milvus expression literal (bools as 0/1: the `b:` lists hold those)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float):
        return repr(float(value))
    if isinstance(value, str):
        return '"' + "".join(_ESCAPES.get(ch, ch) for ch in value) + '"'
    raise TypeError(f"not a filter value: {value!r}")


def _key(tag: str, field: str) -> str:
    return f"{FACETS}[{literal(f'{tag}:{field}')}]"


def _tag(value: Any) -> str:
    return "b" if isinstance(value, bool) else "s" if isinstance(value, str) else "n"


def _equal_any(field: str, values: list[Any]) -> str:
    """Some element of the field equals one of `values` (type for type)."""
    parts = []
    for tag in ("n", "s", "b"):
        same = [literal(v) for v in values if _tag(v) == tag]
        if same:
            parts.append(f"json_contains_any({_key(tag, field)}, [{', '.join(same)}])")
    return " or ".join(parts)


@dataclass
class RangeCondition:
    """A field's range bounds (all of one type), which items holding a list of values must have checked here."""

    field: str
    bounds: dict[str, Any]

    @property
    def tag(self) -> str:
        return _tag(next(iter(self.bounds.values())))

    def scalar_expression(self) -> str:
        key = _key(self.tag.upper(), self.field)
        return " and ".join(f"{key} {_OPS[op]} {literal(bound)}" for op, bound in self.bounds.items())

    def holds(self, facets: dict[str, Any]) -> bool:
        """Does some value of the field (in an item's facets) lie within the bounds?"""
        values = facets.get(f"{self.tag}:{self.field}", [])
        return any(_within(v, self.bounds) for v in values)

    def list_marker(self) -> str:
        return f"exists {_key('L', self.field)}"


def _within(value: Any, bounds: dict[str, Any]) -> bool:
    return all({"gte": value >= b, "gt": value > b, "lte": value <= b, "lt": value < b}[op] for op, b in bounds.items())


@dataclass
class MilvusFilter:
    """A checked filter as expression parts, one per field (`refine_ranges` makes the final expression)."""

    parts: list[str]  # ANDed; one per condition (a range condition's part completed by `refine_ranges`)
    ranges: list[tuple[int, RangeCondition]]  # (position in `parts`, condition) of the range conditions
    empty: bool = False  # a condition nothing can satisfy (range bounds of mixed types)


def translate(spec: dict[str, Any]) -> MilvusFilter:
    """A filter (checked by `check_filter`; FilterError otherwise) → its expression, ranges not yet refined."""
    parts: list[str] = []
    ranges: list[tuple[int, RangeCondition]] = []
    empty = False
    for field, condition in check_filter(spec).items():
        if not isinstance(condition, dict):
            parts.append(_equal_any(field, [condition]))
            continue
        clauses = [f"({_equal_any(field, condition['in'])})"] if "in" in condition else []
        bounds = {op: condition[op] for op in RANGE_OPS if op in condition}
        if bounds and len({isinstance(b, str) for b in bounds.values()}) > 1:
            empty = True  # bounds of mixed types match nothing (as in `filters.Column.between`)
        elif bounds:
            ranges.append((len(parts), RangeCondition(field, bounds)))
        parts.append(" and ".join(clauses) or "id > 0")
    return MilvusFilter(parts, ranges, empty)


def refine_ranges(restriction: MilvusFilter, scan: Callable[[str], Iterable[tuple[int, dict[str, Any]]]]) -> str:
    """The final expression: each range condition is "the scalar compares" or "one of these ids", where the ids
    are those items holding a list at the field whose values `RangeCondition.holds` (`scan(expression)` yields
    (id, facets) of the items matching an expression)."""
    if restriction.empty:
        return NOTHING
    parts = list(restriction.parts)
    for position, condition in restriction.ranges:
        listed = sorted(item_id for item_id, facets in scan(condition.list_marker()) if condition.holds(facets))
        either = f"({condition.scalar_expression()})"
        if listed:
            either = f"{either} or id in {json.dumps(listed)}"
        parts[position] = f"({parts[position]}) and ({either})"
    return " and ".join(f"({p})" for p in parts)
