"""Splits never leak the future, and the harness scores every system per bucket.

The catalogue is the three-group one of ``tests/groups.py``. Timeline: in each of four rounds
every group user ``j`` (five per group) touches item ``g{(j + round) % 4}``: rounds 0-2 are
reviews with a text near the group's axis (``c-user1`` rates round 1 with 2 stars), round 3
is a purchase without text (``b-user2`` instead reviews it with 2 stars). Rounds are a day
apart and users an hour apart within a round. Besides: ``a-user0`` searches after her last
purchase, ``loner`` makes one purchase, ``browser`` only searches.
"""

from __future__ import annotations

import json
from typing import NamedTuple

import numpy as np
import pandas as pd
import pytest
import threadpoolctl

from profiler import metrics
from profiler.baselines import Popularity
from profiler.evaluate import (
    BUCKETS,
    METRICS,
    Case,
    Row,
    Split,
    bucket_of,
    default_systems,
    evaluate,
    leave_last_out,
    markdown_table,
    temporal_split,
    text_split,
    write_report,
)
from profiler.ranking import RankerConfig, TwoStageRecommender
from profiler.recommender import Corpus
from tests.groups import (
    COLUMNS,
    GROUPS,
    ITEM_IDS,
    ITEM_TEXTS,
    ITEM_VECTORS,
    T0,
    WORDS,
    around,
)

DAY, HOUR = 86_400.0, 3_600.0


def timeline() -> tuple[pd.DataFrame, np.ndarray]:
    """The events described in the module docstring and their text vectors."""
    records, texts = [], []

    def add(user, ts, kind, item, text="", rating=np.nan, axis=None):
        row = -1
        if text:
            row = len(texts)
            texts.append(around(axis, 1, seed=1000 + row)[0])
        records.append((user, ts, kind, item, text, rating, row))

    for step in range(4):
        for g, axis in GROUPS.items():
            for j in range(5):
                user, item = f"{g}-user{j}", f"{g}{(j + step) % 4}"
                ts = T0 + step * DAY + (5 * axis + j) * HOUR
                if step < 3:
                    rating = 2.0 if (user, step) == ("c-user1", 1) else 5.0
                    add(user, ts, "review", item, f"nice {WORDS[g]} {step}", rating, axis)
                elif user == "b-user2":
                    add(user, ts, "review", item, f"poor {WORDS[g]}", 2.0, axis)
                else:
                    add(user, ts, "purchase", item)
    add("a-user0", T0 + 3.9 * DAY, "search", "", "more running shoes", axis=0)
    add("loner", T0 + 1.5 * DAY, "purchase", "b1")
    add("browser", T0 + 0.5 * DAY, "search", "", "wool jacket", axis=2)
    events = pd.DataFrame(records, columns=COLUMNS).sort_values("timestamp", kind="stable")
    events = events.reset_index(drop=True).astype({"rating": np.float64, "text_row": np.int64})
    return events, np.stack(texts).astype(np.float32)


@pytest.fixture(scope="module", autouse=True)
def one_blas_thread():
    """Small dense solves (ALS's query step) are orders of magnitude slower with threaded
    BLAS on small machines; the harness's numbers do not depend on it."""
    with threadpoolctl.threadpool_limits(1, "blas"):
        yield


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, np.ndarray]:
    return timeline()


@pytest.fixture(scope="module")
def corpus(data) -> Corpus:
    events, text_vectors = data
    return Corpus(ITEM_IDS, ITEM_VECTORS, ITEM_TEXTS, [""] * len(ITEM_IDS), events, text_vectors)


def user_events(events: pd.DataFrame, user: str) -> pd.DataFrame:
    return events[events["user_id"] == user]


def target_event(events: pd.DataFrame, case: Case) -> pd.Series:
    """The case user's event with the target item (no user touches an item twice)."""
    mine = user_events(events, case.query.user_id)
    (target,) = case.targets
    (row,) = np.flatnonzero(mine["item_id"] == target)
    return mine.iloc[row]


def test_bucket_of():
    assert [bucket_of(n) for n in (0, 1, 2, 3, 4, 5, 7, 100)] == [
        "0", "1", "2-4", "2-4", "2-4", "5+", "5+", "5+",
    ]  # fmt: skip
    assert bucket_of(-1) == "0" and BUCKETS == ("0", "1", "2-4", "5+")


class TestLeaveLastOut:
    def test_history_strictly_precedes_the_target(self, data):
        events, text_vectors = data
        split = leave_last_out(events, text_vectors)
        users = {c.query.user_id for c in split.cases}
        assert users == {f"{g}-user{j}" for g in GROUPS for j in range(5)}
        for case in split.cases:
            target = target_event(events, case)
            assert case.query.n_events == 3 and case.bucket == "2-4"
            assert (case.query.events["timestamp"] < target["timestamp"]).all()
            mine = user_events(events, case.query.user_id)
            assert len(case.query.events) == (mine["timestamp"] < target["timestamp"]).sum()
            trained = user_events(split.train, case.query.user_id)
            assert target["item_id"] not in set(trained["item_id"])
            assert (trained["timestamp"] < target["timestamp"]).all()
            # the target is the last event with an item
            later = user_events(events, case.query.user_id)
            later = later[later["timestamp"] > target["timestamp"]]
            assert (later["item_id"] == "").all()

    def test_train_keeps_users_without_a_case_and_drops_the_future(self, data):
        events, text_vectors = data
        split = leave_last_out(events, text_vectors)
        assert {"loner", "browser"} <= set(split.train["user_id"])
        assert len(user_events(split.train, "loner")) == 1
        # a-user0's search after her target is future for her: not in train
        assert not (user_events(split.train, "a-user0")["kind"] == "search").any()
        assert len(split.train) == len(events) - 15 - 1
        assert split.train["timestamp"].is_monotonic_increasing

    def test_truncated_cases(self, data):
        events, text_vectors = data
        split = leave_last_out(events, text_vectors, truncate=(0, 1))
        by_bucket = {b: [c for c in split.cases if c.bucket == b] for b in BUCKETS}
        assert [len(by_bucket[b]) for b in BUCKETS] == [15, 15, 15, 0]
        full = {c.query.user_id: c for c in by_bucket["2-4"]}
        for case in by_bucket["0"]:
            history = full[case.query.user_id].query.events
            assert case.query.n_events == 0 and len(case.query.texts) == 1
            assert case.query.texts[0] == history["text"].iloc[-1]
            np.testing.assert_array_equal(
                case.query.text_vectors, text_vectors[[history["text_row"].iloc[-1]]]
            )
            assert case.targets == full[case.query.user_id].targets
        for case in by_bucket["1"]:
            history = full[case.query.user_id].query.events
            pd.testing.assert_frame_equal(case.query.events, history.iloc[-1:])
            assert case.targets == full[case.query.user_id].targets

    def test_min_history(self, data):
        events, text_vectors = data
        assert len(leave_last_out(events, text_vectors, min_history=4).cases) == 0
        assert len(leave_last_out(events, text_vectors, min_history=3).cases) == 15

    def test_event_tied_with_the_target_is_not_history(self):
        events = pd.DataFrame(
            [
                ("u", T0, "purchase", "a0", "", np.nan, -1),
                ("u", T0 + HOUR, "purchase", "a1", "", np.nan, -1),
                ("u", T0 + HOUR, "purchase", "a2", "", np.nan, -1),
            ],
            columns=COLUMNS,
        )
        split = leave_last_out(events, np.empty((0, 8), np.float32))
        (case,) = split.cases
        target = events[events["item_id"].isin(case.targets)]["timestamp"].min()
        assert (case.query.events["timestamp"] < target).all()
        assert (split.train["timestamp"] < target).all()


class TestTemporalSplit:
    def test_nothing_after_the_cut_is_seen(self, data):
        events, _ = data
        split = temporal_split(events, quantile=0.75, min_rating=4.0)
        cut = float(np.quantile(events["timestamp"], 0.75))
        assert (split.train["timestamp"] < cut).all()
        assert len(split.train) == (events["timestamp"] < cut).sum()
        assert split.cases
        for case in split.cases:
            assert (case.query.events["timestamp"] < cut).all()
            assert (case.query.events["user_id"] == case.query.user_id).all()
            mine = user_events(events, case.query.user_id)
            after = mine[(mine["timestamp"] >= cut) & (mine["item_id"] != "")]
            liked = after[after["rating"].isna() | (after["rating"] >= 4.0)]
            assert case.targets == frozenset(liked["item_id"])
        # b-user2's only event after the cut is a 2-star review: no target, no case
        assert "b-user2" not in {c.query.user_id for c in split.cases}
        users_after = set(events[events["timestamp"] >= cut]["user_id"]) - {"b-user2"}
        assert {c.query.user_id for c in split.cases} == users_after

    def test_bad_quantile(self, data):
        with pytest.raises(ValueError, match="quantile"):
            temporal_split(data[0], quantile=1.0)


class TestTextSplit:
    def test_held_out_users_are_queried_by_text_alone(self, data):
        events, text_vectors = data
        split = text_split(events, text_vectors, test_fraction=0.3, seed=1)
        train_users = set(split.train["user_id"])
        held_out = set(events["user_id"]) - train_users
        assert len(held_out) == int(events["user_id"].nunique() * 0.3)
        texts = events[events["user_id"].isin(held_out) & (events["item_id"] != "")]
        texts = texts[texts["text_row"] >= 0]
        assert len(split.cases) == len(texts) > 0
        for case, (_, event) in zip(split.cases, texts.iterrows()):
            assert case.query.user_id is None and case.query.n_events == 0
            assert case.query.texts == (event["text"],) and case.bucket == "0"
            np.testing.assert_array_equal(
                case.query.text_vectors[0], text_vectors[event["text_row"]]
            )
            assert case.targets == frozenset([event["item_id"]])

    def test_seeded(self, data):
        events, text_vectors = data
        first = text_split(events, text_vectors, seed=3)
        again = text_split(events, text_vectors, seed=3)
        pd.testing.assert_frame_equal(first.train, again.train)


class Report(NamedTuple):
    split: Split
    rows: list[Row]
    fitted_on: list[pd.DataFrame]  # events of every state the profiler fitted, in order


@pytest.fixture(scope="module")
def report(corpus, data) -> Report:
    """Every system on leave-last-out with text-only and one-event cases, tuned; the
    profiler's fits are recorded to check what its ranker training saw."""
    split = leave_last_out(data[0], data[1], truncate=(0, 1))
    fitted_on = []
    fit_state = TwoStageRecommender.fit_state

    def recording_fit(self, events, template=None):
        fitted_on.append(events)
        return fit_state(self, events, template)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TwoStageRecommender, "fit_state", recording_fit)
        rows = evaluate(corpus, split, default_systems(), tune=True, truncate=(0, 1))
    return Report(split, rows, fitted_on)


class TestEvaluate:
    def test_a_row_per_system_and_bucket(self, report):
        rows = report.rows
        names = [s.name for s in default_systems()]
        assert {(r.system, r.bucket) for r in rows} == {
            (name, bucket) for name in names for bucket in ("0", "1", "2-4", "all")
        }
        assert len(rows) == len(names) * 4
        for row in rows:
            assert row.users == (45 if row.bucket == "all" else 15)
            assert set(row.values) == set(METRICS)
            bounded = {m: v for m, v in row.values.items() if m != "novelty@10"}  # bits
            assert all(0.0 <= v <= 1.0 for v in bounded.values()), row
            assert row.values["novelty@10"] > 0

    def test_all_is_the_mean_of_the_buckets(self, report):
        rows = report.rows
        value = {(r.system, r.bucket): r.values for r in rows}
        for name in {r.system for r in rows}:
            buckets = [value[name, b]["ndcg@10"] for b in ("0", "1", "2-4")]
            assert value[name, "all"]["ndcg@10"] == pytest.approx(np.mean(buckets))

    def test_profiler_beats_popularity_on_text_only(self, report):
        rows = report.rows
        ndcg = {(r.system, r.bucket): r.values["ndcg@10"] for r in rows}
        assert ndcg["profiler", "0"] > ndcg["popularity", "0"]
        assert ndcg["profiler", "0"] > 0.5

    def test_metrics_match_a_hand_run(self, corpus, data):
        # untuned popularity: the harness's numbers are the metrics of its lists
        split = leave_last_out(data[0], data[1])
        (row,) = [
            r for r in evaluate(corpus, split, [Popularity()], tune=False) if r.bucket == "all"
        ]
        model = Popularity().fit(corpus.with_events(split.train))
        ranked = [model.recommend(c.query, k=50) for c in split.cases]
        want = np.mean([metrics.ndcg_at_k(r, c.targets, 10) for r, c in zip(ranked, split.cases)])
        assert row.values["ndcg@10"] == pytest.approx(want)
        assert row.values["mrr"] == pytest.approx(
            np.mean([metrics.mrr(r, c.targets) for r, c in zip(ranked, split.cases)])
        )

    def test_markdown_marks_the_best_ndcg(self, report):
        rows = report.rows
        table = markdown_table(rows, "Leave last out")
        assert table.startswith("### Leave last out")
        lines = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
        assert len(lines) == len(rows) + 1  # header
        column = 3 + METRICS.index("ndcg@10")
        best = {}
        for row in rows:
            best[row.bucket] = max(best.get(row.bucket, -1.0), row.values["ndcg@10"])
        value = {(r.bucket, r.system): r.values["ndcg@10"] for r in rows}
        for line in lines[1:]:
            cells = [c.strip() for c in line.strip("|").split("|")]
            bucket, system, cell = cells[0], cells[1], cells[column]
            assert cell.startswith("**") == (value[bucket, system] == best[bucket]), line
            assert float(cell.strip("*")) == pytest.approx(value[bucket, system], abs=5e-5)
        assert sum("**" in line for line in lines) >= 4

    def test_write_report(self, report, tmp_path):
        rows = report.rows
        paths = write_report(rows, tmp_path / "out", "llo", "Leave last out")
        assert set(paths) == {"jsonl", "md", "png"}
        written = [json.loads(line) for line in paths["jsonl"].read_text().splitlines()]
        assert written == [r.to_dict() for r in rows]
        assert paths["md"].read_text() == markdown_table(rows, "Leave last out")
        assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def test_tuning_never_sees_test_targets(self, report):
        split, fitted_on = report.split, report.fitted_on
        test_targets = {(c.query.user_id, t) for c in split.cases for t in c.targets}
        # a state per round of last-item queries, one before the global cut, then serving
        assert 2 <= len(fitted_on) <= 2 + RankerConfig().rounds
        for events in fitted_on:
            assert not set(zip(events["user_id"], events["item_id"])) & test_targets
        # serving's state (fitted first, its user index lends the training states its
        # structure) has every training event; each training state holds some out
        assert len(fitted_on[0]) == len(split.train)
        assert all(len(events) < len(split.train) for events in fitted_on[1:])
