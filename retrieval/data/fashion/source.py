"""Reading Fashion-MNIST's IDX files (as Debian's `dataset-fashion-mnist` ships them) and dividing the
garments among the splits: train images use only the training file, val and test the two halves of the
test file, so no split ever shows a photo another split has shown.

IDX: two zero bytes, a type byte (0x08 = unsigned byte), the number of dimensions, each dimension as a
big-endian uint32, then the values in C order.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.errors import UserError

DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "t10k": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
N_CLASSES = 10


@dataclass(frozen=True)
class Pool:
    """The garments one split may use: indices into one source file, grouped by class label."""

    source: str  # "train" or "t10k"
    by_label: dict[int, list[int]]  # only labels with at least one garment


def read_idx(path: Path) -> np.ndarray:
    """An unsigned-byte IDX file, gzip-compressed, as an array of its own shape."""
    try:
        with gzip.open(path, "rb") as file:
            data = file.read()
    except (OSError, EOFError, zlib.error) as err:
        raise UserError(f"{path}: cannot read this IDX file ({err})") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise UserError(f"{path}: not an unsigned-byte IDX file (it starts with {data[:4].hex() or 'nothing'})")
    header = 4 + 4 * data[3]
    if len(data) < header:
        raise UserError(f"{path}: IDX header cut short")
    dims = struct.unpack(f">{data[3]}I", data[4:header])
    if len(data) - header != int(np.prod(dims)):
        raise UserError(f"{path}: IDX header says {'x'.join(map(str, dims))} values, the file holds {len(data) - header}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def load_part(source: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    """(images N×H×W, labels N) of the "train" or "t10k" file pair in `source`."""
    paths = [source / name for name in FILES[part]]
    for path in paths:
        if not path.is_file():
            raise UserError(
                f"Fashion-MNIST file not found: {path}; install it with `apt-get install dataset-fashion-mnist` "
                f"or pass --source FOLDER holding {', '.join(n for pair in FILES.values() for n in pair)}"
            )
    images, labels = (read_idx(path) for path in paths)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(f"{source}: {part} images {images.shape} do not match labels {labels.shape}")
    if len(labels) and labels.max() >= N_CLASSES:
        raise UserError(f"{paths[1]}: label {labels.max()} is not a Fashion-MNIST class (0-{N_CLASSES - 1})")
    return images, labels


def pools(train_labels: np.ndarray, test_labels: np.ndarray) -> dict[str, Pool]:
    """Garments per split: train from the training file; test the first half of t10k, val the second."""
    half = len(test_labels) // 2
    ranges = {"train": ("train", 0, len(train_labels)), "val": ("t10k", half, len(test_labels)), "test": ("t10k", 0, half)}
    result = {}
    for split, (source, start, stop) in ranges.items():
        labels = (train_labels if source == "train" else test_labels)[start:stop]
        indices = np.arange(start, stop)
        by_label = {int(c): indices[labels == c].tolist() for c in np.unique(labels)}
        if len(by_label) < 2:
            raise UserError(f"the Fashion-MNIST {source} file gives the {split} split fewer than two classes of garments")
        result[split] = Pool(source, by_label)
    return result
