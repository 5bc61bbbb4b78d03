"""The fashion benchmark's ceiling: the recall of an oracle that knows every garment's class and place.

A caption is true of many pictures ("a bag in the bottom right corner" fits every picture with a bag
there), so no model can reach 100 %: the captions cap recall, and a model's score means something only
next to that cap. The oracle reads each caption's facts (which garment is in which cell, which is left of
or above which, how many there are; a caption naming the place of every garment lists the whole scene, so
only pictures with exactly those garments fit it), finds the c pictures the caption fits, and scores the
caption against each of them 1 / c — the chance that it was written for that picture when all c are
equally likely — and 0 against the rest. Equal scores are ranked in random order, and the ceiling is the
*expected* recall over that order: a caption finds its picture in the top K with probability
min(1, K / c); a picture's captions come among the others that fit it, more specific ones first.
Same keys as `retrieval.metrics` (percent), without ranks.

It is the ceiling of a reader that knows what is true, not a bound on every model: how likely a caption
is for a picture also depends on the picture (a caption about one garment comes more often from a picture
with two garments than from one with four), and a model can learn that too.

The reader is exact for the captions `retrieval.data.fashion.captions` writes, and refuses any other: a
garment named but tied to no place or garment, or a caption false of its own picture, is an error, so a
change to the templates cannot quietly inflate the ceiling.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from math import comb
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.data.fashion.captions import CLASS_WORDS, COLUMN_WORDS, ROW_WORDS, SHORT_PLACES
from retrieval.data.fashion.scene import CLASSES
from retrieval.data.generated import CEILING_FILE
from retrieval.data.wording import COUNT_WORDS, PLACE_WORDS, RELATION_WORDS

KS = (1, 5, 10)
SPLITS = ("val", "test")


def _alternatives(words: dict[str, Any]) -> str:
    """A regex group of the given phrases, longest first (so "ankle boot" wins over "boot")."""
    return "(" + "|".join(sorted(map(re.escape, words), key=len, reverse=True)) + ")"


_CLASS_OF = {word: CLASSES.index(name) for name, words in CLASS_WORDS.items() for word in words}
# 2×2 cells are the corners of the shared 3×3 place vocabulary, or "top left: …" in whole-scene lists
_CELL_OF = {word: (r // 2, c // 2) for (r, c), words in PLACE_WORDS.items() if 1 not in (r, c) for word in words}
_SHORT_CELL_OF = {word: cell for cell, word in SHORT_PLACES.items()}
_RELATION_OF = {w: key for key in ("left_of", "right_of", "above", "below") for w in RELATION_WORDS[key]}
_ROW_OF = {w: row for row, words in ROW_WORDS.items() for w in words}
_COLUMN_OF = {w: col for col, words in COLUMN_WORDS.items() for w in words}
_COUNT_OF = {word: n for n, word in COUNT_WORDS.items()}

_G, _A = _alternatives(_CLASS_OF), "an? "
_NOUN = re.compile(rf"\b{_G}\b")
_PLACED = (  # (pattern, group of the noun, group of the place, place table)
    (re.compile(rf"\b{_G} (?:placed )?{_alternatives(_CELL_OF)}"), 1, 2, _CELL_OF),
    (re.compile(rf"{_alternatives(_CELL_OF)} there is {_A}{_G}\b"), 2, 1, _CELL_OF),
    (re.compile(rf"{_alternatives(_SHORT_CELL_OF)}: {_A}{_G}\b"), 2, 1, _SHORT_CELL_OF),
)
_RELATION = re.compile(rf"\b{_G} (?:is )?{_alternatives(_RELATION_OF)} (?:an?|the) {_G}\b")
_ROW_LINE = re.compile(rf"from left to right {_alternatives(_ROW_OF)}: {_A}{_G} and {_A}{_G}\b")
_COLUMN_LINE = re.compile(rf"from top to bottom {_alternatives(_COLUMN_OF)}: {_A}{_G} and {_A}{_G}\b")
_COUNT = re.compile(rf"\b{_alternatives(_COUNT_OF)} (?:items|products|things)\b")


@dataclass
class Facts:
    """What one caption says: garments in cells, relations between garments, the number of garments, and
    (for a caption placing every garment of its scene) the exact set of classes."""

    cells: dict[int, tuple[int, int]] = field(default_factory=dict)  # class → (row, col)
    relations: list[tuple[int, str, int]] = field(default_factory=list)
    count: int | None = None
    exactly: frozenset[int] | None = None


def read_caption(caption: str) -> Facts:
    """The facts of one caption; ValueError when a garment it names is tied to no place or garment."""
    facts, bound = Facts(), []
    for pattern, noun, place, table in _PLACED:
        for m in pattern.finditer(caption):
            facts.cells[_CLASS_OF[m[noun]]] = table[m[place]]
            bound.append(m.span())
    placed = len(facts.cells)
    for m in _RELATION.finditer(caption):
        facts.relations.append((_CLASS_OF[m[1]], _RELATION_OF[m[2]], _CLASS_OF[m[3]]))
        bound.append(m.span())
    for pattern, lines in ((_ROW_LINE, _ROW_OF), (_COLUMN_LINE, _COLUMN_OF)):
        for m in pattern.finditer(caption):
            line = lines[m[1]]
            first, second = ((line, 0), (line, 1)) if pattern is _ROW_LINE else ((0, line), (1, line))
            facts.cells[_CLASS_OF[m[2]]], facts.cells[_CLASS_OF[m[3]]] = first, second
            bound.append(m.span())
    if m := _COUNT.search(caption):
        facts.count = _COUNT_OF[m[1]]
    if placed >= 2:  # only a whole-scene caption gives two garments their own place words
        facts.exactly = frozenset(facts.cells)
    for m in _NOUN.finditer(caption):
        if not any(lo <= m.start() and m.end() <= hi for lo, hi in bound):
            raise ValueError(f"the ceiling's caption reader does not understand {caption!r} (what of {m[0]!r}?)")
    return facts


def true_of(facts: Facts, cells: np.ndarray) -> np.ndarray:
    """(N,) bool: whether the caption is true of each picture; `cells` (N, classes) holds each class's cell
    as row·2 + col, -1 where the picture has none."""
    ok = np.ones(len(cells), bool)
    for label, (row, col) in facts.cells.items():
        ok &= cells[:, label] == 2 * row + col
    for a, key, b in facts.relations:
        ca, cb = cells[:, a], cells[:, b]
        rows, cols = (ca // 2, cb // 2), (ca % 2, cb % 2)
        holds = {"left_of": cols[0] < cols[1], "right_of": cols[0] > cols[1],
                 "above": rows[0] < rows[1], "below": rows[0] > rows[1]}[key]
        ok &= (ca >= 0) & (cb >= 0) & holds
    present = cells >= 0
    if facts.count is not None:
        ok &= present.sum(1) == facts.count
    if facts.exactly is not None:
        wanted = np.zeros(cells.shape[1], bool)
        wanted[list(facts.exactly)] = True
        ok &= (present == wanted).all(1)
    return ok


def split_ceiling(entries: list[dict[str, Any]]) -> dict[str, float]:
    """Expected recall of the oracle on one split's Karpathy entries (each with its `garments`)."""
    cells = np.full((len(entries), len(CLASSES)), -1, np.int64)
    for i, entry in enumerate(entries):
        for g in entry["garments"]:
            cells[i, g["label"]] = 2 * g["row"] + g["col"]
    truth, owner = [], []
    for i, entry in enumerate(entries):
        for sentence in entry["sentences"]:
            fits = true_of(read_caption(sentence["raw"]), cells)
            if not fits[i]:
                raise ValueError(f"the ceiling's caption reader finds {sentence['raw']!r} false of its own picture")
            truth.append(fits)
            owner.append(i)
    fits, owner = np.stack(truth), np.asarray(owner)  # (captions, images), (captions,)
    per_caption = fits.sum(1)  # how many pictures each caption fits: its score against them is 1 / that
    hits = [[_own_in_top(per_caption[fits[:, i]], owner[fits[:, i]] == i, k) for i in range(len(entries))]
            for k in KS]
    out = {f"i2t_r{k}": 100.0 * float(np.mean(h)) for k, h in zip(KS, hits, strict=True)}
    out |= {f"t2i_r{k}": 100.0 * float(np.mean(np.minimum(1.0, k / per_caption))) for k in KS}
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in KS)
    return {"images": len(entries), "captions": len(owner), **out}


def _own_in_top(spread: np.ndarray, own: np.ndarray, k: int) -> float:
    """P(an own caption is in the top k) when the captions that fit a picture rank by how few pictures they
    fit (`spread`, ascending), equal ones in random order; `own` marks the picture's own captions."""
    before = 0
    for value in np.unique(spread):
        group = spread == value
        size, mine = int(group.sum()), int((group & own).sum())
        if before + size > k:  # the top k ends inside this group: k − before of its captions, drawn at random
            return 1.0 - comb(size - mine, k - before) / comb(size, k - before)
        if mine:
            return 1.0
        before += size
    return 0.0


def write_ceiling(dataset_json: str | Path) -> Path:
    """Compute the val and test ceilings of a fashion dataset.json and write them beside it (atomically);
    kept as is when it was computed for the same generation parameters."""
    dataset_json = Path(dataset_json)
    data = json.loads(dataset_json.read_text())
    out = dataset_json.parent / CEILING_FILE
    params = data.get(data["dataset"])
    try:
        if json.loads(out.read_text()).get("params") == params:
            return out
    except (OSError, ValueError):
        pass
    splits = {s: split_ceiling([e for e in data["images"] if e["split"] == s]) for s in SPLITS}
    report = {
        "dataset": data["dataset"],
        "params": params,
        "oracle": "knows each garment's class and cell; a caption scores 1/c against each of the c pictures "
                  "it is true of, 0 elsewhere; ties in random order (expected recall)",
        "splits": splits,
    }
    tmp = out.with_name(f".{CEILING_FILE}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, out)
    return out


def read_ceiling(dataset_json: str | Path, split: str, n_images: int, n_captions: int) -> dict[str, float] | None:
    """The ceiling of `split` recorded beside a dataset.json, when there is one for exactly this split's
    images and captions (None otherwise: another dataset, a subset, or no ceiling)."""
    try:
        recorded = json.loads((Path(dataset_json).parent / CEILING_FILE).read_text())["splits"].get(split)
    except (OSError, ValueError, KeyError, AttributeError):
        return None
    if not recorded or (recorded["images"], recorded["captions"]) != (n_images, n_captions):
        return None
    return recorded
