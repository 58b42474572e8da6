"""Building, persisting and querying a workspace on a real slice with the real model."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

import profiler
from profiler.workspace import FORMAT_VERSION, Workspace, item_document
from tests.conftest import copy_workspace


@pytest.fixture
def built(tmp_path, tiny_csv_workspace_template, embedder) -> Workspace:
    """The tiny CSV files built by ``profiler.build`` (a copy of the session's build)."""
    return copy_workspace(tiny_csv_workspace_template, tmp_path, embedder)


def category_of(ws: Workspace, item_id: str) -> str:
    return ws.items.set_index("item_id").loc[item_id, "category"]


def test_build_persists_everything(built, tiny_frames):
    items, events = tiny_frames
    manifest = json.loads((built.data / "manifest.json").read_text())
    assert built.data.parent == built.path / "generations"
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["counts"]["items"] == len(items)
    assert manifest["counts"]["events"] == len(events)
    assert manifest["model"]["dim"] == 384
    for name in ("items.faiss", "items.ids.npy", "items.parquet", "events.parquet"):
        assert (built.data / name).is_file(), name
        assert manifest["files"][name]["size"] == (built.data / name).stat().st_size
    assert len(built.item_index) == len(items)
    assert not (built.path / "quarantine" / "events.jsonl").exists()


def test_search_finds_the_product_type(built):
    results = built.search("denim jeans", k=5)
    assert len(results.ids) == 5 and (np.diff(results.scores) <= 1e-6).all()
    assert sum(category_of(built, i).endswith("Jeans") for i in results.ids) >= 4
    assert results.titles[0] == built.title(results.ids[0])


def test_recommend_known_user_excludes_seen_items(built):
    user = built.users[0]
    seen = set(built.user_events(user)["item_id"])
    results = built.recommend(user, k=10)
    assert len(results.ids) == 10 and not seen & set(results.ids)
    # a one-review shopper is shown items of the kind she reviewed
    reviewed = category_of(built, next(iter(seen)))
    assert category_of(built, results.ids[0]) == reviewed


def test_recommend_history_for_anonymous_shopper(built):
    results = built.recommend(history=["looking for a bikini for the beach", "one-piece swimsuit"])
    assert category_of(built, results.ids[0]).endswith("Swim")
    with pytest.raises(ValueError, match="exactly one"):
        built.recommend()
    with pytest.raises(ValueError, match="non-empty"):
        built.recommend(history=["  "])
    with pytest.raises(KeyError, match="ghost"):
        built.recommend("ghost")


def test_open_round_trip_and_model_check(built, embedder):
    opened = profiler.open(built.path, embedder=embedder)
    assert opened.search("denim jeans", k=3).ids == built.search("denim jeans", k=3).ids
    assert opened.users == built.users
    with pytest.raises(ValueError, match="built with model"):
        Workspace.open(built.path, model=embedder.spec.path)  # same weights, other id


def test_open_embeds_queries_with_the_numerics_it_was_built_with(built, embedder):
    model = json.loads((built.data / "manifest.json").read_text())["model"]
    assert (model["backend"], model["dtype"]) == ("torch", "float32")
    assert model["base_model_id"] == embedder.spec.model_id == model["model_id"]
    # Opened without an embedder, on any CPU (bfloat16 is the default where AMX exists),
    # queries are embedded in float32, as the items were.
    opened = profiler.open(built.path)
    assert (opened.embedder.backend, opened.embedder.dtype) == ("torch", "float32")
    assert opened.embedder.model_id == built.embedder.model_id


def test_open_rejects_other_format_and_missing(built, tmp_path):
    path = built.data / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["format_version"] = 99
    path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="manifest was changed after it was published"):
        Workspace.open(built.path)
    pointer = json.loads((built.path / "CURRENT").read_text())
    pointer["manifest_blake2b"] = hashlib.blake2b(path.read_bytes(), digest_size=20).hexdigest()
    (built.path / "CURRENT").write_text(json.dumps(pointer))  # as if published by format 99
    with pytest.raises(ValueError, match="format 99"):
        Workspace.open(built.path)
    with pytest.raises(FileNotFoundError, match="no workspace"):
        Workspace.open(tmp_path / "empty")


def test_dirty_events_are_quarantined_and_build_goes_on(tmp_path, tiny_frames, embedder):
    items, events = tiny_frames
    dirty = events.astype({"timestamp": object, "rating": object}).copy()
    dirty.loc[0, "timestamp"] = "not a time"
    dirty.loc[1, "rating"] = 9
    dirty.loc[2, "item_id"] = "no-such-item"
    ws = Workspace.build(tmp_path / "ws", catalog=items, events=dirty, embedder=embedder)
    assert len(ws.events) == len(events) - 3
    lines = (tmp_path / "ws" / "quarantine" / "events.jsonl").read_text().splitlines()
    assert [json.loads(line)["field"] for line in lines] == ["timestamp", "rating", "item_id"]


def test_rebuild_reuses_cached_embeddings(built, tiny_files, embedder):
    parts = sorted((built.path / "embeddings").rglob("part-*.npz"))
    catalog, events = tiny_files
    again = Workspace.build(built.path, catalog=catalog, events=events, embedder=embedder)
    assert sorted((built.path / "embeddings").rglob("part-*.npz")) == parts
    assert np.array_equal(again.event_vectors, built.event_vectors)


def test_item_document_uses_all_text_fields():
    row = pd.Series(
        {"title": "Wool coat", "category": "Jackets", "brand": "", "description": "Warm"}
    )
    assert item_document(row) == "Wool coat. Category: Jackets. Warm"


def test_profiles_and_user_index_persist(built, embedder):
    assert set(built.profiles) == set(built.users)
    assert len(built.user_index) == len(built.users)
    reopened = profiler.open(built.path, embedder=embedder)
    user = built.users[0]
    assert np.allclose(reopened.profiles[user].pos_sum, built.profiles[user].pos_sum)
    neighbours = reopened.similar_users(user, k=3)
    assert len(neighbours) == 3 and user not in {u for u, _ in neighbours}


def test_add_events_equals_rebuild(tmp_path, tiny_frames, embedder):
    items, events = tiny_frames
    early, late = events.iloc[:-6], events.iloc[-6:].copy()
    late["user_id"] = [events["user_id"].iloc[0]] * 3 + ["newcomer"] * 3  # a known user + a new one
    ws = Workspace.build(tmp_path / "inc", catalog=items, events=early, embedder=embedder)
    assert ws.add_events(late) == 6
    full = Workspace.build(
        tmp_path / "full", catalog=items, events=pd.concat([early, late]), embedder=embedder
    )
    for user in (events["user_id"].iloc[0], "newcomer"):
        a, b = ws.profile(user), full.profile(user)
        assert a.n_events == b.n_events
        assert np.allclose(a.pos_sum, b.pos_sum, atol=1e-5)
        assert np.allclose(a.centres, b.centres, atol=1e-5)
    reopened = Workspace.open(ws.path, embedder=embedder)
    assert reopened.stored_id("newcomer") in reopened.user_index and len(reopened.events) == len(
        events
    )
    assert reopened.recommend("newcomer", k=3).ids == full.recommend("newcomer", k=3).ids


def test_feedback_dislike_is_negative_evidence(built):
    user = built.users[1]
    first = built.recommend(user, k=5).ids[0]
    when = float(built.user_events(user)["timestamp"].max()) + 60
    built.feedback(user, first, liked=False, timestamp=when)
    assert built.profiles[user].has_negative
    assert first not in built.recommend(user, k=20).ids  # seen now, and disliked
    with pytest.raises(KeyError, match="unknown item 'no-such-item'"):
        built.feedback(user, "no-such-item", liked=True)


def test_category_filter_and_diversity(built):
    shown = built.recommend(history=["a warm winter coat"], k=5, categories=["Bottoms"])
    assert all(category_of(built, i).startswith("Bottoms") for i in shown.ids)
    plain = built.recommend(history=["denim jeans"], k=5)
    diverse = built.recommend(history=["denim jeans"], k=5, diversity=0.9)
    assert plain.ids[0] == diverse.ids[0] and plain.ids != diverse.ids
    kinds = {category_of(built, i) for i in diverse.ids}
    assert len(kinds) > len({category_of(built, i) for i in plain.ids})
    with pytest.raises(ValueError, match="no item has a category"):
        built.recommend(history=["jeans"], categories=["Garden"])


def test_queries_do_not_write_the_embedding_cache(built):
    parts = sorted(built.path.glob("embeddings/*/part-*.npz"))
    built.search("a query nobody made before", k=2)
    built.recommend(history=["another brand new query"], k=2)
    assert sorted(built.path.glob("embeddings/*/part-*.npz")) == parts


def test_one_query_scoring_runs_on_one_thread(built, monkeypatch):
    from threadpoolctl import threadpool_info

    from profiler import workspace

    seen = []
    rank = built.recommender.rank

    def spy(shopper, **kwargs):
        seen.append({(d["user_api"], d["num_threads"]) for d in threadpool_info()})
        return rank(shopper, **kwargs)

    monkeypatch.setattr(built.recommender, "rank", spy)
    built.recommend(history=["red dress"], k=2)
    assert seen and {api for api, _ in seen[0]} >= {"blas", "openmp"}  # FAISS runs OpenMP
    assert all(n == 1 for _, n in seen[0])
    assert workspace._thread_controller() is workspace._thread_controller()


def test_mmap_open_serves_the_same_results_and_refuses_writes(built, embedder):
    mapped = profiler.open(built.path, embedder=embedder, mmap=True)
    assert mapped.search("denim jeans", k=5).ids == built.search("denim jeans", k=5).ids
    user = built.users[0]
    assert mapped.recommend(user, k=5).ids == built.recommend(user, k=5).ids
    with pytest.raises(ValueError, match="read-only"):
        mapped.feedback(user, built.items["item_id"].iloc[0], liked=True)
    assert len(profiler.open(built.path, embedder=embedder).events) == len(built.events)
