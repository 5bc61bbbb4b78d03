"""The Fashion-MNIST dataset, on tiny IDX files written here: deterministic files, Karpathy format, photos
from the right file in the right cell, captions that need places, twins, and one-line errors."""

from __future__ import annotations

import gzip
import json
import random
import re
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from data_testing import TinyDataset

from retrieval.cli import main as cli
from retrieval.data import load_records
from retrieval.data.fashion import (
    CLASS_WORDS,
    FILES,
    Garment,
    Scene,
    describe,
    generate,
    load_part,
    plan,
    pools,
    render,
)
from retrieval.data.fashion.ceiling import read_caption, split_ceiling, true_of
from retrieval.data.fashion.scene import CLASSES, relations
from retrieval.data.generated import split_sizes
from retrieval.data.wording import PLACE_WORDS, RELATION_WORDS
from retrieval.errors import UserError
from retrieval.metrics import retrieval_metrics

N_TRAIN, N_TEST = 40, 20
TEST_BASE = 150  # pixel value of t10k photo 0; train photo i is 1 + i, so a pixel names its source file


def write_idx(path: Path, array: np.ndarray) -> None:
    """An unsigned-byte IDX file, gzip-compressed, as Fashion-MNIST ships them."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0))


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fake Fashion-MNIST: 40 train and 20 t10k 28×28 photos, each one flat grey level, labels 0–9 in turn."""
    folder = tmp_path_factory.mktemp("fashion-mnist")
    for part, count, base in (("train", N_TRAIN, 1), ("t10k", N_TEST, TEST_BASE)):
        images = np.repeat(np.arange(base, base + count)[:, None, None], 28, 1).repeat(28, 2)
        write_idx(folder / FILES[part][0], images)
        write_idx(folder / FILES[part][1], np.arange(count) % 10)
    return folder


@pytest.fixture(scope="module")
def dataset(source: Path, tmp_path_factory: pytest.TempPathFactory) -> TinyDataset:
    out = tmp_path_factory.mktemp("out") / "fashion"
    data = generate(out, n_images=40, seed=2, size=32, source=source, workers=1, progress=False)
    return TinyDataset(data, out / "images", json.loads(data.read_text())["images"])


@pytest.fixture(scope="module")
def planned(source: Path):
    return plan(400, 0, pools(load_part(source, "train")[1], load_part(source, "t10k")[1]))


def test_same_seed_gives_byte_identical_files(source, dataset, tmp_path):
    again = generate(tmp_path / "a", n_images=40, seed=2, size=32, source=source, workers=2, progress=False)
    other = generate(tmp_path / "b", n_images=40, seed=3, size=32, source=source, workers=1, progress=False)
    assert again.read_bytes() == dataset.data.read_bytes() != other.read_bytes()
    for entry in dataset.entries:
        name = entry["filename"]
        assert (tmp_path / "a" / "images" / name).read_bytes() == (dataset.images / name).read_bytes()


def test_karpathy_json_loads_with_photos_of_the_right_file_in_their_cells(dataset):
    counts = {split: len(load_records(dataset.cfg(), split)) for split in ("train", "val", "test")}
    assert counts == split_sizes(40) == {"train": 32, "val": 4, "test": 4}
    for record in load_records(dataset.cfg(), "test"):
        assert len(record.captions) == 5 and len(set(record.captions)) == 5
    for entry in dataset.entries:
        garments = entry["garments"]
        assert 2 <= len(garments) <= 4
        assert len({g["label"] for g in garments}) == len({(g["row"], g["col"]) for g in garments}) == len(garments)
        pixels = _pixels(dataset, entry)
        for g in garments:
            value = 1 + g["index"] if g["source"] == "train" else TEST_BASE + g["index"]
            ys, xs = np.nonzero(pixels == value)
            assert len(ys) > 0.5 * (g["side"] * 32) ** 2, (entry["filename"], g)
            assert set(ys // 16) == {g["row"]} and set(xs // 16) == {g["col"]}  # inside its cell of the 2×2 grid


def _pixels(dataset: TinyDataset, entry: dict) -> np.ndarray:
    from PIL import Image

    with Image.open(dataset.images / entry["filename"]) as image:
        return np.asarray(image)


def test_splits_use_disjoint_source_photos(dataset):
    used: dict[str, set[tuple[str, int]]] = {"train": set(), "val": set(), "test": set()}
    for entry in dataset.entries:
        used[entry["split"]] |= {(g["source"], g["index"]) for g in entry["garments"]}
    assert {source for source, _ in used["train"]} == {"train"}
    assert {source for source, _ in used["val"] | used["test"]} == {"t10k"}
    assert all(i >= N_TEST // 2 for _, i in used["val"]) and all(i < N_TEST // 2 for _, i in used["test"])


def _words_pattern(words) -> str:
    return "|".join(sorted((re.escape(w) for group in words for w in group), key=len, reverse=True))


def test_every_caption_ties_a_garment_to_a_place_or_another_garment(planned):
    garment = _words_pattern(CLASS_WORDS.values())
    lines = ("from left to right", "from top to bottom")
    where = _words_pattern([*PLACE_WORDS.values(), *RELATION_WORDS.values(), lines, ("top left", "top right", "bottom left", "bottom right")])
    for p in planned:
        assert len(set(p.captions)) == 5
        for caption in p.captions:
            assert re.search(rf"\b({garment})\b", caption) and re.search(rf"\b({where})\b", caption), caption


def test_twins_hold_the_same_photos_in_other_places(planned):
    by_id = {p.imgid: p for p in planned}
    twins = [p for p in planned if p.twin_of is not None]
    assert len(twins) > len(planned) // 5
    for twin in twins:
        original = by_id[twin.twin_of]
        photos = lambda scene: sorted((g.source, g.index) for g in scene.garments)  # noqa: E731
        places = lambda scene: {(g.source, g.index): (g.row, g.col) for g in scene.garments}  # noqa: E731
        assert twin.split == original.split and photos(twin.scene) == photos(original.scene)
        assert sum(places(twin.scene)[k] != v for k, v in places(original.scene).items()) == 2
        assert twin.captions != original.captions
        if len(twin.scene.garments) == 2:  # both garments moved: no caption fits both pictures
            assert not set(twin.captions) & set(original.captions)


def test_relations_in_captions_hold_in_the_grid():
    def garment(label, row, col):
        return Garment(label, "t10k", label, row, col, (col + 0.5) / 2, (row + 0.5) / 2, 0.4)

    scene = Scene((garment(8, 0, 0), garment(7, 1, 1)))  # a bag top left, a sneaker bottom right
    image = np.asarray(render(scene, (np.full((28, 28), 200, np.uint8), np.full((28, 28), 90, np.uint8)), 64))
    assert image[16, 16] == 200 and image[48, 48] == 90 and image[16, 48] == image[48, 16] == 0
    captions = [c for seed in range(40) for c in describe(scene, random.Random(seed))]
    bag, sneaker = "(handbag|bag)", "(sneaker|trainer|running shoe)"
    for caption in captions:
        assert not re.search(rf"{bag} (is )?(to the |on the )?(right of|below|under|beneath)", caption), caption
        assert not re.search(rf"{sneaker} (is )?(to the |on the )?(left of|above|over)", caption), caption
        assert not re.search(rf"{bag} (in|at) the (bottom|lower|top right|upper right)", caption), caption
    assert any(re.search(rf"{bag} (is )?(above|over) (a|the) {sneaker}", c) for c in captions)


def test_rerun_is_a_no_op_and_other_arguments_need_overwrite(source, tmp_path, monkeypatch):
    out = tmp_path / "fashion"
    generate(out, n_images=10, size=16, source=source, workers=1, progress=False)
    stamp = (out / "dataset.json").stat().st_mtime_ns
    with monkeypatch.context() as patch:  # a re-run does not even read the source
        patch.setattr(sys.modules["retrieval.data.fashion.generate"], "load_part", lambda *_: pytest.fail("source read"))
        generate(out, n_images=10, size=16, source=source, workers=1, progress=False)
    assert (out / "dataset.json").stat().st_mtime_ns == stamp
    with pytest.raises(UserError, match="--overwrite"):
        generate(out, n_images=12, size=16, source=source, workers=1, progress=False)
    generate(out, n_images=12, size=16, source=source, workers=1, overwrite=True, progress=False)
    assert len(list((out / "images").iterdir())) == 12


def test_missing_source_is_one_line_naming_the_package_and_the_option(tmp_path, capsys):
    with pytest.raises(UserError, match=r"apt-get install dataset-fashion-mnist.*--source"):
        generate(tmp_path / "out", n_images=10, source=tmp_path / "nowhere", progress=False)
    assert cli(["data", "fashion", "--out", str(tmp_path / "out"), "--images", "10",
                "--source", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("retrieval data: error: Fashion-MNIST file not found")
    assert not (tmp_path / "out").exists()


def test_a_file_that_is_not_idx_is_one_line(source, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in (n for pair in FILES.values() for n in pair):
        (broken / name).write_bytes((source / name).read_bytes())
    (broken / FILES["train"][0]).write_bytes(gzip.compress(b"PK\x03\x04 a zip file"))
    with pytest.raises(UserError, match="not an unsigned-byte IDX file"):
        load_part(broken, "train")
    write_idx(broken / FILES["train"][0], np.zeros((3, 28, 28)))
    (broken / FILES["train"][0]).write_bytes(gzip.compress(gzip.decompress((broken / FILES["train"][0]).read_bytes())[:-5]))
    with pytest.raises(UserError, match="IDX header says 3x28x28 values, the file holds 2347"):
        load_part(broken, "train")
    (broken / FILES["t10k"][1]).write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match="cannot read this IDX file"):
        load_part(broken, "t10k")


def _oracle_embeddings(planned, bound: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Perfect caption readers: the classes named, plus (when `bound`) which class is where and beside what."""
    noun = {w: c for c, words in CLASS_WORDS.items() for w in words}
    cell = {w: (r // 2, c // 2) for (r, c), words in PLACE_WORDS.items() if 1 not in (r, c) for w in words}
    cell |= {"top left": (0, 0), "top right": (0, 1), "bottom left": (1, 0), "bottom right": (1, 1)}
    rel = {w: k for k in ("left_of", "right_of", "above", "below") for w in RELATION_WORDS[k]}
    g, p, r = (_words_pattern([words]) for words in (noun, cell, rel))
    keys: dict[tuple, int] = {}

    def vector(facts) -> np.ndarray:
        v = np.zeros(512, np.float32)
        for fact in facts if bound else [f for f in facts if len(f) == 1]:
            v[keys.setdefault(fact, len(keys))] = 1
        return v / np.linalg.norm(v)

    images, texts, owner = [], [], []
    for i, item in enumerate(planned):
        garments = item.scene.garments
        images.append(vector([(x.name,) for x in garments] + [(x.name, (x.row, x.col)) for x in garments]
                             + [(a.name, k, b.name) for a in garments for b in garments for k in relations(a, b)]))
        for caption in item.captions:
            facts = [(noun[w],) for w in re.findall(rf"\b({g})\b", caption)]
            facts += [(noun[w], cell[at]) for w, at in re.findall(rf"\b({g}) (?:placed )?({p})", caption)]
            facts += [(noun[w], cell[at]) for at, w in re.findall(rf"({p})(?: there is|:) an? ({g})", caption)]
            facts += [(noun[a], rel[k], noun[b]) for a, k, b in re.findall(rf"\b({g}) (?:is )?({r}) (?:a|an|the) ({g})", caption)]
            texts.append(vector(facts))
            owner.append(i)
    return np.stack(images), np.stack(texts), np.array(owner)


def test_knowing_the_garments_without_their_places_is_not_enough(planned):
    test_split = [p for p in planned if p.split == "test"]
    where = retrieval_metrics(*_oracle_embeddings(test_split, bound=True))
    bag = retrieval_metrics(*_oracle_embeddings(test_split, bound=False))
    assert where["i2t_r1"] > bag["i2t_r1"] + 30 and where["t2i_r1"] > bag["t2i_r1"] + 5, (where, bag)


def test_the_default_size_is_the_discriminating_one_docs_data_md_names():
    from retrieval.commands.data import build_parser

    images = build_parser().parse_args(["fashion", "--out", "x"]).images
    assert split_sizes(images) == {"train": 10500, "val": 1000, "test": 1000}


def test_fashion_config_is_the_demo_config_on_other_data():
    from retrieval.config import load_config

    configs = Path(__file__).parents[2] / "configs"
    fashion, synth = load_config(configs / "fashion-small.yaml"), load_config(configs / "synth-small.yaml")
    assert (fashion["data"]["path"], fashion["data"]["images"]) == ("data/fashion/dataset.json", "data/fashion/images")
    for key in ("path", "images"):
        del fashion["data"][key], synth["data"][key]
    assert fashion == synth


def _entry(garments: list[tuple[str, int, int]], *captions: str) -> dict:
    """A Karpathy entry of a hand-made scene: (class, row, col) per garment."""
    return {"garments": [{"label": CLASSES.index(c), "row": r, "col": col} for c, r, col in garments],
            "sentences": [{"raw": caption} for caption in captions]}


def test_the_ceiling_is_the_expected_recall_of_an_oracle_that_knows_classes_and_places():
    entries = [
        _entry([("sneaker", 0, 0), ("bag", 1, 1)], "a sneaker in the top left corner"),  # fits pictures 0, 1, 3
        _entry([("sneaker", 0, 0), ("coat", 1, 1)], "a jacket in the lower right"),  # 1, 3
        _entry([("bag", 0, 0), ("sneaker", 1, 1)], "the handbag is above the running shoe"),  # 2 (not 3: same row)
        _entry([("sneaker", 0, 0), ("coat", 1, 1), ("bag", 0, 1)], "a trainer to the left of a bag"),  # 0, 3
    ]
    ceiling = split_ceiling(entries)
    # text → image: a caption that fits c pictures finds its own first with chance 1/c
    assert ceiling["t2i_r1"] == pytest.approx(100 * (1 / 3 + 1 / 2 + 1 + 1 / 2) / 4) and ceiling["t2i_r5"] == 100
    # image → text: picture 0's caption (3 fits) comes after caption 3 (2 fits); picture 3's ties with caption 1
    assert ceiling["i2t_r1"] == pytest.approx(100 * (0 + 1 + 1 + 1 / 2) / 4) and ceiling["i2t_r5"] == 100
    assert (ceiling["images"], ceiling["captions"]) == (4, 4)


def test_a_caption_that_places_every_garment_fits_only_pictures_of_exactly_those_garments():
    whole = read_caption("top left: a trainer, bottom right: a jacket")
    cells = np.full((2, len(CLASSES)), -1)
    cells[:, CLASSES.index("sneaker")], cells[:, CLASSES.index("coat")] = 0, 3
    cells[1, CLASSES.index("bag")] = 1  # a third garment: the caption would not have left it out
    assert true_of(whole, cells).tolist() == [True, False]
    assert true_of(read_caption("a trainer in the top left corner"), cells).tolist() == [True, True]


def test_the_ceiling_refuses_a_caption_it_cannot_read():
    with pytest.raises(ValueError, match="does not understand"):
        split_ceiling([_entry([("sneaker", 0, 0), ("bag", 1, 1)], "a sneaker and a bag")])
    with pytest.raises(ValueError, match="false of its own picture"):
        split_ceiling([_entry([("sneaker", 0, 0), ("bag", 1, 1)], "a bag in the top left corner")])


def test_the_ceiling_reader_understands_every_generated_caption(planned):
    test_split = [p for p in planned if p.split == "test"]
    entries = [{"garments": [g.to_json() for g in p.scene.garments],
                "sentences": [{"raw": c} for c in p.captions]} for p in test_split]
    ceiling = split_ceiling(entries)  # every caption read, and true of its own picture
    # every picture has a whole-scene caption, which fits few other pictures; most single facts fit many
    assert 0 < ceiling["t2i_r1"] < ceiling["t2i_r10"] <= 100 and ceiling["i2t_r1"] > 90


def test_data_fashion_writes_the_ceiling_and_eval_prints_it(dataset, capsys, tmp_path):
    written = json.loads((dataset.data.parent / "ceiling.json").read_text())
    assert set(written["splits"]) == {"val", "test"} and written["splits"]["test"]["images"] == 4
    args = ["eval", "--data", str(dataset.data), "--images", str(dataset.images), "--random-baseline",
            "--workers", "0", "--json", str(tmp_path / "r.json")]
    assert cli(args) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("ceiling (oracle)"))
    assert f"{written['splits']['test']['rsum']:.1f}" in row and "—" in row
    assert json.loads((tmp_path / "r.json").read_text())["ceiling"] == written["splits"]["test"]
    assert cli([*args, "--split", "val"]) == 0 and f"{written['splits']['val']['rsum']:.1f}" in capsys.readouterr().out
