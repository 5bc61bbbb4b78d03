"""The embedded default dataset: procedurally drawn scenes with binding-sensitive captions."""

from retrieval.data.generated import split_sizes
from retrieval.data.synth.captions import describe
from retrieval.data.synth.generate import generate, plan
from retrieval.data.synth.render import render
from retrieval.data.synth.scene import COLOURS, SHAPES, SIZES, Scene, SceneObject, sample_scene, swap_shapes

__all__ = [
    "COLOURS",
    "SHAPES",
    "SIZES",
    "Scene",
    "SceneObject",
    "describe",
    "generate",
    "plan",
    "render",
    "sample_scene",
    "split_sizes",
    "swap_shapes",
]
