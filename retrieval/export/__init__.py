"""Export a trained checkpoint as plain (merged) weights: an open_clip folder or ONNX towers.

Both formats are checked on export against the checkpoint (cosine ≥ 0.9999 on a sample batch) and record
the model fingerprint in `retrieval_export.json`, so an index built with the checkpoint stays valid.
"""

from retrieval.export.check import MIN_COSINE, ExportCheckError
from retrieval.export.onnx_export import write_onnx_dir
from retrieval.export.onnx_runtime import OnnxModel
from retrieval.export.open_clip_dir import write_open_clip_dir
from retrieval.export.source import MANIFEST, ExportSource, load_source

FORMATS = ("open_clip", "onnx")

__all__ = [
    "FORMATS",
    "MANIFEST",
    "MIN_COSINE",
    "ExportCheckError",
    "ExportSource",
    "OnnxModel",
    "load_source",
    "write_onnx_dir",
    "write_open_clip_dir",
]
