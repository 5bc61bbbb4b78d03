"""Caption words and helpers shared by the generated datasets (synth shapes, fashion garments).

Places are named on a 3×3 grid (row, col), 0 = top / left; a 2×2 grid uses the corners. Relations are
keys such as "left_of" that each generator reads off its own grid cells, so they hold in the pixels.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TypeVar

SceneT = TypeVar("SceneT")

RELATION_WORDS = {
    "left_of": ("left of", "to the left of", "on the left of"),
    "right_of": ("right of", "to the right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
    "next_to": ("next to", "beside", "near"),
    "bigger": ("bigger than", "larger than"),
    "smaller": ("smaller than",),
}
PLACE_WORDS = {
    (0, 0): ("in the top left corner", "at the top left", "in the upper left"),
    (0, 1): ("at the top", "in the top middle", "near the top edge"),
    (0, 2): ("in the top right corner", "at the top right", "in the upper right"),
    (1, 0): ("on the left", "at the left side", "on the left edge"),
    (1, 1): ("in the centre", "in the middle", "at the center"),
    (1, 2): ("on the right", "at the right side", "on the right edge"),
    (2, 0): ("in the bottom left corner", "at the bottom left", "in the lower left"),
    (2, 1): ("at the bottom", "in the bottom middle", "near the bottom edge"),
    (2, 2): ("in the bottom right corner", "at the bottom right", "in the lower right"),
}
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}


def article(phrase: str) -> str:
    """"a"/"an" + phrase, by its first letter (good enough for the datasets' own nouns)."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def listing(names: Sequence[str]) -> str:
    """"x", "x and y", "x, y and z"."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def relation_caption(first: str, words: str, second: str, rng: random.Random) -> str:
    """One of three sentence forms for "first (words) second", e.g. "the red circle is left of the blue square"."""
    forms = (f"{article(first)} {words} {article(second)}", f"the {first} is {words} the {second}",
             f"there is {article(first)} {words} {article(second)}")
    return forms[rng.randrange(3)]


def place_caption(name: str, place: str, rng: random.Random) -> str:
    """One of three sentence forms for "name (at) place"; `name` comes with its article."""
    return (f"{name} {place}", f"{place} there is {name}", f"{name} placed {place}")[rng.randrange(3)]


def distinct_captions(
    makers: Sequence[Callable[[SceneT, random.Random], str]], scene: SceneT, rng: random.Random,
) -> list[str]:
    """One caption per maker, each redrawn (synonyms, templates) until it is new, in shuffled order."""
    captions: list[str] = []
    for make in makers:
        for _ in range(20):
            caption = make(scene, rng)
            if caption not in captions:
                break
        captions.append(caption)
    rng.shuffle(captions)
    return captions


def tokens(caption: str) -> list[str]:
    """Karpathy-style tokens (lower-case words), stored next to `raw` like the original files."""
    return caption.replace(",", " ").split()
