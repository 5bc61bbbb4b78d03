"""Captions of synthetic scenes: varied templates and synonyms, each binding a colour to a shape.

Every caption names at least one object as "colour + shape" (never a bare colour or a bare count), so
two scenes with the same colours but swapped shapes are told apart only by who has which colour.
Some captions describe the whole scene, others one object, its place, or one relation between two.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from retrieval.data.synth.scene import Scene, SceneObject, relations
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


def describe(scene: Scene, rng: random.Random, n: int = CAPTIONS_PER_IMAGE) -> list[str]:
    """`n` distinct captions of `scene` (lower case, no final full stop), chosen with `rng`."""
    if len(scene.objects) == 1:
        kinds: list[Callable[[Scene, random.Random], str]] = [_whole, _place, _mention, _place, _mention]
    else:
        kinds = [_whole, _relation, _relation, _place, rng.choice((_mention, _count))]
    kinds = (kinds * (n // len(kinds) + 1))[:n]
    return distinct_captions(kinds, scene, rng)


def _noun(obj: SceneObject, rng: random.Random, size_p: float = 0.5) -> str:
    """"[size] colour shape", e.g. "small red circle"; the size word appears with probability size_p."""
    words = [rng.choice(_SIZE_WORDS[obj.size])] if rng.random() < size_p else []
    return " ".join([*words, obj.colour, rng.choice(_SHAPE_WORDS[obj.shape])])


def _whole(scene: Scene, rng: random.Random) -> str:
    """Every object, in random order: "three shapes: a red circle, a big blue square and a green star"."""
    objs = list(scene.objects)
    rng.shuffle(objs)
    names = [article(_noun(o, rng)) for o in objs]
    count = COUNT_WORDS[len(objs)]
    if len(objs) == 1:
        prefix = rng.choice(("", "a single shape: ", "a picture of ", "only one shape, "))
    else:
        prefix = rng.choice(("", f"{count} shapes: ", "a picture of ", f"{count} objects, ", "an image with "))
    suffix = rng.choice(("", "", " on a grey background"))
    return prefix + listing(names) + suffix


def _relation(scene: Scene, rng: random.Random) -> str:
    """One true relation between two objects: "a red circle to the left of a blue square"."""
    a, b = rng.sample(scene.objects, 2)
    relation = rng.choice(relations(a, b))
    words = rng.choice(RELATION_WORDS[relation])
    size_p = 0.0 if relation in ("bigger", "smaller") else 0.3  # "a big x bigger than a small y" is redundant
    first, second = _noun(a, rng, size_p), _noun(b, rng, size_p)
    return relation_caption(first, words, second, rng)


def _place(scene: Scene, rng: random.Random) -> str:
    """One object and where it is: "a small red circle in the top left corner"."""
    obj = rng.choice(scene.objects)
    place = rng.choice(PLACE_WORDS[(obj.row, obj.col)])
    return place_caption(article(_noun(obj, rng)), place, rng)


def _mention(scene: Scene, rng: random.Random) -> str:
    """Just one object, whatever else is there: "there is a blue square"."""
    obj = rng.choice(scene.objects)
    name = article(_noun(obj, rng))
    if len(scene.objects) == 1:
        forms = (f"{name} on its own", f"just {name}", f"a single {_noun(obj, rng)}", f"{name} and nothing else")
    else:
        forms = (f"there is {name}", f"{name} among other shapes", f"one of the shapes is {name}", f"a picture with {name}")
    return rng.choice(forms)


def _count(scene: Scene, rng: random.Random) -> str:
    """How many objects, plus one of them: "three shapes including a green star"."""
    obj = rng.choice(scene.objects)
    count = COUNT_WORDS[len(scene.objects)]
    return rng.choice((f"{count} shapes including {article(_noun(obj, rng))}",
                       f"{count} objects, one of them {article(_noun(obj, rng))}"))
