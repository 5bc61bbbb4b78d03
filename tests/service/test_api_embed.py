"""`/v1/embed/*` return exactly what the model computes, normalised, in input order."""

from __future__ import annotations

from io import BytesIO

import numpy as np
from PIL import Image
from service_testing import png_bytes

from retrieval.checkpoint import load_model
from retrieval.encode import encode_images, encode_texts


def test_text_embeddings_match_the_model(client, checkpoint):
    texts = ["a small red circle", "three blue squares in a row", "a green star"]
    body = client.post("/v1/embed/text", json={"texts": texts}).json()
    loaded = load_model(checkpoint)
    got = np.array(body["embeddings"])
    np.testing.assert_allclose(got, encode_texts(loaded, texts), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert body["dim"] == 32 and body["model"] == loaded.fingerprint and body["truncated"] == [False] * 3


def test_image_embeddings_match_the_model(client, checkpoint):
    images = [png_bytes((250, 0, 0), (40, 40)), png_bytes((0, 0, 250), (20, 50), "JPEG")]
    files = [("files", (f"{n}.img", data, "application/octet-stream")) for n, data in enumerate(images)]
    body = client.post("/v1/embed/image", files=files).json()
    expected = encode_images(load_model(checkpoint), [Image.open(BytesIO(d)).convert("RGB") for d in images])
    np.testing.assert_allclose(np.array(body["embeddings"]), expected, atol=1e-5)
    assert body["truncated"] == [False, False]
