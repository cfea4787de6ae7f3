"""The bundled MiniLM encoder: offline, 384-d unit vectors, paraphrases closer than unrelated text."""

from __future__ import annotations

import numpy as np
import pytest

from curation.text_embedding import MiniLMEncoder


@pytest.fixture(scope="module")
def encoder():
    return MiniLMEncoder(batch_size=2)


def test_paraphrases_are_close(encoder):
    v = encoder.encode(["a photo of a dog running on the beach", "a puppy runs along the seashore",
                        "quarterly tax figures in a spreadsheet", ""])
    assert v.shape == (4, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    sim = v @ v.T
    assert sim[0, 1] > 0.5 and sim[0, 1] > sim[0, 2] + 0.3
    # batching does not change the result
    np.testing.assert_allclose(encoder.encode(["a puppy runs along the seashore"])[0], v[1], atol=1e-5)
    assert encoder.encode([]).shape == (0, 384)


def test_text_query_retrieval_with_minilm(encoder):
    from curation.midtraining import MidtrainingConfig, select_candidates

    captions = ["an old hand-drawn map of the coastline", "a golden retriever catching a frisbee",
                "a plate of spaghetti with tomato sauce", "a vintage cartographic chart of islands"]
    emb = np.eye(4, dtype=np.float32)
    table = select_candidates(["a", "b", "c", "d"], emb, captions, np.arange(4), MidtrainingConfig(per_cluster=0,
                              per_query=2), text_queries=["antique maps"], text_encoder=encoder)
    assert sorted(table.column("sample_id").to_pylist()) == ["a", "d"]
