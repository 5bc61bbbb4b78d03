"""The synthetic dataset: deterministic files, Karpathy format, captions true to the picture, binding."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest

from retrieval.data import load_records
from retrieval.data.synth import (
    COLOURS,
    SHAPES,
    describe,
    generate,
    plan,
    render,
    sample_scene,
    split_sizes,
    swap_shapes,
)
from retrieval.data.synth.scene import Scene, SceneObject
from retrieval.errors import UserError


def obj(shape, colour, row, col, size="large"):
    radius = 0.14 if size == "large" else 0.085
    return SceneObject(shape, colour, size, row, col, (col + 0.5) / 3, (row + 0.5) / 3, radius, (0, 0, 0))


def test_same_seed_gives_byte_identical_files(tmp_path):
    one = generate(tmp_path / "a", n_images=24, seed=5, size=32, workers=2, progress=False)
    two = generate(tmp_path / "b", n_images=24, seed=5, size=32, workers=1, progress=False)
    other = generate(tmp_path / "c", n_images=24, seed=6, size=32, workers=1, progress=False)
    assert one.read_bytes() == two.read_bytes() and one.read_bytes() != other.read_bytes()
    names = sorted(p.name for p in (tmp_path / "a" / "images").iterdir())
    assert len(names) == 24
    for name in names:
        assert (tmp_path / "a" / "images" / name).read_bytes() == (tmp_path / "b" / "images" / name).read_bytes()


def test_karpathy_format_and_splits(synth_dataset):
    cfg = synth_dataset.cfg()
    counts = {split: len(load_records(cfg, split)) for split in ("train", "val", "test")}
    assert counts == split_sizes(60) == {"train": 48, "val": 6, "test": 6}
    assert split_sizes(20000) == {"train": 18000, "val": 1000, "test": 1000}
    for entry in synth_dataset.entries:
        assert len(entry["sentences"]) >= 5 and len({s["raw"] for s in entry["sentences"]}) == 5
        assert 1 <= len(entry["objects"]) <= 4
    twins = [e for e in synth_dataset.entries if "twin_of" in e]
    assert twins, "some scenes must come with a shape-swapped twin"
    by_id = {e["imgid"]: e for e in synth_dataset.entries}
    for twin in twins:
        original = by_id[twin["twin_of"]]
        assert original["split"] == twin["split"]
        assert sorted(o["colour"] for o in original["objects"]) == sorted(o["colour"] for o in twin["objects"])
        assert sorted(o["shape"] for o in original["objects"]) == sorted(o["shape"] for o in twin["objects"])
        assert original["objects"] != twin["objects"]


def test_every_caption_binds_a_colour_to_a_shape():
    shape_words = "circle|disc|square|block|triangle|star|diamond|rhombus|cross|plus sign"
    pattern = re.compile(rf"\b({'|'.join(COLOURS)}) ({shape_words})\b")
    for k in range(200):
        rng = random.Random(k)
        scene = sample_scene(rng)
        for caption in describe(scene, rng):
            assert pattern.search(caption), caption


def test_swapped_shapes_give_different_captions():
    scene = Scene(128, (obj("circle", "red", 1, 0), obj("square", "blue", 1, 2)))
    twin = swap_shapes(scene, 0, 1)
    for seed in range(50):
        original, swapped = describe(scene, random.Random(seed)), describe(twin, random.Random(seed))
        # with two objects every caption mentions a bound pair the other picture lacks
        assert not set(original) & set(swapped)
    three = Scene(128, (obj("circle", "red", 0, 0), obj("square", "blue", 0, 2), obj("star", "green", 2, 1)))
    swapped_three = swap_shapes(three, 0, 1)
    for seed in range(50):
        assert describe(three, random.Random(seed)) != describe(swapped_three, random.Random(seed))


def test_relations_in_captions_hold_in_the_pixels():
    scene = Scene(128, (obj("circle", "red", 0, 0), obj("square", "blue", 2, 2, "small")))
    pixels = np.asarray(render(scene, 64)).astype(int)

    def centroid(colour):
        mask = (np.abs(pixels - np.array(COLOURS[colour])).sum(-1) < 40)
        ys, xs = np.nonzero(mask)
        return xs.mean(), ys.mean(), mask.sum()

    rx, ry, red_area = centroid("red")
    bx, by, blue_area = centroid("blue")
    assert rx < bx and ry < by and red_area > blue_area  # left of, above, bigger than
    captions = [c for seed in range(40) for c in describe(scene, random.Random(seed))]
    false_of_red = r"(to the right of|on the right of|right of|below|under|beneath|smaller than)"
    false_of_blue = r"(to the left of|on the left of|left of|above|over|bigger than|larger than)"
    for caption in captions:
        assert not re.search(rf"red (circle|disc) (is )?{false_of_red}", caption), caption
        assert not re.search(rf"blue (square|block) (is )?{false_of_blue}", caption), caption
    assert any(re.search(r"red (circle|disc) (is )?(to the |on the )?left of", c) for c in captions)


def test_each_shape_renders_in_its_colour_at_its_place():
    for shape in SHAPES:
        pixels = np.asarray(render(Scene(128, (obj(shape, "yellow", 1, 1),)), 64)).astype(int)
        centre, corner = pixels[32, 32], pixels[2, 2]
        assert np.abs(centre - np.array(COLOURS["yellow"])).sum() < 30, shape
        assert (corner == 128).all(), shape


@pytest.fixture(scope="module")
def plan_10k():
    return plan(10000, 0)


def test_test_split_does_not_depend_on_the_training_size(plan_10k):
    small, large = plan_10k, plan(12000, 0)
    test_small = [p.captions for p in small if p.split == "test"]
    test_large = [p.captions for p in large if p.split == "test"]
    assert test_small == test_large  # the test set does not move when only the training size does


def test_refuses_to_overwrite_foreign_or_different_data(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a synth dataset"):
        generate(tmp_path / "mine", n_images=10, size=16, workers=1, progress=False)
    out = tmp_path / "synth"
    generate(out, n_images=10, size=16, workers=1, progress=False)
    stamp = (out / "dataset.json").stat().st_mtime_ns
    generate(out, n_images=10, size=16, workers=1, progress=False)  # same arguments: kept as is
    assert (out / "dataset.json").stat().st_mtime_ns == stamp
    with pytest.raises(UserError, match="--overwrite"):
        generate(out, n_images=12, size=16, workers=1, progress=False)
    generate(out, n_images=12, size=16, workers=1, overwrite=True, progress=False)
    assert len(list((out / "images").iterdir())) == 12


def _oracle_embeddings(planned, bound: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Perfect attribute readers: (colour, shape) pairs when `bound`, else separate colour and shape bags."""
    colours, shapes = list(COLOURS), list(SHAPES)
    synonyms = {"disc": "circle", "block": "square", "rhombus": "diamond", "plus sign": "cross"}
    pattern = re.compile(rf"\b({'|'.join(colours)}) ({'|'.join(shapes)})\b")

    def vector(pairs) -> np.ndarray:
        v = np.zeros(48 if bound else 14, np.float32)
        for colour, shape in pairs:
            if bound:
                v[colours.index(colour) * 6 + shapes.index(shape)] = 1
            else:
                v[colours.index(colour)] = v[8 + shapes.index(shape)] = 1
        return v / np.linalg.norm(v)

    images, texts, owner = [], [], []
    for i, p in enumerate(planned):
        images.append(vector((o.colour, o.shape) for o in p.scene.objects))
        for caption in p.captions:
            for word, canonical in synonyms.items():
                caption = caption.replace(word, canonical)
            texts.append(vector(pattern.findall(caption)))
            owner.append(i)
    return np.stack(images), np.stack(texts), np.array(owner)


def test_reading_attributes_without_binding_them_is_not_enough(plan_10k):
    from retrieval.metrics import retrieval_metrics

    test_split = [p for p in plan_10k if p.split == "test"]  # scenes and captions only, no pixels
    bound = retrieval_metrics(*_oracle_embeddings(test_split, bound=True))
    bag = retrieval_metrics(*_oracle_embeddings(test_split, bound=False))
    # an oracle that knows every colour and shape but not which goes with which loses much of R@1
    assert bound["i2t_r1"] > bag["i2t_r1"] + 15 and bound["t2i_r1"] > bag["t2i_r1"] + 5
