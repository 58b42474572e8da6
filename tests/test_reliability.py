"""A workspace is never half-written: real kill -9 of build, add_events and embed at many
points, threads querying during updates, and a reader process during rebuilds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest

from profiler.jobs import ShardedEmbeddings
from profiler.workspace import Workspace

#: Runs one job in a subprocess and SIGKILLs itself just before its N-th rename (every
#: file the library writes lands by a rename: atomic writes, shard files, publishing);
#: N beyond the last rename lets the job finish and print how many there were.
DRIVER = r"""
import json, os, signal, sys

kill_at = int(sys.argv[1])
calls = 0


def counting(real):
    def wrapper(*args, **kwargs):
        global calls
        calls += 1
        if calls == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    return wrapper


os.replace = counting(os.replace)
os.rename = counting(os.rename)

from profiler.embedding import Embedder
from profiler.jobs import EmbedJob
from profiler.workspace import Workspace

job, target, catalog, events = sys.argv[2:6]
embedder = Embedder(device="cpu", backend="torch", dtype="float32", show_progress_bar=False)
if job == "build":
    Workspace.build(target, catalog=catalog, events=events, embedder=embedder)
elif job == "add":
    Workspace.open(target, embedder=embedder).add_events(events)
elif job == "embed":
    EmbedJob(catalog, target, text_column="title", shard_size=8).run(encoder=embedder)
print(json.dumps({"renames": calls}))
"""


def run_driver(kill_at: int, job: str, target, catalog, events) -> subprocess.CompletedProcess:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    return subprocess.run(
        [sys.executable, "-c", DRIVER, str(kill_at), job, str(target), str(catalog), str(events)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def kill_points(total: int, n: int = 6) -> list[int]:
    """``n`` rename numbers spread over a job's ``total``, the first and the last included."""
    return sorted({round(x) for x in np.linspace(1, total, n)})


@pytest.fixture
def two_states(tmp_path, tiny_frames):
    """Old inputs (a workspace built from them), and new ones with more items and events."""
    items, events = tiny_frames
    old_items, new_items = items.iloc[:30], items
    old_events = events[events["item_id"].isin(old_items["item_id"])]
    paths = {}
    for name, frame in [
        ("old_items", old_items),
        ("new_items", new_items),
        ("old_events", old_events),
        ("new_events", events),
        ("added", events[~events.index.isin(old_events.index)].head(12)),
    ]:
        paths[name] = tmp_path / f"{name}.csv"
        frame.to_csv(paths[name], index=False)
    return paths


def _recommended(ws: Workspace, users) -> tuple:
    return tuple(tuple(ws.recommend(u, k=5).ids) for u in users)


def _serves(path, embedder, users) -> tuple[str, int, tuple]:
    ws = Workspace.open(path, embedder=embedder)
    try:
        known = [u for u in users if _known(ws, u)]
        return ws.generation, len(ws.events), tuple(tuple(ws.recommend(u, k=5).ids) for u in known)
    finally:
        ws.close()


def _known(ws, user) -> bool:
    try:
        ws.stored_id(user)
    except KeyError:
        return False
    return True


@pytest.mark.slow  # 13 job processes, 1.5-2 minutes on 2 cores
def test_kill_build_at_every_stage_leaves_old_or_new(tmp_path, two_states, embedder):
    p = two_states
    base = tmp_path / "base"  # every copy shares its pseudonym key, so results compare
    ws = Workspace.build(base, catalog=p["old_items"], events=p["old_events"], embedder=embedder)
    users = list(pd.read_csv(p["old_events"])["user_id"].astype(str).unique()[:3])
    old = (len(ws.events), _recommended(ws, users))
    before = ws.generation
    ws.close()
    done = tmp_path / "done"
    shutil.copytree(base, done)
    total = json.loads(run_driver(10**6, "build", done, p["new_items"], p["new_events"]).stdout)
    new = _serves(done, embedder, users)[1:]
    assert old != new
    points = kill_points(total["renames"])
    print(f"build: {total['renames']} renames, killed before {points}")  # pytest -s
    assert len(points) >= 5
    for n in points:
        target = tmp_path / f"kill-{n}"
        shutil.copytree(base, target)
        result = run_driver(n, "build", target, p["new_items"], p["new_events"])
        assert result.returncode == -9, result.stderr[-2000:]
        generation, *state = _serves(target, embedder, users)
        assert tuple(state) == (old if generation == before else new), n
        assert run_driver(10**6, "build", target, p["new_items"], p["new_events"]).returncode == 0
        assert _serves(target, embedder, users)[1:] == new
        assert not [q for q in target.rglob("*") if q.name.endswith(".tmp")]


@pytest.mark.slow  # 13 job processes, 1.5-2 minutes on 2 cores
def test_kill_add_events_leaves_old_or_new(tmp_path, two_states, embedder):
    p = two_states
    base = tmp_path / "base"
    ws = Workspace.build(base, catalog=p["new_items"], events=p["old_events"], embedder=embedder)
    users = list(pd.read_csv(p["added"])["user_id"].astype(str).unique()[:3])
    old_events = len(ws.events)
    ws.close()
    done = tmp_path / "done"
    shutil.copytree(base, done)
    total = json.loads(run_driver(10**6, "add", done, "-", p["added"]).stdout)["renames"]
    _, new_events, new = _serves(done, embedder, users)
    assert new_events > old_events
    points = kill_points(total)
    print(f"add_events: {total} renames, killed before {points}")
    assert len(points) >= 5
    for n in points:
        target = tmp_path / f"kill-{n}"
        shutil.copytree(base, target)
        assert run_driver(n, "add", target, "-", p["added"]).returncode == -9
        _, n_events, recommended = _serves(target, embedder, users)
        assert n_events in (old_events, new_events), n
        if n_events == new_events:
            assert recommended == new, n
        if n_events == old_events:  # not published: run it again
            assert run_driver(10**6, "add", target, "-", p["added"]).returncode == 0
        assert _serves(target, embedder, users)[1:] == (new_events, new)


@pytest.mark.slow  # 13 job processes, 1.5-2 minutes on 2 cores
def test_kill_embed_job_resumes_to_identical_vectors(tmp_path, two_states):
    p = two_states
    clean = tmp_path / "clean"
    total = json.loads(run_driver(10**6, "embed", clean, p["new_items"], "-").stdout)["renames"]
    expected = ShardedEmbeddings(clean)
    points = kill_points(total)
    print(f"embed: {total} renames, killed before {points}")
    assert len(points) >= 5
    for n in points:
        out = tmp_path / f"kill-{n}"
        assert run_driver(n, "embed", out, p["new_items"], "-").returncode == -9
        assert run_driver(10**6, "embed", out, p["new_items"], "-").returncode == 0
        resumed = ShardedEmbeddings(out)
        np.testing.assert_array_equal(resumed.ids, expected.ids)
        np.testing.assert_array_equal(resumed.vectors(), expected.vectors())


def test_queries_during_add_events_see_no_errors(tmp_path, tiny_frames, embedder):
    """4 threads x 500 queries while 50 add_events run: no error, and every answer comes
    from one consistent state."""
    items, events = tiny_frames
    ws = Workspace.build(tmp_path / "ws", catalog=items, events=events, embedder=embedder)
    users = list(events["user_id"].unique()[:8])
    errors: list[BaseException] = []
    answered = [0]
    stop = threading.Event()

    def query(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for n in range(500):
            try:
                if n % 5 == 0:
                    ws.search("denim jeans", k=3)
                else:
                    user = users[rng.integers(len(users))]
                    result = ws.recommend(user, k=5)
                    assert len(result.ids) == 5
                    assert len(ws.user_events(user)) >= 1
                answered[0] += 1
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=query, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    latest = float(events["timestamp"].max())
    for n in range(50):
        event = {
            "user_id": users[n % len(users)],
            "timestamp": latest + n + 1,
            "kind": "like" if n % 3 else "dislike",
            "item_id": items["item_id"].iloc[n % len(items)],
        }
        assert ws.add_events(pd.DataFrame([event])) == 1
    for t in threads:
        t.join()
    stop.set()
    assert errors == [] and answered[0] == 2000
    assert len(ws.events) == len(events) + 50
    reopened = Workspace.open(ws.path, embedder=embedder)
    assert len(reopened.events) == len(events) + 50


READER = r"""
import json, sys, time
from profiler.embedding import Embedder
from profiler.workspace import Workspace

path, stop = sys.argv[1], sys.argv[2]
embedder = Embedder(device="cpu", backend="torch", dtype="float32", show_progress_bar=False)
opens = errors = mixed = 0
generations = set()
messages = []
import os
while not os.path.exists(stop):
    try:
        ws = Workspace.open(path, embedder=embedder)
        counts = ws.manifest["counts"]
        consistent = (
            counts["events"] == len(ws.events)
            and counts["items"] == len(ws.items) == len(ws.item_index)
            and counts["users"] == len(ws.users) == len(ws.profiles)
            and ws.events["item_id"][ws.events["item_id"] != ""].isin(ws.items["item_id"]).all()
        )
        ws.recommend(ws.users[0], k=3)
        mixed += not consistent
        generations.add(ws.generation)
        opens += 1
        ws.close()
    except Exception as exc:
        errors += 1
        messages.append(repr(exc)[:300])
print(json.dumps({"opens": opens, "errors": errors, "mixed": mixed,
                  "generations": len(generations), "messages": messages[:5]}))
"""


def test_a_reader_process_during_rebuilds_sees_whole_generations(tmp_path, two_states, embedder):
    p = two_states
    path = tmp_path / "ws"
    Workspace.build(path, catalog=p["old_items"], events=p["old_events"], embedder=embedder).close()
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(path), str(tmp_path / "stop")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(8)  # the reader's imports and model
    for n in range(20):
        catalog, events = (
            (p["new_items"], p["new_events"]) if n % 2 == 0 else (p["old_items"], p["old_events"])
        )
        Workspace.build(path, catalog=catalog, events=events, embedder=embedder).close()
    time.sleep(1)
    (tmp_path / "stop").touch()
    out, err = reader.communicate(timeout=60)
    assert out, err[-2000:]
    summary = json.loads(out.splitlines()[-1])
    print(f"reader during 20 rebuilds: {summary}")  # for the record (pytest -s)
    assert summary["errors"] == 0 and summary["mixed"] == 0, summary
    assert summary["opens"] >= 20 and summary["generations"] >= 2, summary
