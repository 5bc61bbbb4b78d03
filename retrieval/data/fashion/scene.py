"""Scenes of the fashion dataset: 2–4 Fashion-MNIST photos of different classes, each in its own cell of
a 2×2 grid, slightly scaled and shifted, on the photos' own black background.

Geometry is in canvas fractions (0..1), so a scene renders at any pixel size. Each garment stays inside
its cell, so "left of" / "above" read off the cells are always true in the picture.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from retrieval.data.fashion.source import Pool

# Fashion-MNIST's label order (0 = "T-shirt/top" … 9 = "Ankle boot"), as caption-ready nouns.
CLASSES = ("t-shirt", "trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
GRID = 2
_COUNTS = (2, 3, 4)
_COUNT_WEIGHTS = (3, 4, 3)
_SIDE = (0.75, 0.95)  # garment side as a fraction of its cell (28 px photos become 24–30 px at 64 px)


@dataclass(frozen=True)
class Garment:
    """One photo: which (class label, source file, row in it) and where (cell; centre and side as fractions)."""

    label: int
    source: str  # "train" or "t10k"
    index: int
    row: int  # 0 = top
    col: int  # 0 = left
    x: float
    y: float
    side: float

    @property
    def name(self) -> str:
        return CLASSES[self.label]

    def to_json(self) -> dict:
        """The facts a caption can use and where the photo came from, stored in dataset.json."""
        return {"class": self.name, "label": self.label, "source": self.source, "index": self.index,
                "row": self.row, "col": self.col, "x": round(self.x, 4), "y": round(self.y, 4),
                "side": round(self.side, 4)}


@dataclass(frozen=True)
class Scene:
    """2–4 garments of distinct classes, in distinct cells."""

    garments: tuple[Garment, ...]


def sample_scene(rng: random.Random, pool: Pool) -> Scene:
    """Draw a random scene from `pool`; all randomness comes from `rng` (deterministic per seed)."""
    labels = list(pool.by_label)
    n = min(rng.choices(_COUNTS, weights=_COUNT_WEIGHTS)[0], len(labels))
    cells = rng.sample(range(GRID * GRID), n)
    garments = []
    for cell, label in zip(cells, rng.sample(labels, n), strict=True):  # distinct classes: "the bag" is one
        candidates = pool.by_label[label]
        index = candidates[rng.randrange(len(candidates))]
        row, col = divmod(cell, GRID)
        side = rng.uniform(*_SIDE) / GRID
        slack = (1 / GRID - side) / 2
        x = (col + 0.5) / GRID + rng.uniform(-slack, slack)
        y = (row + 0.5) / GRID + rng.uniform(-slack, slack)
        garments.append(Garment(label, pool.source, index, row, col, x, y, side))
    return Scene(tuple(garments))


def swap_places(scene: Scene, a: int, b: int) -> Scene:
    """The same photos and places, with the photos of garments a and b exchanged.

    Both pictures hold the same garments (the very same photos), so only where each one is tells them
    apart: what the twin pairs of the dataset test.
    """
    g = list(scene.garments)
    photo = ("label", "source", "index")
    g[a], g[b] = (replace(g[a], **{k: getattr(g[b], k) for k in photo}),
                  replace(g[b], **{k: getattr(g[a], k) for k in photo}))
    return Scene(tuple(g))


def relations(a: Garment, b: Garment) -> list[str]:
    """Relation keys true of (a, b): left_of, right_of, above, below."""
    found = []
    if a.col != b.col:
        found.append("left_of" if a.col < b.col else "right_of")
    if a.row != b.row:
        found.append("above" if a.row < b.row else "below")
    return found


def render(scene: Scene, photos: tuple[np.ndarray, ...], size: int = 64) -> Image.Image:
    """The scene as a `size`×`size` greyscale image; photos[i] is garment i's pixels (H×W uint8)."""
    canvas = Image.new("L", (size, size))
    for garment, photo in zip(scene.garments, photos, strict=True):
        side = max(1, round(garment.side * size))
        left = _inside(round(garment.x * size - side / 2), garment.col, side, size)
        top = _inside(round(garment.y * size - side / 2), garment.row, side, size)
        # a plain paste: each photo lies within its own cell, so none covers another
        canvas.paste(Image.fromarray(photo).resize((side, side), Image.Resampling.LANCZOS), (left, top))
    return canvas


def _inside(start: int, cell: int, side: int, size: int) -> int:
    """`start` moved (by a pixel of rounding at most) so that the photo stays within its cell."""
    return min(max(start, cell * size // GRID), (cell + 1) * size // GRID - side)
