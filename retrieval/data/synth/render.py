"""Drawing synthetic scenes with PIL: shapes drawn at 2× and box-downsampled, which anti-aliases edges."""

from __future__ import annotations

import math

from PIL import Image, ImageDraw

from retrieval.data.synth.scene import COLOURS, Scene, SceneObject

SUPERSAMPLE = 2


def render(scene: Scene, size: int = 64) -> Image.Image:
    """The scene as a `size`×`size` RGB image."""
    big = size * SUPERSAMPLE
    grey = scene.background
    image = Image.new("RGB", (big, big), (grey, grey, grey))
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        fill = tuple(min(255, max(0, c + t)) for c, t in zip(COLOURS[obj.colour], obj.tint, strict=True))
        cx, cy, r = obj.x * big, obj.y * big, obj.radius * big
        if obj.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        else:
            draw.polygon(_outline(obj, cx, cy, r), fill=fill)
    return image.resize((size, size), Image.Resampling.BOX)


def _outline(obj: SceneObject, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Polygon vertices (pixels) of a non-circle shape of radius r centred at (cx, cy)."""
    if obj.shape == "square":
        h = 0.8 * r
        unit = [(-h, -h), (h, -h), (h, h), (-h, h)]
    elif obj.shape == "diamond":
        unit = [(0, -r), (0.8 * r, 0), (0, r), (-0.8 * r, 0)]
    elif obj.shape == "triangle":  # pointing up, centred on its bounding box
        unit = [(0, -r), (r, 0.8 * r), (-r, 0.8 * r)]
    elif obj.shape == "star":  # five points, inner radius 0.45 r
        unit = [
            ((r if k % 2 == 0 else 0.45 * r) * math.sin(k * math.pi / 5),
             -(r if k % 2 == 0 else 0.45 * r) * math.cos(k * math.pi / 5))
            for k in range(10)
        ]
    elif obj.shape == "cross":  # a plus sign: arms 0.6 r wide
        a, w = 0.95 * r, 0.3 * r
        unit = [(-w, -a), (w, -a), (w, -w), (a, -w), (a, w), (w, w), (w, a), (-w, a), (-w, w), (-a, w), (-a, -w), (-w, -w)]
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")
    return [(cx + dx, cy + dy) for dx, dy in unit]
