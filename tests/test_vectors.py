"""One contract suite run against every VectorIndex backend; ExactIndex is the oracle."""

from __future__ import annotations

import numpy as np
import pytest

from profiler.vectors import ExactIndex, FaissIndex, IdMap, VectorIndex, load_index
from tests.conftest import unit_vectors

DIM = 16
BACKENDS = [ExactIndex, FaissIndex]


@pytest.fixture(params=BACKENDS, ids=lambda cls: cls.backend)
def backend(request) -> type[VectorIndex]:
    return request.param


def filled(backend: type[VectorIndex], n: int = 50, seed: int = 0) -> tuple[VectorIndex, list]:
    index = backend(DIM, model_id="model-a")
    ids = [f"item-{i}" for i in range(n)]
    index.add(ids, unit_vectors(n, DIM, seed))
    return index, ids


class TestContract:
    def test_add_and_search_returns_self_first_sorted(self, backend):
        index, ids = filled(backend)
        vectors = index.get(ids[:5])
        result = index.search(vectors, k=5)
        assert result.ids.shape == (5, 5) and result.scores.dtype == np.float32
        assert list(result.ids[:, 0]) == ids[:5]
        assert np.allclose(result.scores[:, 0], 1.0, atol=1e-5)
        assert (np.diff(result.scores, axis=1) <= 1e-6).all()

    def test_single_query_is_a_batch_of_one(self, backend):
        index, _ids = filled(backend)
        result = index.search(index.get(["item-3"])[0], k=2)
        assert result.ids.shape == (1, 2) and result.ids[0, 0] == "item-3"

    def test_pads_when_fewer_than_k(self, backend):
        index, _ = filled(backend, n=3)
        result = index.search(unit_vectors(1, DIM, 9), k=5)
        assert result.ids[0, 3] is None and result.ids[0, 4] is None
        assert np.isneginf(result.scores[0, 3:]).all()
        assert all(i is not None for i in result.ids[0, :3])

    def test_empty_index_returns_padding(self, backend):
        result = backend(DIM).search(unit_vectors(2, DIM), k=3)
        assert (result.ids == None).all() and np.isneginf(result.scores).all()  # noqa: E711

    def test_exclude_removes_ids_and_still_returns_k(self, backend):
        index, _ids = filled(backend)
        query = index.get(["item-7"])
        full = index.search(query, k=10).ids[0]
        excluded = set(full[:4])
        result = index.search(query, k=10, exclude=excluded | {"not-in-index"}).ids[0]
        assert not excluded & set(result)
        assert len([i for i in result if i is not None]) == 10
        assert list(result[:6]) == list(full[4:])

    def test_update_replaces_vector(self, backend):
        index, _ = filled(backend)
        new = unit_vectors(1, DIM, seed=42)
        index.update(["item-0"], new)
        assert np.allclose(index.get(["item-0"]), new, atol=1e-6)
        assert index.search(new, k=1).ids[0, 0] == "item-0"
        assert len(index) == 50

    def test_upsert_adds_and_updates(self, backend):
        index, _ = filled(backend, n=5)
        index.upsert(["item-0", "new"], unit_vectors(2, DIM, seed=7))
        assert len(index) == 6 and "new" in index
        assert np.allclose(index.get(["item-0"]), unit_vectors(2, DIM, seed=7)[:1], atol=1e-6)

    def test_remove_then_absent(self, backend):
        index, _ids = filled(backend)
        vectors = index.get(["item-1"])
        index.remove(["item-1", "item-2"])
        assert len(index) == 48 and "item-1" not in index
        assert "item-1" not in set(index.search(vectors, k=48).ids[0])
        with pytest.raises(KeyError, match="item-1"):
            index.get(["item-1"])

    def test_add_then_remove_everything_is_empty(self, backend):
        index, ids = filled(backend, n=10)
        index.remove(ids)
        assert len(index) == 0
        assert (index.search(unit_vectors(1, DIM), k=2).ids == None).all()  # noqa: E711

    def test_remove_unknown_raises_and_removes_nothing(self, backend):
        index, _ = filled(backend, n=5)
        with pytest.raises(KeyError, match="ghost"):
            index.remove(["item-0", "ghost"])
        assert len(index) == 5 and "item-0" in index

    def test_bad_input(self, backend):
        index, _ = filled(backend, n=5)
        with pytest.raises(ValueError, match="already in the index"):
            index.add(["item-0"], unit_vectors(1, DIM))
        with pytest.raises(ValueError, match="duplicate id"):
            index.add(["x", "x"], unit_vectors(2, DIM))
        with pytest.raises(ValueError, match="shape"):
            index.add(["y"], unit_vectors(1, DIM + 1))
        with pytest.raises(ValueError, match="2 ids but 1 vectors"):
            index.add(["y", "z"], unit_vectors(1, DIM))
        bad = unit_vectors(1, DIM)
        bad[0, 3] = np.nan
        with pytest.raises(ValueError, match="NaN"):
            index.add(["y"], bad)
        with pytest.raises(ValueError, match="non-empty str"):
            index.add([""], unit_vectors(1, DIM))
        with pytest.raises(KeyError, match="nope"):
            index.update(["nope"], unit_vectors(1, DIM))
        with pytest.raises(ValueError, match="k must be"):
            index.search(unit_vectors(1, DIM), k=0)
        with pytest.raises(TypeError):
            index.search(unit_vectors(1, DIM), exclude="item-0")
        assert len(index) == 5

    def test_save_load_round_trip(self, backend, tmp_path):
        index, _ids = filled(backend)
        index.remove(["item-10"])
        index.save(tmp_path, "items")
        loaded = load_index(tmp_path, "items", model_id="model-a", dim=DIM)
        assert type(loaded) is backend and len(loaded) == 49
        queries = unit_vectors(7, DIM, seed=3)
        before, after = index.search(queries, k=10), loaded.search(queries, k=10)
        assert (before.ids == after.ids).all()
        assert np.allclose(before.scores, after.scores)
        # labels keep increasing after a reload: a new id never reuses a removed label
        loaded.add(["item-50"], unit_vectors(1, DIM, seed=5))
        assert "item-50" in loaded and "item-10" not in loaded

    def test_load_with_other_model_or_dim_fails(self, backend, tmp_path):
        index, _ = filled(backend, n=3)
        index.save(tmp_path, "items")
        with pytest.raises(ValueError, match="model-a"):
            load_index(tmp_path, "items", model_id="model-b")
        with pytest.raises(ValueError, match="16-d"):
            load_index(tmp_path, "items", dim=384)
        with pytest.raises(FileNotFoundError):
            load_index(tmp_path, "users")


def test_faiss_matches_exact_reference():
    exact, _ = filled(ExactIndex, n=500, seed=1)
    fast, _ = filled(FaissIndex, n=500, seed=1)
    for index in (exact, fast):
        index.remove([f"item-{i}" for i in range(0, 500, 7)])
        index.update(["item-1"], unit_vectors(1, DIM, seed=99))
    queries = unit_vectors(40, DIM, seed=2)
    a = exact.search(queries, k=20, exclude={"item-3", "item-4"})
    b = fast.search(queries, k=20, exclude={"item-3", "item-4"})
    assert (a.ids == b.ids).all()
    assert np.allclose(a.scores, b.scores, atol=1e-5)


def test_id_map_lookup_maps_missing_to_none():
    id_map = IdMap()
    labels = id_map.add(["a", "b"])
    assert list(id_map.lookup(np.array([labels[1], -1]))) == ["b", None]
    id_map.remove(["a"])
    assert id_map.add(["c"])[0] == 2  # labels are never reused
