"""Scenes of the synthetic dataset: a few coloured shapes on a 3×3 grid, and the facts captions can state.

Geometry is in canvas fractions (0..1), so the same scene renders at any pixel size. Each object sits
inside its own grid cell, so "left of" / "above" read off the cells are always true in the picture.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
COLOURS = {
    "red": (215, 40, 40),
    "green": (40, 160, 60),
    "blue": (45, 85, 220),
    "yellow": (240, 215, 45),
    "purple": (140, 60, 185),
    "orange": (245, 135, 30),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
SIZES = ("small", "large")
GRID = 3
_RADIUS = {"small": 0.085, "large": 0.14}  # fraction of the canvas; a cell is 1/3 wide
_OBJECT_COUNTS = (1, 2, 3, 4)
_COUNT_WEIGHTS = (2, 4, 3, 2)


@dataclass(frozen=True)
class SceneObject:
    """One shape: what it is (shape, colour, size), where (grid cell; centre and radius as fractions)."""

    shape: str
    colour: str
    size: str
    row: int  # 0 = top
    col: int  # 0 = left
    x: float
    y: float
    radius: float
    tint: tuple[int, int, int]  # small per-object colour jitter, so colours are not single RGB values

    def to_json(self) -> dict:
        """The facts a caption can use, stored next to the captions in dataset.json."""
        return {"shape": self.shape, "colour": self.colour, "size": self.size, "row": self.row, "col": self.col,
                "x": round(self.x, 4), "y": round(self.y, 4), "radius": round(self.radius, 4)}


@dataclass(frozen=True)
class Scene:
    """A background grey level and 1–4 objects with distinct (colour, shape) pairs."""

    background: int
    objects: tuple[SceneObject, ...]


def sample_scene(rng: random.Random) -> Scene:
    """Draw a random scene; all randomness comes from `rng` (deterministic per seed)."""
    n = rng.choices(_OBJECT_COUNTS, weights=_COUNT_WEIGHTS)[0]
    cells = rng.sample(range(GRID * GRID), n)
    kinds: list[tuple[str, str]] = []
    while len(kinds) < n:  # distinct (colour, shape) so "the red circle" names one object
        kind = (rng.choice(tuple(COLOURS)), rng.choice(SHAPES))
        if kind not in kinds:
            kinds.append(kind)
    objects = []
    for cell, (colour, shape) in zip(cells, kinds, strict=True):
        size = rng.choice(SIZES)
        radius = _RADIUS[size] * rng.uniform(0.9, 1.1)
        row, col = divmod(cell, GRID)
        slack = max(0.0, 0.5 / GRID - radius - 0.01)  # room to move without leaving the cell
        x = (col + 0.5) / GRID + rng.uniform(-slack, slack)
        y = (row + 0.5) / GRID + rng.uniform(-slack, slack)
        tint = tuple(rng.randint(-12, 12) for _ in range(3))
        objects.append(SceneObject(shape, colour, size, row, col, x, y, radius, tint))
    return Scene(background=rng.randint(110, 150), objects=tuple(objects))


def swap_shapes(scene: Scene, a: int, b: int) -> Scene:
    """The same colours, sizes and places, with the shapes of objects a and b exchanged.

    Its bag of colours and bag of shapes equal the original's: only binding colour to shape tells the
    two apart, which is what the twin pairs of the dataset test.
    """
    objects = list(scene.objects)
    objects[a], objects[b] = (replace(objects[a], shape=objects[b].shape), replace(objects[b], shape=objects[a].shape))
    return replace(scene, objects=tuple(objects))


def swappable_pair(scene: Scene, rng: random.Random) -> tuple[int, int] | None:
    """Two objects whose shapes and colours both differ (so a swap changes the picture), or None."""
    objs = scene.objects
    kinds = {(o.colour, o.shape) for o in objs}
    pairs = [
        (i, j)
        for i in range(len(objs))
        for j in range(i + 1, len(objs))
        if objs[i].shape != objs[j].shape
        and objs[i].colour != objs[j].colour
        # after the swap, (colour, shape) pairs must stay distinct within the scene
        and (objs[i].colour, objs[j].shape) not in kinds
        and (objs[j].colour, objs[i].shape) not in kinds
    ]
    return rng.choice(pairs) if pairs else None


def relations(a: SceneObject, b: SceneObject) -> list[str]:
    """Relation keys true of (a, b): left_of, right_of, above, below, next_to, bigger, smaller."""
    found = []
    if a.col < b.col:
        found.append("left_of")
    if a.col > b.col:
        found.append("right_of")
    if a.row < b.row:
        found.append("above")
    if a.row > b.row:
        found.append("below")
    if max(abs(a.row - b.row), abs(a.col - b.col)) == 1:
        found.append("next_to")
    if a.size != b.size:
        found.append("bigger" if a.size == "large" else "smaller")
    return found
