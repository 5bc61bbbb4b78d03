"""The real-photo dataset: Fashion-MNIST garments composed on a 2×2 grid, with captions that need places."""

from retrieval.data.fashion.captions import CLASS_WORDS, describe
from retrieval.data.fashion.generate import generate, plan
from retrieval.data.fashion.scene import CLASSES, Garment, Scene, render, sample_scene, swap_places
from retrieval.data.fashion.source import DEFAULT_SOURCE, FILES, Pool, load_part, pools, read_idx

__all__ = [
    "CLASSES",
    "CLASS_WORDS",
    "DEFAULT_SOURCE",
    "FILES",
    "Garment",
    "Pool",
    "Scene",
    "describe",
    "generate",
    "load_part",
    "plan",
    "pools",
    "read_idx",
    "render",
    "sample_scene",
    "swap_places",
]
