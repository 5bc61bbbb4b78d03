"""Captions of synthetic scenes: varied templates and synonyms, each binding a colour to a shape.

Every caption names at least one object as "colour + shape" (never a bare colour or a bare count), so
two scenes with the same colours but swapped shapes are told apart only by who has which colour.
Some captions describe the whole scene, others one object, its place, or one relation between two.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from retrieval.data.synth.scene import Scene, SceneObject, relations

CAPTIONS_PER_IMAGE = 5

_SHAPE_WORDS = {
    "circle": ("circle", "disc"),
    "square": ("square", "block"),
    "triangle": ("triangle",),
    "star": ("star",),
    "diamond": ("diamond", "rhombus"),
    "cross": ("cross", "plus sign"),
}
_SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
_RELATION_WORDS = {
    "left_of": ("left of", "to the left of", "on the left of"),
    "right_of": ("right of", "to the right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
    "next_to": ("next to", "beside", "near"),
    "bigger": ("bigger than", "larger than"),
    "smaller": ("smaller than",),
}
_PLACE_WORDS = {
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
_COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}


def describe(scene: Scene, rng: random.Random, n: int = CAPTIONS_PER_IMAGE) -> list[str]:
    """`n` distinct captions of `scene` (lower case, no final full stop), chosen with `rng`."""
    if len(scene.objects) == 1:
        kinds: list[Callable[[Scene, random.Random], str]] = [_whole, _place, _mention, _place, _mention]
    else:
        kinds = [_whole, _relation, _relation, _place, rng.choice((_mention, _count))]
    kinds = (kinds * (n // len(kinds) + 1))[:n]
    captions: list[str] = []
    for kind in kinds:
        for _ in range(20):  # redraw synonyms/templates until the caption is new
            caption = kind(scene, rng)
            if caption not in captions:
                break
        captions.append(caption)
    rng.shuffle(captions)
    return captions


def tokens(caption: str) -> list[str]:
    """Karpathy-style tokens (lower-case words), stored next to `raw` like the original files."""
    return caption.replace(",", " ").split()


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _noun(obj: SceneObject, rng: random.Random, size_p: float = 0.5) -> str:
    """"[size] colour shape", e.g. "small red circle"; the size word appears with probability size_p."""
    words = [rng.choice(_SIZE_WORDS[obj.size])] if rng.random() < size_p else []
    return " ".join([*words, obj.colour, rng.choice(_SHAPE_WORDS[obj.shape])])


def _whole(scene: Scene, rng: random.Random) -> str:
    """Every object, in random order: "three shapes: a red circle, a big blue square and a green star"."""
    objs = list(scene.objects)
    rng.shuffle(objs)
    names = [_article(_noun(o, rng)) for o in objs]
    listing = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    count = _COUNT_WORDS[len(objs)]
    if len(objs) == 1:
        prefix = rng.choice(("", "a single shape: ", "a picture of ", "only one shape, "))
    else:
        prefix = rng.choice(("", f"{count} shapes: ", "a picture of ", f"{count} objects, ", "an image with "))
    suffix = rng.choice(("", "", " on a grey background"))
    return prefix + listing + suffix


def _relation(scene: Scene, rng: random.Random) -> str:
    """One true relation between two objects: "a red circle to the left of a blue square"."""
    a, b = rng.sample(scene.objects, 2)
    relation = rng.choice(relations(a, b))
    words = rng.choice(_RELATION_WORDS[relation])
    size_p = 0.0 if relation in ("bigger", "smaller") else 0.3  # "a big x bigger than a small y" is redundant
    first, second = _noun(a, rng, size_p), _noun(b, rng, size_p)
    form = rng.randrange(3)
    if form == 0:
        return f"{_article(first)} {words} {_article(second)}"
    if form == 1:
        return f"the {first} is {words} the {second}"
    return f"there is {_article(first)} {words} {_article(second)}"


def _place(scene: Scene, rng: random.Random) -> str:
    """One object and where it is: "a small red circle in the top left corner"."""
    obj = rng.choice(scene.objects)
    place = rng.choice(_PLACE_WORDS[(obj.row, obj.col)])
    name = _article(_noun(obj, rng))
    form = rng.randrange(3)
    if form == 0:
        return f"{name} {place}"
    if form == 1:
        return f"{place} there is {name}"
    return f"{name} placed {place}"


def _mention(scene: Scene, rng: random.Random) -> str:
    """Just one object, whatever else is there: "there is a blue square"."""
    obj = rng.choice(scene.objects)
    name = _article(_noun(obj, rng))
    if len(scene.objects) == 1:
        forms = (f"{name} on its own", f"just {name}", f"a single {_noun(obj, rng)}", f"{name} and nothing else")
    else:
        forms = (f"there is {name}", f"{name} among other shapes", f"one of the shapes is {name}", f"a picture with {name}")
    return rng.choice(forms)


def _count(scene: Scene, rng: random.Random) -> str:
    """How many objects, plus one of them: "three shapes including a green star"."""
    obj = rng.choice(scene.objects)
    count = _COUNT_WORDS[len(scene.objects)]
    return rng.choice((f"{count} shapes including {_article(_noun(obj, rng))}",
                       f"{count} objects, one of them {_article(_noun(obj, rng))}"))
