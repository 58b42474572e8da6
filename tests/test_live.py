"""A server process's workspace kept on the newest generation (profiler/service/live.py):
following another writer, writes that take turns and wait for every process, requests
that finish on the generation they started with, and ``profiler serve --workers 2``
end to end over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from profiler.service.live import LiveWorkspace
from profiler.store import Store
from profiler.workspace import Workspace, rows_by_user
from tests.conftest import copy_workspace


def search_event(user: str, n: int = 0) -> pd.DataFrame:
    return pd.DataFrame(
        [{"user_id": user, "timestamp": 1.7e9 + n, "kind": "search", "text": "linen summer dress"}]
    )


def knows(ws: Workspace, user: str) -> bool:
    try:
        ws.stored_id(user)
    except KeyError:
        return False
    return True


def wait_for(condition, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


@pytest.fixture
def path(tiny_workspace_template, tmp_path, embedder):
    """A fresh copy of the tiny real workspace (bundled model), closed: each test opens it
    as many times as it has 'processes'."""
    copy_workspace(tiny_workspace_template, tmp_path, embedder).close()
    return tmp_path / "ws"


def test_a_write_answers_once_every_process_serves_it(path, embedder, tmp_path):
    a = LiveWorkspace(Workspace.open(path, embedder=embedder), peers=tmp_path / "peers")
    b = LiveWorkspace(Workspace.open(path, embedder=embedder), peers=tmp_path / "peers")
    b.start()
    try:
        with b.reading() as before:  # a request on b that started before the write
            with a.writing() as ws:
                ws.add_events(search_event("n1"))
            # the write has answered: b already serves its generation...
            assert b.workspace.generation == a.workspace.generation != before.generation
            assert len(b.workspace.user_events("n1")) == 1
            # ...while the request that started earlier finishes on its own, still open
            with pytest.raises(KeyError, match="n1"):
                before.user_events("n1")
            assert before._lease is not None
        assert before._lease is None  # closed once its last request was done
    finally:
        a.close()
        b.close()


def test_writes_from_two_processes_take_turns_and_lose_nothing(path, embedder, tmp_path):
    lives = [
        LiveWorkspace(Workspace.open(path, embedder=embedder), peers=tmp_path / "peers")
        for _ in range(2)
    ]
    for live in lives:
        live.start()
    failures: list[BaseException] = []

    def write(live: LiveWorkspace, user: str) -> None:
        try:
            with live.writing() as ws:
                ws.add_events(search_event(user))
        except BaseException as exc:  # collected: a thread's exception would be lost
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(lives[n % 2], f"t{n}")) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert failures == []
        assert lives[0].workspace.generation == lives[1].workspace.generation
        for live in lives:
            for n in range(6):
                assert len(live.workspace.user_events(f"t{n}")) == 1
    finally:
        for live in lives:
            live.close()
    with Workspace.open(path, embedder=embedder) as reopened:
        assert all(len(reopened.user_events(f"t{n}")) == 1 for n in range(6))


def test_one_process_follows_another_program_and_writes_after_it(path, embedder):
    """``profiler add-events`` from a shell while the server runs: the server answers
    with it, and its own next write starts from it (it was refused before)."""
    live = LiveWorkspace(Workspace.open(path, embedder=embedder))
    live.start()
    try:
        with Workspace.open(path, embedder=embedder) as shell:
            shell.add_events(search_event("from-shell"))
        wait_for(lambda: knows(live.workspace, "from-shell"))
        with live.writing() as ws:
            ws.add_events(search_event("from-server", 1))
    finally:
        live.close()
    with Workspace.open(path, embedder=embedder) as reopened:
        assert len(reopened.user_events("from-shell")) == 1
        assert len(reopened.user_events("from-server")) == 1


def test_reopen_checksums_only_what_changed(path, embedder, monkeypatch):
    ws = Workspace.open(path, embedder=embedder)
    with Workspace.open(path, embedder=embedder) as writer:
        writer.add_events(search_event("n2"))
        changed = {
            rel
            for rel, entry in writer.manifest["files"].items()
            if ws.manifest["files"].get(rel) != entry
        }
    read: list[str] = []
    original = Store._check_file

    def spy(file, want, *, content=True):
        if content:
            read.append(file.name)
        return original(file, want, content=content)

    monkeypatch.setattr(Store, "_check_file", staticmethod(spy))
    newer = ws.reopen()
    try:
        assert "events.parquet" in changed and "items.faiss" not in changed
        assert sorted(read) == sorted(rel.split("/")[-1] for rel in changed)
        assert newer.embedder is ws.embedder
        assert len(newer.user_events("n2")) == 1
        assert newer.recommend("n2", k=3).ids  # the new generation serves
    finally:
        newer.close()
        ws.close()


def test_reopen_still_refuses_a_changed_file_that_is_damaged(path, embedder):
    ws = Workspace.open(path, embedder=embedder)
    with Workspace.open(path, embedder=embedder) as writer:
        writer.add_events(search_event("n3"))
        events = writer.data / "events.parquet"
    data = bytearray(events.read_bytes())
    data[len(data) // 2] ^= 0xFF
    os.chmod(events, 0o600)
    events.write_bytes(bytes(data))
    try:
        with pytest.raises(ValueError, match=r"events\.parquet: checksum mismatch"):
            ws.reopen()
    finally:
        ws.close()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c", "d", "é"]), min_size=1, max_size=40))
def test_rows_by_user_equals_groupby_indices(users):
    series = pd.Series(users, dtype="string[pyarrow]")
    want = pd.DataFrame({"user_id": series}).groupby("user_id", sort=False).indices
    got = rows_by_user(series)
    assert list(got) == list(want)
    for user, rows in want.items():
        np.testing.assert_array_equal(got[user], rows)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_with_two_workers_over_http(path):
    """``profiler serve --workers 2``: both processes answer, a write posted to one is
    in every answer after it, a forgotten shopper is gone from both, a busy process
    hands connections back, and ``/metrics`` counts the requests of both."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "profiler.cli", "serve", "--workspace", str(path)]
    log = open(path.parent / "serve.log", "w")  # noqa: SIM115 (closed in finally)
    server = subprocess.Popen(
        [*command, "--port", str(port), "--workers", "2", "-q"], stderr=log, stdout=log
    )

    def fresh_get(route: str) -> httpx.Response:
        with httpx.Client(base_url=url, timeout=60) as http:  # a new connection each
            return http.get(route)

    def processes() -> set[int]:
        return {fresh_get("/readyz").json()["process"] for _ in range(30)}

    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (path.parent / "serve.log").read_text()
            try:
                if fresh_get("/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.5)
        wait_for(lambda: len(processes()) == 2, seconds=120)
        event = {"user_id": "w-new", "timestamp": 1.7e9, "kind": "search", "text": "jeans"}
        with httpx.Client(base_url=url, timeout=60) as http:
            assert http.post("/events", json={"events": [event]}).json()["added"] == 1
        answered = set()
        for _ in range(30):
            with httpx.Client(base_url=url, timeout=60) as http:
                answered.add(http.get("/readyz").json()["process"])
                assert http.get("/users/w-new/profile").status_code == 200
        assert len(answered) == 2  # both processes knew her at once
        with httpx.Client(base_url=url, timeout=60) as http:
            assert http.delete("/users/w-new").status_code == 200
        for _ in range(20):
            answer = fresh_get("/users/w-new/profile")
            assert answer.status_code == 404 and "w-new" in answer.json()["detail"]
        # alone, a request keeps its connection; a busy process hands it back
        assert fresh_get("/readyz").headers.get("connection") != "close"
        closed: list[bool] = []

        def busy() -> None:
            with httpx.Client(base_url=url, timeout=60) as http:
                for _ in range(5):
                    answer = http.post("/recommend", json={"history": ["warm coat"], "k": 5})
                    assert answer.status_code == 200
                    closed.append(answer.headers.get("connection") == "close")

        clients = [threading.Thread(target=busy) for _ in range(8)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join()
        assert len(closed) == 40 and any(closed)
        metrics = fresh_get("/metrics").text
        line = next(
            row
            for row in metrics.splitlines()
            if row.startswith("profiler_requests_total")
            and 'route="/readyz"' in row
            and 'status="200"' in row
        )
        assert float(line.rsplit(" ", 1)[1]) >= 60  # both processes' probes, summed
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()


def test_a_process_that_cannot_open_the_published_generation_is_not_ready(path, embedder):
    from fastapi.testclient import TestClient

    from profiler.service.app import create_app

    app = create_app(Workspace.open(path, embedder=embedder))
    with TestClient(app, raise_server_exceptions=False) as http:  # lifespan: follows
        live = app.state.workspace
        live.stop()  # damage the next generation before the follower looks at it
        with Workspace.open(path, embedder=embedder) as writer:
            writer.add_events(search_event("n4"))
            events = writer.data / "events.parquet"
            damaged = bytearray(events.read_bytes())
            damaged[len(damaged) // 2] ^= 0xFF
            events.write_bytes(bytes(damaged))
            live.start()
            wait_for(lambda: live.behind is not None)
            ready = http.get("/readyz")
            assert ready.status_code == 503
            assert "events.parquet: checksum mismatch" in ready.json()["detail"]
            # it still answers from the generation it has
            assert http.post("/search", json={"query": "jeans", "k": 2}).status_code == 200
            writer.add_events(search_event("n5", 1))  # a good generation: it recovers
            wait_for(lambda: live.behind is None and knows(live.workspace, "n5"))
            assert http.get("/readyz").status_code == 200


def test_serve_refuses_a_bad_worker_count(path, capsys):
    from profiler import cli

    for bad in ("0", "two"):
        assert cli.main(["serve", "--workspace", str(path), "--workers", bad]) == 2
        assert "--workers: a number of processes (1 or more) or auto" in capsys.readouterr().err
    missing = path.parent / "none"
    assert cli.main(["serve", "--workspace", str(missing), "--workers", "2"]) == 2
    assert f"{missing}: no workspace here" in capsys.readouterr().err


def test_a_closed_process_is_not_waited_for(path, embedder, tmp_path):
    a = LiveWorkspace(Workspace.open(path, embedder=embedder), peers=tmp_path / "peers")
    b = LiveWorkspace(Workspace.open(path, embedder=embedder), peers=tmp_path / "peers")
    assert [name for name, _ in a._peer_generations()] == [b._name]
    b.close()
    assert a._peer_generations() == []
    with a.writing() as ws:  # answers at once: nobody else to wait for
        ws.add_events(search_event("n6"))
    a.close()
