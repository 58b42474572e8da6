"""A Chinese catalogue end to end with multilingual-e5-small: build, every candidate
channel on Chinese text, the ranker's training path, and the service answering in Chinese.

The workspace is conftest's ``zh_workspace``: a hand-written catalogue and shoppers
(``tests/data/zh_*.csv``), since no real Chinese catalogue with shopper histories installs
offline. These tests check behaviour, not quality.
"""

from __future__ import annotations

import json

import pandas as pd
from fastapi.testclient import TestClient

from profiler.ranking import load_scorer
from profiler.service.app import create_app
from profiler.text import has_cjk


def category(items: pd.DataFrame, ids) -> list[str]:
    by_id = dict(zip(items["item_id"], items["category"]))
    return [by_id[i] for i in ids]


def test_chinese_build_searches_and_recommends_by_meaning_and_by_words(zh_workspace, zh_frames):
    ws, (items, _) = zh_workspace, zh_frames
    assert not list((ws.path / "quarantine").glob("*.csv"))
    assert ws.search("下雨天爬山穿的外套", k=3).ids[0] in {"zh-06", "zh-09"}
    assert set(category(items, ws.search("泡茶用的杯子", k=3).ids)) <= {"家居 > 咖啡茶具"}

    # a new shopper who writes in Chinese: 降噪 is one word inside the item's title, found
    # by BM25 over jieba words (whitespace tokens would make each title a single word)
    cold = ws.recommend(history=["想买一副降噪耳机，坐地铁用"], k=5)
    assert cold.ids[0] == "zh-13"
    assert "lexical" in cold.reasons[0]["channels"]
    assert set(category(items, cold.ids[:3])) == {"数码 > 耳机"}


def test_known_chinese_shoppers_get_their_categories_through_every_channel(zh_workspace, zh_frames):
    ws, (items, events) = zh_workspace, zh_frames
    seen = set(events.loc[events["user_id"] == "u06", "item_id"].dropna())
    hiker = ws.recommend("u06", k=5)
    assert not seen & set(hiker.ids)
    assert all(c.startswith("户外") for c in category(items, hiker.ids[:3]))
    channels = {c for reason in hiker.reasons for c in reason["channels"]}
    assert {"dense", "category", "neighbours"} <= channels
    # a closest event is named for every item, in Chinese
    closest = hiker.reasons[0]["closest"]
    assert closest and has_cjk(json.dumps(closest, ensure_ascii=False))

    # the ranker is trained by the same path as for English; 20 shoppers are too few
    # queries, so the report says why it keeps the default weights
    scorer, report = load_scorer(ws.data / "models")
    assert scorer.kind == "blend" and report["queries"] > 0 and report["scorer"] == "blend"
    assert "training queries" in report["why"]


def test_the_service_answers_in_chinese(zh_workspace):
    http = TestClient(create_app(zh_workspace), raise_server_exceptions=False)
    answer = http.post("/recommend", json={"history": ["送给爸爸的功夫茶具"], "k": 3})
    assert answer.status_code == 200
    body = answer.json()
    assert body["items"][0]["title"] in {"功夫茶具套装", "玻璃花茶壶", "保温焖茶杯"}
    assert "功夫茶具套装".encode() in answer.content  # UTF-8, not \\u escapes
    profile = http.get("/users/u01/profile").json()
    assert profile["recent_events"] and profile["centres"][0]["items"]
    titles = {i["title"] for c in profile["centres"] for i in c["items"]}
    assert titles & {"女士碎花雪纺连衣裙", "法式方领泡泡袖连衣裙", "真丝吊带长裙"}
    similar = http.get("/items/zh-13/similar", params={"k": 3}).json()
    assert "蓝牙降噪耳机" not in [i["title"] for i in similar["items"]]
