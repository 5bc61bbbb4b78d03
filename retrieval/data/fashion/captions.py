"""Captions of fashion scenes: every caption ties at least one garment to a place or to another garment.

Twin pictures hold the same garments in other cells, so a caption that only listed what is there would
fit both; here even the whole-scene caption says where each garment is. Places and relations are read
off the 2×2 grid cells (named with the corner words of the shared 3×3 vocabulary).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from retrieval.data.fashion.scene import Garment, Scene, relations
from retrieval.data.wording import (
    COUNT_WORDS,
    PLACE_WORDS,
    RELATION_WORDS,
    article,
    distinct_captions,
    listing,
    place_caption,
    relation_caption,
)

CLASS_WORDS = {
    "t-shirt": ("t-shirt", "tee", "tee shirt"),
    "trousers": ("pair of trousers", "pair of pants"),
    "pullover": ("pullover", "sweater", "jumper"),
    "dress": ("dress",),
    "coat": ("coat", "jacket"),
    "sandal": ("sandal",),
    "shirt": ("shirt", "blouse"),
    "sneaker": ("sneaker", "trainer", "running shoe"),
    "bag": ("bag", "handbag"),
    "ankle boot": ("ankle boot", "boot"),
}
ROW_WORDS = {0: ("along the top", "in the top row"), 1: ("along the bottom", "in the bottom row")}
COLUMN_WORDS = {0: ("on the left", "in the left column"), 1: ("on the right", "in the right column")}
SHORT_PLACES = {(0, 0): "top left", (0, 1): "top right", (1, 0): "bottom left", (1, 1): "bottom right"}

Maker = Callable[[Scene, random.Random], str]


def describe(scene: Scene, rng: random.Random) -> list[str]:
    """Five distinct captions of `scene` (lower case, no final full stop), chosen with `rng`."""
    if len(scene.garments) == 2:  # one pair: a second relation would often restate the first
        last = _line if _lines(scene) else _relation
        makers: list[Maker] = [_whole, _relation, _place, _count_and_place, last]
    else:
        last = rng.choice((_count_and_place, _line)) if _lines(scene) else _count_and_place
        makers = [_whole, _relation, _place, _relation_and_place, last]
    return distinct_captions(makers, scene, rng)


def _noun(garment: Garment, rng: random.Random) -> str:
    return rng.choice(CLASS_WORDS[garment.name])


def _place_words(garment: Garment, rng: random.Random) -> str:
    return rng.choice(PLACE_WORDS[(2 * garment.row, 2 * garment.col)])  # 2×2 cells = the 3×3 corners


def _whole(scene: Scene, rng: random.Random) -> str:
    """Every garment and its place, as a sentence ("a sneaker in the top left corner and a bag at the bottom
    right") or, always for four garments so that it fits 32 tokens, as a list ("top left: a sneaker, …")."""
    garments = list(scene.garments)
    rng.shuffle(garments)
    count = COUNT_WORDS[len(garments)]
    if len(garments) == 4 or rng.random() < 0.5:
        if rng.random() < 0.5:
            garments.sort(key=lambda g: (g.row, g.col))  # reading order, else the shuffled one
        parts = [f"{SHORT_PLACES[(g.row, g.col)]}: {article(_noun(g, rng))}" for g in garments]
        prefix = rng.choice(("", f"{count} items, ", f"{count} products, ")) if len(garments) < 4 else ""
        return prefix + ", ".join(parts)
    parts = [f"{article(_noun(g, rng))} {_place_words(g, rng)}" for g in garments]
    return rng.choice(("", f"{count} items: ", "a photo of ", f"{count} products, ")) + listing(parts)


def _relation(scene: Scene, rng: random.Random) -> str:
    """One true relation between two garments: "a sneaker to the left of a bag"."""
    a, b = rng.sample(scene.garments, 2)
    words = rng.choice(RELATION_WORDS[rng.choice(relations(a, b))])
    return relation_caption(_noun(a, rng), words, _noun(b, rng), rng)


def _place(scene: Scene, rng: random.Random) -> str:
    """One garment and where it is: "a bag in the bottom right corner"."""
    garment = rng.choice(scene.garments)
    return place_caption(article(_noun(garment, rng)), _place_words(garment, rng), rng)


def _relation_and_place(scene: Scene, rng: random.Random) -> str:
    """A relation between two garments and the place of a third: "a dress above a coat, a bag at the top right"."""
    a, b, c = rng.sample(scene.garments, 3)
    words = rng.choice(RELATION_WORDS[rng.choice(relations(a, b))])
    joint = rng.choice((", ", " and ", ", with "))
    return f"{article(_noun(a, rng))} {words} {article(_noun(b, rng))}{joint}{article(_noun(c, rng))} {_place_words(c, rng)}"


def _count_and_place(scene: Scene, rng: random.Random) -> str:
    """How many garments, plus where one of them is: "three items, with a bag in the lower right"."""
    garment = rng.choice(scene.garments)
    count, name, place = COUNT_WORDS[len(scene.garments)], article(_noun(garment, rng)), _place_words(garment, rng)
    return rng.choice((f"{count} items, with {name} {place}", f"{count} products including {name} {place}",
                       f"{count} things; {place} there is {name}"))


def _lines(scene: Scene) -> list[tuple[Garment, Garment]]:
    """Pairs of garments sharing a row or a column, in reading order (left→right, top→bottom)."""
    ordered = sorted(scene.garments, key=lambda g: (g.row, g.col))
    return [(a, b) for i, a in enumerate(ordered) for b in ordered[i + 1:] if a.row == b.row or a.col == b.col]


def _line(scene: Scene, rng: random.Random) -> str:
    """Two garments of one row or column in order: "from left to right along the top: a sneaker and a bag"."""
    a, b = rng.choice(_lines(scene))
    pair = f"{article(_noun(a, rng))} and {article(_noun(b, rng))}"
    if a.row == b.row:
        return f"from left to right {rng.choice(ROW_WORDS[a.row])}: {pair}"
    return f"from top to bottom {rng.choice(COLUMN_WORDS[a.col])}: {pair}"
