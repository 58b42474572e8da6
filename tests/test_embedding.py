"""The Embedder on the bundled all-MiniLM-L6-v2: shapes, norms, meaning, cache."""

from __future__ import annotations

import numpy as np
import pytest

from profiler.embedding import Embedder, EmbeddingCache, resolve_model, text_keys


def test_encode_contract(embedder):
    vectors = embedder.encode(["skinny jeans", "wool winter coat", "skinny jeans"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(vectors[0], vectors[2])
    single = embedder.encode("skinny jeans")
    assert single.shape == (384,) and np.allclose(single, vectors[0], atol=1e-6)
    assert embedder.encode([]).shape == (0, 384)


def test_encode_captures_meaning(embedder):
    dress, gown, laptop = embedder.encode(
        ["a flowing summer dress", "an elegant evening gown", "a gaming laptop with 32GB RAM"]
    )
    assert dress @ gown > dress @ laptop + 0.2


def test_encode_matches_sentence_transformers(embedder):
    texts = ["These jeans stretch out after a day.", "Runs small, order a size up."]
    direct = embedder.model.encode(texts, normalize_embeddings=True)
    assert np.allclose(embedder.encode(texts), direct, atol=1e-5)


def test_encode_rejects_non_text(embedder):
    with pytest.raises(TypeError, match="position 1"):
        embedder.encode(["ok", None])


def test_cache_serves_second_embedder_without_loading_model(tmp_path, embedder):
    texts = ["linen trousers", "cashmere sweater", "linen trousers"]
    first = Embedder(cache_dir=tmp_path, device="cpu", show_progress_bar=False)
    first._model = embedder.model  # share the loaded weights; the cache is what is tested
    expected = first.encode(texts)
    assert len(first.cache) == 2
    second = Embedder(cache_dir=tmp_path, device="cpu")
    again = second.encode(texts[:2])
    assert second._model is None, "a fully cached call must not load the model"
    assert np.array_equal(again, expected[:2])
    assert second.dim == 384


def test_cache_is_keyed_by_model(tmp_path):
    keys = text_keys(["a", "b"])
    vectors = np.eye(2, 4, dtype=np.float32)
    EmbeddingCache(tmp_path, "model-a").put(keys, vectors)
    hit, _ = EmbeddingCache(tmp_path, "model-b").get(keys)
    assert not hit.any()
    hit, found = EmbeddingCache(tmp_path, "model-a").get(keys[::-1])
    assert hit.all() and np.array_equal(found, vectors[::-1])


def test_resolve_model():
    bundled = resolve_model(None)
    assert bundled.model_id.startswith("sentence-transformers/all-MiniLM-L6-v2@")
    assert resolve_model("all-MiniLM-L6-v2").model_id == bundled.model_id
    folder = resolve_model(bundled.path)
    assert folder.path == bundled.path.resolve() and folder.model_id != bundled.model_id
    with pytest.raises(ValueError, match="hubs are not contacted"):
        resolve_model("intfloat/e5-large")


def test_cache_survives_duplicate_parts_and_concurrent_writers(tmp_path):
    """Two writers storing the same text, then a new text: every key keeps its own vector."""
    a, b = EmbeddingCache(tmp_path, "m"), EmbeddingCache(tmp_path, "m")
    keys = text_keys(["x", "y", "z"])
    vectors = np.eye(3, 4, dtype=np.float32)
    assert len(a) == len(b) == 0  # both have read the (empty) cache
    a.put(keys[:1], vectors[:1])
    b.put(keys[:1], vectors[:1])  # b loaded before a wrote: "x" is stored twice
    c = EmbeddingCache(tmp_path, "m")
    c.put(keys[1:], vectors[1:])
    hit, found = EmbeddingCache(tmp_path, "m").get(keys)
    assert hit.all() and np.array_equal(found, vectors)
    assert len(list(c.directory.glob("part-*.npz"))) == 3
