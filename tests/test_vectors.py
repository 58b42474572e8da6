"""One contract suite run against every VectorIndex backend; ExactIndex is the oracle."""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest

from profiler.vectors import (
    ExactIndex,
    FaissIndex,
    IdMap,
    VectorIndex,
    faiss_gpus,
    ivf_lists,
    load_index,
)
from tests.conftest import unit_vectors

DIM = 16
#: The contract runs on exact numpy, FAISS Flat, and FAISS forced to IVF on tiny data: a
#: threshold of 8 makes ``optimize()`` (called by ``filled``) build IVF from 8 vectors up.
BACKENDS = {
    "exact": ExactIndex,
    "faiss": FaissIndex,
    "faiss-ivf": functools.partial(FaissIndex, ann_threshold=8),
}
try:  # the Milvus backend against embedded Milvus Lite: one file, a collection per index
    from profiler.milvus import MilvusIndex

    MILVUS_LITE = Path(tempfile.mkdtemp(prefix="profiler-milvus-")) / "contract.db"
    BACKENDS["milvus-lite"] = functools.partial(MilvusIndex, uri=str(MILVUS_LITE))
except ImportError:  # pymilvus not installed: `pip install -e ".[dev]"` brings it
    pass
#: ``get`` tolerance: the IVF structure of ``"auto"`` stores float16 (relative error 2**-11).
GET_ATOL = 1e-3


@pytest.fixture(params=list(BACKENDS), ids=str)
def backend(request):
    return BACKENDS[request.param]


def filled(backend, n: int = 50, seed: int = 0) -> tuple[VectorIndex, list]:
    index = backend(DIM, model_id="model-a")
    ids = [f"item-{i}" for i in range(n)]
    index.add(ids, unit_vectors(n, DIM, seed))
    if isinstance(index, FaissIndex):
        index.optimize()
    return index, ids


def clustered(
    n: int, dim: int, rng: np.random.Generator, centres: np.ndarray, noise: float = 0.5
) -> np.ndarray:
    """Unit vectors around random centres: neighbours are meaningful, as in embeddings."""
    points = centres[rng.integers(len(centres), size=n)]
    points = points + rng.standard_normal((n, dim)).astype(np.float32) * noise / np.sqrt(dim)
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    return sum(len(set(f) & set(t)) for f, t in zip(found.tolist(), truth.tolist())) / truth.size


class TestContract:
    def test_add_and_search_returns_self_first_sorted(self, backend):
        index, ids = filled(backend)
        vectors = index.get(ids[:5])
        result = index.search(vectors, k=5)
        assert result.ids.shape == (5, 5) and result.scores.dtype == np.float32
        assert list(result.ids[:, 0]) == ids[:5]
        assert np.allclose(result.scores[:, 0], 1.0, atol=GET_ATOL)
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
        assert np.allclose(index.get(["item-0"]), new, atol=GET_ATOL)
        assert index.search(new, k=1).ids[0, 0] == "item-0"
        assert len(index) == 50

    def test_upsert_adds_and_updates(self, backend):
        index, _ = filled(backend, n=5)
        index.upsert(["item-0", "new"], unit_vectors(2, DIM, seed=7))
        assert len(index) == 6 and "new" in index
        assert np.allclose(index.get(["item-0"]), unit_vectors(2, DIM, seed=7)[:1], atol=GET_ATOL)

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
        assert type(loaded) is type(index) and len(loaded) == 49
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

    def test_mmap_load_gives_same_results_and_is_read_only(self, backend, tmp_path):
        index, _ids = filled(backend)
        index.remove(["item-10"])
        index.save(tmp_path, "items")
        mapped = load_index(tmp_path, "items", mmap=True)
        queries = unit_vectors(7, DIM, seed=3)
        before, after = index.search(queries, k=10), mapped.search(queries, k=10)
        assert (before.ids == after.ids).all()
        assert np.allclose(before.scores, after.scores)
        assert np.allclose(mapped.get(["item-3"]), index.get(["item-3"]))
        with pytest.raises(ValueError, match="read-only"):
            mapped.add(["new"], unit_vectors(1, DIM))
        with pytest.raises(ValueError, match="read-only"):
            mapped.remove(["item-3"])
        assert len(mapped) == 49


def test_id_map_lookup_maps_missing_to_none():
    id_map = IdMap()
    labels = id_map.add(["a", "b"])
    assert list(id_map.lookup(np.array([labels[1], -1]))) == ["b", None]
    id_map.remove(["a"])
    assert id_map.add(["c"])[0] == 2  # labels are never reused


def test_id_map_grows_one_add_at_a_time_and_round_trips_through_arrays():
    id_map = IdMap()
    for n in range(37):  # past several doublings of the label array
        assert id_map.add([f"i{n}"])[0] == n
    id_map.remove(["i3", "i30"])
    assert len(id_map) == 35 and "i3" not in id_map and "i4" in id_map
    assert id_map.ids == [f"i{n}" for n in range(37) if n not in (3, 30)]
    assert id_map.lookup(np.array([[4, 3], [36, 99]])).tolist() == [["i4", None], ["i36", None]]
    ids, labels = id_map.to_arrays()
    again = IdMap.from_arrays(ids, labels, id_map.next_label)
    assert again.ids == id_map.ids and again.next_label == 37
    np.testing.assert_array_equal(again.labels(["i36", "i0"]), [36, 0])
    assert list(again.lookup(np.array([30, 31, -1]))) == [None, "i31", None]
    assert again.add(["new"])[0] == 37


# -- size-based FAISS structure ---------------------------------------------------------


def test_ivf_lists_grows_with_size_and_leaves_training_points():
    assert ivf_lists(1_000_000) == 4096 and ivf_lists(150_000) == 2048
    assert ivf_lists(3) == 1 and all(ivf_lists(n) * 16 <= max(n, 16) for n in (10, 100, 5000))


def test_auto_is_flat_below_threshold_and_ivf_above():
    rng = np.random.default_rng(0)
    centres = unit_vectors(20, DIM, seed=1)
    index = FaissIndex(DIM, ann_threshold=400)
    assert index.factory == "auto" and index.structure_ == "Flat"
    index.add([f"a{i}" for i in range(399)], clustered(399, DIM, rng, centres))
    assert index.target_structure() == "Flat" and not index.needs_optimize
    assert index.optimize().structure_ == "Flat" and index.nprobe_ is None
    index.add(["a399"], clustered(1, DIM, rng, centres))
    assert index.needs_optimize and index.target_structure() == f"IVF{ivf_lists(400)},SQfp16"
    index.optimize()
    assert index.structure_ == "IVF16,SQfp16" and not index.needs_optimize
    assert 1 <= index.nprobe_ <= 16 and index.tuned_recall_ >= 0.95
    assert index.trained_size_ == 400
    # shrinking back below the threshold returns to exact search
    index.remove([f"a{i}" for i in range(300)])
    assert index.needs_optimize and index.optimize().structure_ == "Flat"
    assert index.search(index.get(["a350"]), k=1).ids[0, 0] == "a350"


def test_flat_and_explicit_factories():
    rng = np.random.default_rng(0)
    vectors = clustered(500, DIM, rng, unit_vectors(10, DIM, seed=1))
    flat = FaissIndex(DIM, factory="Flat", ann_threshold=10)
    flat.add([f"a{i}" for i in range(500)], vectors)
    assert not flat.needs_optimize and flat.optimize().structure_ == "Flat"
    ivf = FaissIndex(DIM, factory="IVF8,Flat", nprobe=3)
    ivf.add([f"a{i}" for i in range(500)], vectors)
    assert ivf.structure_ == "Flat" and ivf.needs_optimize  # untrained: exact until optimized
    assert ivf.optimize().structure_ == "IVF8,Flat" and ivf.nprobe_ == 3
    assert ivf.tuned_recall_ is None
    with pytest.raises(ValueError, match="not an IVF index"):
        FaissIndex(DIM, factory="HNSW32")
    with pytest.raises(ValueError, match="invalid FAISS factory"):
        FaissIndex(DIM, factory="NoSuchIndex")
    with pytest.raises(ValueError, match="needs at least 64 vectors"):
        small = FaissIndex(DIM, factory="IVF64,Flat")
        small.add(["x"], unit_vectors(1, DIM))
        small.optimize()


@pytest.fixture(scope="module")
def clustered_data():
    """20k database and 300 fresh query vectors, 64-d, around 300 shared centres."""
    rng = np.random.default_rng(7)
    centres = unit_vectors(300, 64, seed=8)
    return clustered(20_000, 64, rng, centres), clustered(300, 64, rng, centres)


@pytest.fixture(scope="module")
def ivf_index(clustered_data):
    vectors, _ = clustered_data
    index = FaissIndex(64, ann_threshold=10_000)
    index.add([f"v{i}" for i in range(len(vectors))], vectors)
    return index.optimize()


def test_tuned_ivf_reaches_target_recall_on_fresh_queries(clustered_data, ivf_index):
    vectors, queries = clustered_data
    exact = ExactIndex(64)
    exact.add([f"v{i}" for i in range(len(vectors))], vectors)
    assert ivf_index.structure_ == f"IVF{ivf_lists(20_000)},SQfp16"
    assert ivf_index.nprobe_ < ivf_lists(20_000) // 4  # tuning did not fall back to a scan
    found = ivf_index.search(queries, k=10).ids
    assert recall_at_k(found, exact.search(queries, k=10).ids) >= 0.95


def test_tuned_nprobe_is_the_smallest_that_reaches_the_goal_by_real_search():
    """The coarse-search prediction, checked against a real search at every nprobe."""
    import faiss

    from profiler.vectors import TUNE_MARGIN, _drop_self, _recall

    vectors = unit_vectors(3000, DIM, seed=4)  # no structure: nprobe far from 1 and nlist
    index = FaissIndex(DIM, ann_threshold=1000, seed=5)
    index.add([f"r{i}" for i in range(len(vectors))], vectors)
    index.optimize()
    ivf = faiss.extract_index_ivf(index._index)
    _, labels = index._id_map.to_arrays()
    stored = index._get(labels)
    rows = np.random.default_rng(6).choice(len(stored), 1000, replace=False)
    _, exact = faiss.knn(stored[rows], stored, 11, metric=faiss.METRIC_INNER_PRODUCT)
    truth = _drop_self(labels[exact], labels[rows], 10)

    def real(nprobe: int) -> float:
        params = faiss.SearchParametersIVF(nprobe=nprobe)
        _, found = index._index.search(stored[rows], 11, params=params)
        return _recall(_drop_self(found, labels[rows], 10), truth)

    goal = index.target_recall + TUNE_MARGIN
    smallest = next(p for p in range(1, ivf.nlist + 1) if real(p) >= goal)
    assert 1 < smallest < ivf.nlist
    assert smallest <= index.nprobe_ <= int(np.ceil(smallest * 1.02)) + 1
    assert index.tuned_recall_ >= goal


def test_empty_like_keeps_the_trained_structure_without_the_vectors(clustered_data, ivf_index):
    vectors, queries = clustered_data
    twin = ivf_index.empty_like()
    assert len(twin) == 0
    assert (twin.structure_, twin.nprobe_, twin.trained_size_) == (
        ivf_index.structure_,
        ivf_index.nprobe_,
        ivf_index.trained_size_,
    )
    twin.add([f"v{i}" for i in range(len(vectors))], vectors)
    assert not twin.needs_optimize  # filled again: no training or tuning to do
    np.testing.assert_array_equal(
        twin.search(queries, k=10).ids, ivf_index.search(queries, k=10).ids
    )
    assert FaissIndex(64).empty_like().structure_ == "Flat"


def test_ivf_save_load_keeps_tuned_nprobe_and_results(clustered_data, ivf_index, tmp_path):
    _, queries = clustered_data
    ivf_index.save(tmp_path, "items")
    manifest = json.loads((tmp_path / "items.json").read_text())
    assert manifest["structure"] == ivf_index.structure_
    assert manifest["nprobe_tuned"] == ivf_index.nprobe_
    for mmap in (False, True):
        loaded = load_index(tmp_path, "items", mmap=mmap)
        assert (loaded.structure_, loaded.nprobe_) == (ivf_index.structure_, ivf_index.nprobe_)
        before, after = ivf_index.search(queries, k=10), loaded.search(queries, k=10)
        assert (before.ids == after.ids).all() and np.allclose(before.scores, after.scores)


def test_effort_scans_that_share_of_the_tuned_lists(clustered_data):
    import faiss

    vectors, queries = clustered_data
    index = FaissIndex(64, ann_threshold=10_000)
    index.add([f"v{i}" for i in range(len(vectors))], vectors)
    index.optimize()
    tuned = index.search(queries, k=10)
    assert (index.search(queries, k=10, effort=1.0).ids == tuned.ids).all()
    fast = index.search(queries, k=10, effort=1e-6)  # one list
    params = faiss.SearchParametersIVF(nprobe=1)
    _, labels = index._index.search(queries, 10, params=params)
    full = (labels >= 0).all(axis=1)  # the others are rescanned with more lists
    assert full.mean() > 0.9
    expected = index._id_map.lookup(labels[full].ravel()).reshape(-1, 10)
    np.testing.assert_array_equal(fast.ids[full], expected)
    assert (fast.ids != tuned.ids).any()  # one list loses neighbours
    half = int(np.ceil(index.nprobe_ * 0.6))
    _, labels = index._index.search(queries, 10, params=faiss.SearchParametersIVF(nprobe=half))
    full = (labels >= 0).all(axis=1)
    expected = index._id_map.lookup(labels[full].ravel()).reshape(-1, 10)
    np.testing.assert_array_equal(index.search(queries, k=10, effort=0.6).ids[full], expected)
    for bad in (0.0, 1.5, -1):
        with pytest.raises(ValueError, match="effort"):
            index.search(queries, k=10, effort=bad)
    exact = ExactIndex(64)
    exact.add(["a", "b"], vectors[:2])
    assert (exact.search(queries, k=2, effort=0.1).ids == exact.search(queries, k=2).ids).all()


def test_ivf_remove_update_and_add_after_training(clustered_data):
    vectors, _ = clustered_data
    index = FaissIndex(64, ann_threshold=1000)
    index.add([f"v{i}" for i in range(2000)], vectors[:2000])
    index.optimize()
    index.remove([f"v{i}" for i in range(100)])
    found = index.search(vectors[:100], k=10).ids
    assert not {f"v{i}" for i in range(100)} & set(found.ravel())
    index.update(["v500"], vectors[:1])
    assert index.search(vectors[:1], k=1).ids[0, 0] == "v500"
    assert np.allclose(index.get(["v500"]), vectors[:1], atol=GET_ATOL)
    index.add(["late"], vectors[2000:2001])
    assert index.search(vectors[2000:2001], k=1).ids[0, 0] == "late"
    assert len(index) == 1901 and not index.needs_optimize


def test_auto_ivf_stores_float16_and_reoptimizing_loses_nothing(clustered_data):
    vectors, _ = clustered_data
    index = FaissIndex(64, ann_threshold=1000)
    ids = [f"v{i}" for i in range(2000)]
    index.add(ids, vectors[:2000])
    stored = index.optimize().get(ids)
    assert index.structure_.endswith(",SQfp16")
    error = np.abs(stored - vectors[:2000])
    assert error.max() > 0 and (error <= 2.0**-11 * np.abs(vectors[:2000]) + 1e-7).all()
    index.nprobe = 4  # a second optimize re-encodes the decoded vectors: bit-identical
    assert np.array_equal(index.optimize().get(ids), stored)
    index.remove(ids[:10])
    index.update(["v20"], vectors[:1])
    assert index.search(vectors[:1], k=1).ids[0, 0] == "v20"
    assert not set(ids[:10]) & set(index.search(vectors[:10], k=10).ids.ravel())


def test_ivf_never_pads_while_enough_items_exist():
    rng = np.random.default_rng(3)
    index = FaissIndex(DIM, factory="IVF16,Flat", nprobe=1)
    index.add([f"a{i}" for i in range(400)], clustered(400, DIM, rng, unit_vectors(16, DIM)))
    index.optimize()
    result = index.search(unit_vectors(20, DIM, seed=4), k=100)
    assert all(i is not None for i in result.ids.ravel())


def test_save_optimizes_and_old_manifests_load(tmp_path):
    index, _ = filled(functools.partial(FaissIndex, ann_threshold=1000), n=50)
    index.add([f"more-{i}" for i in range(1000)], unit_vectors(1000, DIM, seed=1))
    assert index.needs_optimize
    index.save(tmp_path, "items")
    assert index.structure_.startswith("IVF")
    flat, _ = filled(FaissIndex, n=5)
    flat.save(tmp_path, "old")
    manifest = json.loads((tmp_path / "old.json").read_text())
    old = {key: manifest[key] for key in ("format_version", "backend", "dim", "model_id")}
    old.update(count=5, next_label=5, factory="Flat")
    (tmp_path / "old.json").write_text(json.dumps(old))
    loaded = load_index(tmp_path, "old")
    assert loaded.structure_ == "Flat" and len(loaded) == 5


@pytest.mark.gpu
@pytest.mark.skipif(faiss_gpus() == 0, reason="FAISS sees no GPU")
def test_gpu_search_matches_cpu(clustered_data, ivf_index):
    _, queries = clustered_data
    cpu = ivf_index.search(queries, k=10)
    ivf_index.gpu = True
    try:
        gpu = ivf_index.search(queries, k=10)
    finally:
        ivf_index.gpu = False
    assert recall_at_k(gpu.ids, cpu.ids) >= 0.99


@pytest.mark.skipif("milvus-lite" not in BACKENDS, reason="pymilvus is not installed")
def test_milvus_matches_exact_reference_and_drops_labels_it_does_not_map(tmp_path):
    exact, _ = filled(ExactIndex, n=300, seed=1)
    remote, _ = filled(BACKENDS["milvus-lite"], n=300, seed=1)
    for index in (exact, remote):
        index.remove([f"item-{i}" for i in range(0, 300, 7)])
        index.update(["item-1"], unit_vectors(1, DIM, seed=99))
    queries = unit_vectors(20, DIM, seed=2)
    a = exact.search(queries, k=15, exclude={"item-3"})
    b = remote.search(queries, k=15, exclude={"item-3"})
    assert (a.ids == b.ids).all()
    assert np.allclose(a.scores, b.scores, atol=1e-5)

    # a writer elsewhere adds a vector under a label this index's id map does not hold:
    # it never shows up as a hit, and the results stay full
    remote.save(tmp_path, "items")
    reader = load_index(tmp_path, "items")
    remote.add(["intruder"], queries[:1])
    hits = reader.search(queries[:1], k=5)
    assert "intruder" not in hits.ids[0] and None not in hits.ids[0]
    with pytest.raises(ValueError, match="another writer changed it"):
        load_index(tmp_path, "items")
    remote.drop()
    with pytest.raises(ValueError, match="is gone"):
        load_index(tmp_path, "items")


def test_index_specs_parse_to_milvus_uris():
    from profiler.milvus import parse_spec

    assert parse_spec("faiss") is None
    assert parse_spec("milvus://db.internal:19530") == "http://db.internal:19530"
    assert parse_spec("milvus+https://cloud.example") == "https://cloud.example"
    assert parse_spec("milvus:///srv/items.db") == "/srv/items.db"
    assert parse_spec("milvus:items.db").endswith("/items.db")
    for bad in ("annoy", "milvus:items", "http://x"):
        with pytest.raises(ValueError, match="--index"):
            parse_spec(bad)


@pytest.mark.parametrize("factory", ["Flat", "IVF4,SQfp16"])
def test_labels_of_and_get_labelled_read_what_get_reads(factory):
    ids = [f"i{n}" for n in range(300)]
    index = FaissIndex(DIM, factory=factory)
    index.add(ids, unit_vectors(300, DIM, seed=2))
    index.optimize()
    before = index.version
    labels = index.labels_of(["i3", "nope", "i0"])
    assert labels[1] == -1
    np.testing.assert_array_equal(index.get_labelled(labels[[0, 2]]), index.get(["i3", "i0"]))
    with pytest.raises(KeyError):
        index.get_labelled(labels)  # -1: not in the index
    index.remove(["i3"])
    assert index.version != before
    with pytest.raises(KeyError):
        index.get_labelled(labels[[0]])  # removed since
    removed = index.version
    index.add(["new"], unit_vectors(1, DIM, seed=3))
    assert index.version != removed
    np.testing.assert_array_equal(index.get_labelled(index.labels_of(["new"])), index.get(["new"]))
