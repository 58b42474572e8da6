"""Fuzzing the loaders (hypothesis): broken catalogues and event files in CSV, JSON Lines and
Parquet. Every good row is kept exactly (ids never retyped), every bad row is quarantined
with its row number, field and a reason, and nothing crashes."""

from __future__ import annotations

import csv
import json
import string

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from profiler.data import load_catalog, load_events

FORMATS = ("csv", "jsonl", "parquet")
CASES_PER_FORMAT = 100
#: Examples run, for the closing note: formats x loaders x examples.
CASES_RUN = len(FORMATS) * 2 * CASES_PER_FORMAT

_ID_CHARS = string.ascii_letters + string.digits + "-_.:/ éøß漢字"
ids = st.text(_ID_CHARS, min_size=1, max_size=16).map(str.strip).filter(bool)
titles = (
    st.text(
        st.characters(
            blacklist_categories=("Cc", "Cs", "Cf", "Zl", "Zp"), blacklist_characters="\ufffd"
        ),
        min_size=1,
        max_size=40,
    )
    .map(str.strip)
    .filter(bool)
)

#: Ways to break a catalogue row: field -> (how, reason fragment).
CATALOG_FAULTS = {
    "missing id": ("item_id", ""),
    "NUL in id": ("item_id", "bad\x00id"),
    "bell in id": ("item_id", "bell\x07"),
    "long id": ("item_id", "x" * 300),
    "no title": ("title", ""),
    "text price": ("price", "cheap"),
    "negative price": ("price", "-3"),
    "duplicate id": ("item_id", None),  # None: the first good row's id
}
EVENT_FAULTS = {
    "missing user": ("user_id", ""),
    "NUL in user": ("user_id", "u\x00"),
    "bad time": ("timestamp", "yesterday-ish"),
    "future": ("timestamp", "2100-01-01T00:00:00Z"),
    "odd kind": ("kind", "teleport"),
    "unknown item": ("item_id", "no-such-item"),
    "rating 9": ("rating", "9"),
    "review without text": ("text", ""),
}


@st.composite
def catalogues(draw):
    good_ids = draw(st.lists(ids, min_size=1, max_size=8, unique=True))
    good_ids = [i for i in good_ids if i not in ("007", "7")] + ["007", "7"]  # retyping bait
    rows, expected, bad = [], [], []
    for item_id in good_ids:
        row = {"item_id": item_id, "title": draw(titles), "price": str(draw(st.integers(0, 500)))}
        rows.append(row)
        expected.append((item_id, row["title"]))
    faults = draw(st.lists(st.sampled_from(sorted(CATALOG_FAULTS)), max_size=6))
    for fault in faults:
        field, value = CATALOG_FAULTS[fault]
        if value is None:
            continue  # duplicates go in after the shuffle, behind their original
        row = {"item_id": f"bad-{len(rows)}", "title": "A broken row", "price": "10"}
        row[field] = value
        rows.append(row)
        bad.append(row)
    order = draw(st.permutations(range(len(rows))))
    rows = [rows[i] for i in order]
    for _ in range(faults.count("duplicate id")):
        first = next(n for n, r in enumerate(rows) if r["item_id"] == good_ids[0])
        at = draw(st.integers(first + 1, len(rows)))
        duplicate = {"item_id": good_ids[0], "title": "A broken row", "price": "10"}
        rows.insert(at, duplicate)
        bad.append(duplicate)
    return rows, expected, bad


def _write(path, rows, fmt):
    columns = sorted({k for r in rows for k in r})
    if fmt == "csv":
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns, quoting=csv.QUOTE_ALL)
            writer.writeheader()
            writer.writerows(rows)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    else:
        table = pa.table({c: pa.array([r.get(c, "") for r in rows], pa.string()) for c in columns})
        pq.write_table(table, path)
    return path


def _quarantined(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("fmt", FORMATS)
@settings(
    max_examples=CASES_PER_FORMAT,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=catalogues())
def test_fuzzed_catalogues(tmp_path, fmt, case):
    rows, expected, bad = case
    n_bad = len(bad)
    source = _write(tmp_path / f"items.{fmt}", rows, fmt)
    quarantine = tmp_path / "q.jsonl"
    quarantine.unlink(missing_ok=True)
    loaded = load_catalog(source, quarantine=quarantine)
    kept = list(zip(loaded.frame["item_id"], loaded.frame["title"]))
    assert sorted(kept) == sorted(expected)  # exact strings: "007" stays "007"
    assert loaded.report.n_rejected == n_bad
    if n_bad:
        records = _quarantined(quarantine)
        assert len(records) == n_bad
        for record in records:
            assert record["file"] == str(source) and record["reason"] and record["field"]
            assert rows[record["row"] - 1] in bad  # the right row
    else:
        assert not quarantine.exists()


@st.composite
def event_files(draw):
    items = ["i-1", "007", "7"]
    rows, expected, n_bad = [], [], 0
    for n in range(draw(st.integers(1, 8))):
        user = draw(ids)
        kind = draw(st.sampled_from(["review", "view", "like", "search"]))
        row = {
            "user_id": user,
            "timestamp": str(1_600_000_000 + n * 60),
            "kind": kind,
            "item_id": "" if kind == "search" else draw(st.sampled_from(items)),
            "text": draw(titles) if kind in ("review", "search") else "",
            "rating": str(draw(st.integers(1, 5))) if kind == "review" else "",
        }
        rows.append(row)
        expected.append((user, row["item_id"], row["timestamp"]))
    for fault in draw(st.lists(st.sampled_from(sorted(EVENT_FAULTS)), max_size=6)):
        field, value = EVENT_FAULTS[fault]
        row = {
            "user_id": "bad-user",
            "timestamp": "1600000000",
            "kind": "review",
            "item_id": "i-1",
            "text": f"broken row {n_bad}",
            "rating": "3",
        }
        row[field] = value
        rows.append(row)
        n_bad += 1
    order = draw(st.permutations(range(len(rows))))
    return [rows[i] for i in order], expected, n_bad, items


@pytest.mark.parametrize("fmt", FORMATS)
@settings(
    max_examples=CASES_PER_FORMAT,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=event_files())
def test_fuzzed_events(tmp_path, fmt, case):
    rows, expected, n_bad, items = case
    source = _write(tmp_path / f"events.{fmt}", rows, fmt)
    quarantine = tmp_path / "q.jsonl"
    quarantine.unlink(missing_ok=True)
    loaded = load_events(source, items=items, quarantine=quarantine)
    frame = loaded.frame
    times = frame["timestamp"].map(lambda t: str(int(t)))
    kept = list(zip(frame["user_id"], frame["item_id"], times))
    assert sorted(kept) == sorted(expected)  # every good row, ids exactly as written
    assert loaded.report.n_duplicates == 0
    assert loaded.report.n_rejected == n_bad
    if n_bad:
        records = _quarantined(quarantine)
        assert len(records) == n_bad
        for record in records:
            assert rows[record["row"] - 1]["user_id"] in ("bad-user", "", "u\x00")
            assert record["reason"] and record["field"] in {f for f, _ in EVENT_FAULTS.values()}
