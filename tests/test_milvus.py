"""A workspace built with ``--index milvus:...`` against embedded Milvus Lite serves what
the FAISS-built one serves (the contract tests of the backend are in test_vectors.py)."""

from __future__ import annotations

import pandas as pd
import pytest

from profiler import cli
from profiler.workspace import Workspace

pytest.importorskip("pymilvus", reason="pymilvus is not installed")


def test_milvus_workspace_serves_what_faiss_serves(tmp_path, tiny_frames, embedder):
    items, events = tiny_frames
    local = Workspace.build(tmp_path / "faiss", catalog=items, events=events, embedder=embedder)
    uri = f"milvus:{tmp_path / 'milvus.db'}"
    remote = Workspace.build(
        tmp_path / "milvus", catalog=items, events=events, embedder=embedder, index=uri
    )
    manifest = remote.manifest["index"]
    assert manifest["backend"] == "milvus" and manifest["collection"].startswith("items_milvus_")
    assert (remote.data / "items.milvus.json").is_file()
    assert not (remote.data / "items.faiss").exists()
    remote.close()

    served = Workspace.open(tmp_path / "milvus", embedder=embedder)
    assert type(served.item_index).__name__ == "MilvusIndex"
    user = events["user_id"].iloc[0]  # raw: each workspace has its own pseudonym key
    assert served.recommend(user, k=8).ids == local.recommend(user, k=8).ids
    assert served.search("denim jeans", k=5).ids == local.search("denim jeans", k=5).ids
    item = items["item_id"].iloc[0]
    assert served.similar_items(item, 4).ids == local.similar_items(item, 4).ids
    served.add_events(
        pd.DataFrame([{"user_id": "m1", "timestamp": 1.7e9, "kind": "search", "text": "swim"}])
    )
    assert served.recommend("m1", k=3).ids
    served.close()

    # a rebuild of the same catalogue keeps the choice and reuses the collection
    again = Workspace.build(tmp_path / "milvus", catalog=items, events=events, embedder=embedder)
    assert again.manifest["index"]["collection"] == manifest["collection"]
    again.close()


def test_build_refuses_a_bad_index_before_any_work(tmp_path, tiny_files, capsys):
    catalog, events = tiny_files
    status = cli.main(
        [
            "build",
            "--catalog",
            str(catalog),
            "--events",
            str(events),
            "--workspace",
            str(tmp_path / "ws"),
            "--index",
            "annoy",
        ]
    )
    assert status == 2
    assert "--index 'annoy'" in capsys.readouterr().err
    assert not (tmp_path / "ws" / "CURRENT").exists()
