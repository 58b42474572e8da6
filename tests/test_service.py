"""The HTTP service through the real stack: every endpoint, auth, bad requests, forget,
metrics, the Python client against a live uvicorn, and reads during writes."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient

from profiler.service import Client
from profiler.service.app import create_app
from profiler.service.client import InvalidRequestError, NotFoundError, ServiceError
from profiler.workspace import Workspace
from tests.conftest import live_server


@pytest.fixture(scope="module")
def template(tmp_path_factory, tiny_tagged_template):
    """A tiny real workspace (bundled model) with a tagger, this module's own copy of the
    session's; tests that write copy it."""
    path = tmp_path_factory.mktemp("service") / "ws"
    shutil.copytree(tiny_tagged_template, path, symlinks=True)
    return path


@pytest.fixture(scope="module")
def ws(template, embedder):
    """The template opened once for the read-only tests."""
    opened = Workspace.open(template, embedder=embedder)
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def http(ws):
    return TestClient(create_app(ws), raise_server_exceptions=False)


@pytest.fixture
def fresh(template, tmp_path, embedder):
    """A copy of the template, for tests that write."""
    shutil.copytree(template, tmp_path / "copy", symlinks=True)
    opened = Workspace.open(tmp_path / "copy", embedder=embedder)
    yield opened
    opened.close()


def raw_user(ws, tiny_frames, n: int = 0) -> str:
    """A raw shopper id as a caller knows her (the workspace stores a pseudonym)."""
    _, events = tiny_frames
    return events["user_id"].drop_duplicates().iloc[n]


def test_probes_docs_and_schema(http, ws):
    assert http.get("/livez").json() == {"status": "alive"}
    ready = http.get("/readyz").json()
    assert ready["status"] == "ready" and ready["generation"] == ws.generation
    assert ready["items"] == len(ws.items)
    assert http.get("/docs").status_code == 200
    schema = http.get("/openapi.json").json()
    paths = set(schema["paths"])
    for path in (
        "/recommend",
        "/search",
        "/tags",
        "/events",
        "/feedback",
        "/users/{user_id}/tags",
        "/users/{user_id}/profile",
        "/users/{user_id}",
        "/items/{item_id}/similar",
        "/items/{item_id}/audience",
        "/livez",
        "/readyz",
        "/metrics",
    ):
        assert path in paths, path
    models = schema["components"]["schemas"]
    assert {"RecommendRequest", "RecommendResponse", "EventIn", "FeedbackRequest"} <= set(models)
    assert set(models["RecommendRequest"]["properties"]) >= {"user_id", "history", "k"}


def test_recommend_matches_the_workspace(http, ws, tiny_frames):
    user = raw_user(ws, tiny_frames)
    answer = http.post("/recommend", json={"user_id": user, "k": 5})
    assert answer.status_code == 200
    body = answer.json()
    local = ws.recommend(user, k=5)
    assert body["user_id"] == user
    assert [i["item_id"] for i in body["items"]] == local.ids
    assert np.allclose([i["score"] for i in body["items"]], local.scores, atol=1e-5)
    assert all(i["reasons"]["channels"] for i in body["items"])

    texts = ["high waisted skinny jeans"]
    anonymous = http.post("/recommend", json={"history": texts, "k": 4}).json()
    assert anonymous["user_id"] is None and anonymous["history"] == texts
    assert [i["item_id"] for i in anonymous["items"]] == ws.recommend(history=texts, k=4).ids

    batch = http.post("/recommend", json=[{"user_id": user, "k": 5}, {"history": texts, "k": 4}])
    assert [len(r["items"]) for r in batch.json()] == [5, 4]
    assert [i["item_id"] for i in batch.json()[0]["items"]] == local.ids

    top = ws.items["category"].iloc[0].split(" > ")[0]
    filtered = http.post("/recommend", json={"history": texts, "k": 3, "categories": [top]})
    assert filtered.status_code == 200
    category = ws.items.set_index("item_id")["category"]
    assert all(category[i["item_id"]].startswith(top) for i in filtered.json()["items"])
    explored = http.post(
        "/recommend", json={"user_id": user, "k": 5, "explore": "strength=1", "seed": 3}
    ).json()
    assert all("propensity" in i["reasons"] for i in explored["items"])


def test_search_similar_and_audience(http, ws):
    found = http.post("/search", json={"query": "denim jeans", "k": 3}).json()
    assert found["query"] == "denim jeans"
    assert [i["item_id"] for i in found["items"]] == ws.search("denim jeans", k=3).ids
    # Chinese text goes in and comes back as UTF-8 characters, not escapes
    query = "牛仔裤 连衣裙"
    chinese = http.post("/search", json={"query": query, "k": 2})
    assert chinese.status_code == 200  # JSON is UTF-8 (RFC 8259): the raw bytes hold it
    assert query.encode() in chinese.content and chinese.json()["query"] == query
    item = found["items"][0]["item_id"]
    similar = http.get(f"/items/{item}/similar", params={"k": 4}).json()
    assert len(similar["items"]) == 4 and item not in [i["item_id"] for i in similar["items"]]
    assert [i["item_id"] for i in similar["items"]] == ws.similar_items(item, 4).ids
    audience = http.get(f"/items/{item}/audience", params={"k": 3}).json()
    assert audience["item_id"] == item
    assert [u["user_id"] for u in audience["users"]] == [u for u, _ in ws.audience(item, 3)]
    assert all(u["user_id"] in ws.profiles for u in audience["users"])


def test_tags_and_profile(http, ws, tiny_frames):
    user = raw_user(ws, tiny_frames)
    tags = http.get(f"/users/{user}/tags", params={"top": 3}).json()
    assert tags["user_id"] == user
    assert tags["tags"] == [t.to_dict() for t in ws.tags(user, top=3)]
    assert tags["tags"] and tags["tags"][0]["evidence"]

    texts = http.post("/tags", json={"texts": ["a swimsuit for the beach", "wool sweater"]}).json()
    assert [t["text"] for t in texts] == ["a swimsuit for the beach", "wool sweater"]
    joined = http.post("/tags", json={"texts": ["a swimsuit", "for the beach"], "joined": True})
    assert len(joined.json()) == 1

    profile = http.get(f"/users/{user}/profile").json()
    assert profile["user_id"] == user and profile["stored_id"] == ws.stored_id(user)
    assert profile["events"] == len(ws.user_events(user))
    assert profile["tags"] and profile["centres"] and profile["centres"][0]["items"]
    assert profile["recent_events"][0]["kind"]


def test_pin_and_remove_a_tag(fresh, tiny_frames):
    http = TestClient(create_app(fresh), raise_server_exceptions=False)
    user = raw_user(fresh, tiny_frames)
    tag = fresh.tag_model.taxonomy.names[-1]
    pinned = http.post(f"/users/{user}/tags", json={"tag": tag, "action": "pin"}).json()
    assert any(t["tag"] == tag and t["pinned"] for t in pinned["tags"])
    removed = http.post(f"/users/{user}/tags", json={"tag": tag, "action": "remove"}).json()
    assert tag not in [t["tag"] for t in removed["tags"]]
    bad = http.post(f"/users/{user}/tags", json={"tag": tag, "action": "hide"})
    assert bad.status_code == 422 and "action" in bad.json()["detail"]
    unknown_tag = http.post(f"/users/{user}/tags", json={"tag": "No Such Tag", "action": "pin"})
    assert unknown_tag.status_code in (404, 422) and "No Such Tag" in unknown_tag.json()["detail"]


def test_events_and_feedback(fresh):
    http = TestClient(create_app(fresh), raise_server_exceptions=False)
    events = [
        {"user_id": "new-shopper", "timestamp": 1.7e9, "kind": "search", "text": "denim jeans"},
        {"user_id": "new-shopper", "timestamp": "not a time", "kind": "search", "text": "x"},
    ]
    added = http.post("/events", json={"events": events})
    assert added.status_code == 200
    assert added.json()["added"] == 1 and added.json()["rejected"] == 1
    assert added.json()["generation"] == fresh.generation
    assert (fresh.path / "quarantine" / "events-added.jsonl").is_file()
    recs = http.post("/recommend", json={"user_id": "new-shopper", "k": 3}).json()["items"]
    item = recs[0]["item_id"]
    first = http.post(
        "/feedback",
        json={"user_id": "new-shopper", "item_id": item, "liked": True, "event_id": "e1"},
    )
    assert first.json() == {"user_id": "new-shopper", "item_id": item, "counted": True}
    again = http.post(
        "/feedback", json={"user_id": "new-shopper", "item_id": item, "reward": 1, "event_id": "e1"}
    )
    assert again.json()["counted"] is False
    after = http.post("/recommend", json={"user_id": "new-shopper", "k": 3}).json()["items"]
    assert item not in [i["item_id"] for i in after]  # she has seen it now
    assert http.get("/users/new-shopper/profile").json()["events"] == 2

    unknown_item = http.post(
        "/feedback", json={"user_id": "new-shopper", "item_id": "nope", "liked": 1}
    )
    assert unknown_item.status_code == 404 and "nope" in unknown_item.json()["detail"]
    unknown_user = http.post("/feedback", json={"user_id": "ghost", "item_id": item, "liked": True})
    assert unknown_user.status_code == 404 and "ghost" in unknown_user.json()["detail"]
    out_of_range = http.post(
        "/feedback", json={"user_id": "new-shopper", "item_id": item, "reward": 2}
    )
    assert out_of_range.status_code == 422 and "reward" in out_of_range.json()["detail"]
    bad_kind = http.post("/events", json={"events": [{**events[0], "kind": "stare"}]})
    assert bad_kind.status_code == 422 and "events[0].kind" in bad_kind.json()["detail"]


def test_forget_removes_her_from_every_answer(fresh, tiny_frames):
    http = TestClient(create_app(fresh), raise_server_exceptions=False)
    user = raw_user(fresh, tiny_frames)
    stored = fresh.stored_id(user)
    item = fresh.user_events(user)["item_id"].iloc[0]
    assert stored in [
        u["user_id"] for u in http.get(f"/items/{item}/audience?k=50").json()["users"]
    ]
    report = http.delete(f"/users/{user}")
    assert report.status_code == 200
    assert report.json()["events"] > 0 and report.json()["profile"] is True
    for response in (
        http.get(f"/users/{user}/tags"),
        http.get(f"/users/{user}/profile"),
        http.post("/recommend", json={"user_id": user}),
        http.post("/feedback", json={"user_id": user, "item_id": item, "liked": True}),
        http.delete(f"/users/{user}"),
        http.get(f"/users/{stored}/profile"),  # by pseudonym too
    ):
        assert response.status_code == 404, response.json()
        assert "unknown user" in response.json()["detail"]
    audience = http.get(f"/items/{item}/audience?k=50").json()["users"]
    assert stored not in [u["user_id"] for u in audience]
    texts = http.post("/recommend", json={"history": ["jeans"], "k": 5})
    assert texts.status_code == 200


def test_api_key(ws):
    http = TestClient(create_app(ws, api_key="s3cret"), raise_server_exceptions=False)
    body = {"query": "jeans"}
    missing = http.post("/search", json=body)
    assert missing.status_code == 401 and "X-API-Key" in missing.json()["detail"]
    wrong = http.post("/search", json=body, headers={"X-API-Key": "guess"})
    assert wrong.status_code == 401 and wrong.json()["detail"] == "wrong API key"
    assert http.post("/search", json=body, headers={"X-API-Key": "s3cret"}).status_code == 200
    assert http.get("/users/x/tags").status_code == 401  # before the id is even looked up
    for open_path in ("/livez", "/readyz", "/metrics", "/", "/static/app.js"):
        assert http.get(open_path).status_code == 200, open_path
    schema = http.get("/openapi.json").json()
    assert "APIKeyHeader" in schema["components"]["securitySchemes"]


def test_bad_requests_are_4xx_with_a_message(ws, tiny_frames):
    http = TestClient(create_app(ws, max_body_bytes=4096), raise_server_exceptions=False)
    user = raw_user(ws, tiny_frames)
    cases = [
        (
            http.post(
                "/recommend", content=b"{not json", headers={"content-type": "application/json"}
            ),
            400,
            "not valid JSON",
        ),
        (http.post("/recommend", json={"user_id": user, "k": 0}), 422, "k:"),
        (http.post("/recommend", json={"user_id": user, "k": "ten"}), 422, "k:"),
        (http.post("/recommend", json=[{"user_id": user, "k": 0}]), 422, "[0].k"),
        (http.post("/recommend", json={"user": user}), 422, "user:"),
        (http.post("/recommend", json={}), 422, "exactly one of user_id or history"),
        (http.post("/recommend", json={"history": ["   "]}), 422, "history"),
        (
            http.post("/recommend", json={"user_id": user, "categories": ["Nothing"]}),
            422,
            "Nothing",
        ),
        (http.post("/recommend", json=[]), 422, "batch"),
        (http.post("/search", json={"query": ""}), 422, "query"),
        (http.post("/search", json={"query": "x" * 5000}), 413, "over 4096 bytes"),
        (
            http.post(
                "/search",
                content=(b"x" * 1024 for _ in range(8)),
                headers={"content-type": "application/json"},
            ),
            413,
            "over 4096 bytes",
        ),
        (http.get("/items/nope/similar"), 404, "unknown item 'nope'"),
        (http.get("/items/nope/audience"), 404, "unknown item 'nope'"),
        (
            http.get(f"/items/{ws.items['item_id'].iloc[0]}/similar", params={"k": "many"}),
            422,
            "k:",
        ),
        (http.get("/users/nobody/tags"), 404, "unknown user 'nobody'"),
        (http.post("/events", json={"events": []}), 422, "events"),
        (
            http.post("/events", json={"events": [{"user_id": "a", "kind": "view"}]}),
            422,
            "events[0].timestamp",
        ),
    ]
    for response, status, words in cases:
        assert response.status_code == status, (status, response.json())
        assert words in response.json()["detail"], (words, response.json())


def test_an_internal_failure_is_a_500_without_a_traceback(ws, monkeypatch):
    http = TestClient(create_app(ws), raise_server_exceptions=False)

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire at /secret/path")

    monkeypatch.setattr(ws, "search", broken)
    answer = http.post("/search", json={"query": "jeans"})
    assert answer.status_code == 500
    assert answer.json() == {
        "detail": "internal error (RuntimeError); the server log has the details"
    }


def test_metrics_count_requests_by_route(ws, tiny_frames):
    http = TestClient(create_app(ws), raise_server_exceptions=False)
    user = raw_user(ws, tiny_frames)
    for _ in range(3):
        http.post("/recommend", json={"user_id": user, "k": 2})
    http.get("/users/nobody/tags")
    text = http.get("/metrics").text
    assert 'profiler_requests_total{method="POST",route="/recommend",status="200"} 3.0' in text
    assert 'route="/users/{user_id:path}/tags",status="404"} 1.0' in text
    assert "nobody" not in text  # ids are no label
    assert (
        'profiler_request_duration_seconds_bucket{le="0.1",method="POST",route="/recommend"}'
        in text
    )
    errors = 'profiler_request_errors_total{method="GET",route="/users/{user_id:path}/tags"'
    assert errors + ',status="404"} 1.0' in text


def test_client_over_live_http_matches_the_workspace(fresh, tiny_frames):
    user = raw_user(fresh, tiny_frames)
    local_recs = fresh.recommend(user, k=5)
    local_tags = fresh.tags(user, top=3)
    local_search = fresh.search("summer dress", k=3)
    with live_server(create_app(fresh, api_key="k")) as url, Client(url, api_key="k") as remote:
        assert remote.ready()["status"] == "ready"
        got = remote.recommend(user, k=5)
        assert got.ids == local_recs.ids and got.titles == local_recs.titles
        assert np.allclose(got.scores, local_recs.scores, atol=1e-5)
        assert remote.recommend_many([user], k=5)[0].ids == local_recs.ids
        assert (
            remote.recommend(history=["summer dress"], k=3).ids
            == fresh.recommend(history=["summer dress"], k=3).ids
        )
        assert remote.search("summer dress", k=3).ids == local_search.ids
        assert [t.to_dict() for t in remote.tags(user, top=3)] == [t.to_dict() for t in local_tags]
        assert [t.tag for t in remote.tags(texts=["jeans"])] == [
            t.tag for t in fresh.tags(texts=["jeans"])
        ]
        item = local_recs.ids[0]
        assert remote.similar_items(item, 3).ids == fresh.similar_items(item, 3).ids
        assert remote.describe(user)["stored_id"] == fresh.stored_id(user)
        with pytest.raises(KeyError, match="ghost"):
            remote.recommend("ghost")
        with pytest.raises(NotFoundError):
            remote.similar_items("no-such-item")
        with pytest.raises(ValueError, match="k"):
            remote.recommend(user, k=0)
        assert (
            remote.add_events(
                [{"user_id": "c1", "timestamp": 1.7e9, "kind": "search", "text": "swimsuit"}]
            )
            == 1
        )
        assert remote.feedback("c1", item, liked=True, event_id="x") is True
        assert remote.feedback("c1", item, liked=True, event_id="x") is False
        report = remote.forget("c1")
        assert report.events == 2 and report.profile is True  # her search and her like
        with pytest.raises(KeyError):
            remote.tags("c1")
        with pytest.raises(InvalidRequestError):
            remote.search("")
        with Client(url, api_key="wrong") as intruder, pytest.raises(ServiceError) as denied:
            intruder.search("jeans")
        assert denied.value.status == 401


def test_reads_go_on_while_events_are_written(fresh, tiny_frames):
    """Four readers recommend while a writer posts events: no errors, no half-written
    state (every answer is a full list)."""
    http = TestClient(create_app(fresh), raise_server_exceptions=False)
    user = raw_user(fresh, tiny_frames)
    failures: list = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            answer = http.post("/recommend", json={"user_id": user, "k": 5})
            if answer.status_code != 200 or len(answer.json()["items"]) != 5:
                failures.append(answer.text)

    readers = [threading.Thread(target=read) for _ in range(4)]
    for thread in readers:
        thread.start()
    try:
        for n in range(5):
            event = {"user_id": f"w{n}", "timestamp": 1.7e9 + n, "kind": "search", "text": "jeans"}
            assert http.post("/events", json={"events": [event]}).json()["added"] == 1
    finally:
        stop.set()
        for thread in readers:
            thread.join()
    assert failures == []
    assert http.get("/users/w4/profile").status_code == 200


def test_auto_workers_one_per_core_within_half_the_memory(template, monkeypatch):
    from profiler.service import app as service

    assert service._available_memory() > 0  # read from /proc/meminfo here
    monkeypatch.setattr(service, "usable_cores", lambda: 4)
    monkeypatch.setattr(service, "_available_memory", lambda: 64 * 2**30)
    assert service.auto_workers(template) == 4  # the cores bound it
    monkeypatch.setattr(service, "_available_memory", lambda: 4 * 2**30)
    assert service.auto_workers(template) == 2  # 2 GiB holds two 0.75 GiB processes
    monkeypatch.setattr(service, "_available_memory", lambda: 2**30)
    assert service.auto_workers(template) == 1  # never fewer than one
    monkeypatch.setattr(service, "_available_memory", lambda: None)
    assert service.auto_workers(template) == 4  # memory unknown: the cores
