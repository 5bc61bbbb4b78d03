"""FAISS indexes over embedded collections: build (`build_index`), open and serve (`IndexDir`), evaluate.

Thin helpers over FAISS: every `Collection.index` is a plain `faiss.IndexIDMap2` you can use directly.
"""

from retrieval.index import _logging  # noqa: F401  (before faiss is first imported)
from retrieval.index.build import build_index
from retrieval.index.collection import Collection
from retrieval.index.factory import KINDS, choose_kind, default_params, factory_string, new_index
from retrieval.index.index_dir import Hit, IndexDir, ReadOnlyIndexError
from retrieval.index.io import read_index, write_index
from retrieval.index.manifest import CollectionInfo, Manifest, read_manifest
from retrieval.index.tune import make_probe, measure_recall, tune

__all__ = [
    "KINDS",
    "Collection",
    "CollectionInfo",
    "Hit",
    "IndexDir",
    "Manifest",
    "ReadOnlyIndexError",
    "build_index",
    "choose_kind",
    "default_params",
    "factory_string",
    "make_probe",
    "measure_recall",
    "new_index",
    "read_index",
    "read_manifest",
    "tune",
    "write_index",
]
