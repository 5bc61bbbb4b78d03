"""The one rule for values in item metadata and in filters, and how stored values that break it are read.

Numbers: finite, and |x| ≤ 2^53 − 1 (JavaScript's `Number.MAX_SAFE_INTEGER`). Every integer in that range
has an exact double, so a value survives a round trip through any JSON client (browsers, `jq`, Python reading
numbers as floats) and the float64 comparison the filter columns make (`retrieval.index.filters`) orders it
exactly; every double beyond it is an integer that most clients silently round (2^53 + 1 reads back as 2^53).
It rules out NaN and ±Infinity (not JSON; SQLite's JSON functions reject them) and integers beyond 64 bits.
Larger quantities (nanosecond timestamps, 64-bit hashes) belong in strings.

Strings and keys: valid Unicode (no lone surrogates: they cannot be encoded as UTF-8, so SQLite cannot store
them and a JSON response holding one cannot be sent). Nesting: at most `MAX_DEPTH` levels of objects and arrays.

Items written by older versions may hold values that break the rule: `loads_stored` reads them so that a
search or listing never fails on them (NaN / Infinity as null, lone surrogates as U+FFFD), and the filter
columns treat such numbers as matching nothing (`finite_number`).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_SAFE_INTEGER = 2**53 - 1
MAX_DEPTH = 16
NUMBER_SCHEMA: dict[str, Any] = {"type": "number", "minimum": -MAX_SAFE_INTEGER, "maximum": MAX_SAFE_INTEGER}
NUMBER_RULE = f"numbers must be finite and within ±{MAX_SAFE_INTEGER} (±(2^53 − 1)); store larger values as strings"
_LONE_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def is_safe_number(value: Any) -> bool:
    """A JSON number (not a boolean) that the rule allows."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER  # exact for ints of any size, no float() overflow


def finite_number(value: Any) -> float | None:
    """A stored number as the float the filter columns compare, or None when it breaks the rule."""
    return float(value) if is_safe_number(value) else None


def is_valid_text(text: str) -> bool:
    """Encodable as UTF-8 (no lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def value_problem(value: Any, where: str = "", depth: int = 0) -> str | None:
    """The first way a JSON value (metadata) breaks the rule, as `where.key[2]: why` (`key[2]: why` inside a
    value whose place the caller names, `where` empty); None when it keeps the rule."""
    if not where and not isinstance(value, dict | list):
        where = "the value"
    if isinstance(value, str):
        return None if is_valid_text(value) else f"{where}: not valid Unicode (a lone surrogate)"
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return None if is_safe_number(value) else f"{where}: {_shown(value)} is not allowed: {NUMBER_RULE}"
    if isinstance(value, dict | list) and depth >= MAX_DEPTH:
        return f"{where}: nested more than {MAX_DEPTH} levels deep"
    if isinstance(value, dict):
        for key, element in value.items():
            if not isinstance(key, str) or not is_valid_text(key):
                return f"{where or 'the object'}: a key is not valid Unicode (a lone surrogate)"
            problem = value_problem(element, f"{where}.{key}" if where else key, depth + 1)
            if problem:
                return problem
        return None
    if isinstance(value, list):
        for n, element in enumerate(value):
            problem = value_problem(element, f"{where}[{n}]" if where else f"[{n}]", depth + 1)
            if problem:
                return problem
        return None
    return f"{where}: {type(value).__name__} is not a JSON value"


def _shown(number: int | float) -> str:
    """A number as a message can show it (an integer of 400 digits is cut)."""
    text = repr(number)
    return text if len(text) <= 24 else f"{text[:12]}…({len(text)} digits)"


def loads_stored(text: str) -> Any:
    """Parse stored metadata JSON so that it can always be sent back: NaN / ±Infinity (written by older versions)
    become null, lone surrogates U+FFFD. The scan for surrogate escapes costs a regex search, not a walk."""
    value = json.loads(text, parse_constant=lambda _: None)
    return _replace_surrogates(value) if _LONE_SURROGATE_ESCAPE.search(text) else value


def repaired_text(text: str) -> str:
    """The text with each lone surrogate replaced by U+FFFD (unchanged when it is valid)."""
    return text if is_valid_text(text) else "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)


def _replace_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return repaired_text(value)
    if isinstance(value, dict):
        return {_replace_surrogates(k): _replace_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_surrogates(v) for v in value]
    return value
