"""Validation of real-looking and broken inputs: bad rows are quarantined, good rows go on."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from profiler.data import load_catalog, load_events, parse_timestamp

CATALOG_CSV = """item_id,title,category,price
1,Ripped skinny jeans,Bottoms > Jeans,79.5
2,Floral maxi dress,Dresses > Dresses,
,Missing id,Tops > Knits,10
3,,Tops > Knits,10
1,Duplicate of the first,Bottoms > Jeans,20
4,Wool coat,Jackets > Outerwear,-5
5,Striped swimsuit,Intimate > Swim,forty
6,Linen shorts,Bottoms > Shorts,35
"""

EVENTS_CSV = """user_id,timestamp,kind,item_id,text,rating
u1,1700000000,review,1,Love these jeans,5
u1,2023-05-01T10:00:00Z,search,,summer dress,
u2,yesterday,view,2,,
,1700000100,view,2,,
u3,1700000200,teleport,2,,
u4,1700000300,review,2,Nice,7
u5,1700000400,search,,,
u6,1700000500,purchase,999,,
u7,1700000600,click,,,
u8,1700000700000,view,1,,
u9,1700000800,dislike,6,,1
u9,2023-05-02 08:30:00,like,1,,
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def quarantined(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_catalog_rejects_bad_rows_and_keeps_good(tmp_path):
    source = write(tmp_path, "items.csv", CATALOG_CSV)
    loaded = load_catalog(source, quarantine=tmp_path / "q" / "catalog.jsonl")
    assert list(loaded.frame["item_id"]) == ["1", "2", "6"]
    assert loaded.frame["price"].iloc[0] == 79.5 and np.isnan(loaded.frame["price"].iloc[1])
    rows = quarantined(tmp_path / "q" / "catalog.jsonl")
    assert [(r["row"], r["field"]) for r in rows] == [
        (3, "item_id"),
        (4, "title"),
        (5, "item_id"),
        (6, "price"),
        (7, "price"),
    ]
    assert "first at row 1" in rows[2]["reason"]
    assert rows[4]["record"]["title"] == "Striped swimsuit" and rows[4]["file"] == str(source)
    assert loaded.report.n_rows == 8 and loaded.report.n_rejected == 5
    assert "5 rejected" in loaded.report.summary()


def test_events_reject_each_kind_of_error(tmp_path):
    source = write(tmp_path, "events.csv", EVENTS_CSV)
    loaded = load_events(source, items=["1", "2", "6"], quarantine=tmp_path / "events.jsonl")
    frame = loaded.frame
    assert list(frame["user_id"]) == ["u1", "u1", "u9", "u9"]
    assert frame["timestamp"].iloc[1] == pd.Timestamp("2023-05-01T10:00:00Z").timestamp()
    assert frame["timestamp"].iloc[3] == pd.Timestamp("2023-05-02T08:30:00Z").timestamp()
    assert frame["rating"].iloc[2] == 1.0 and np.isnan(frame["rating"].iloc[1])
    assert frame["item_id"].iloc[1] == "" and frame["kind"].iloc[2] == "dislike"
    reasons = {r["row"]: (r["field"], r["reason"]) for r in quarantined(tmp_path / "events.jsonl")}
    assert reasons[3][0] == "timestamp" and "yesterday" in reasons[3][1]
    assert reasons[4] == ("user_id", "missing value")
    assert reasons[5][0] == "kind" and "teleport" in reasons[5][1]
    assert reasons[6][0] == "rating" and "outside [1, 5]" in reasons[6][1]
    assert reasons[7] == ("text", "missing value")  # a search needs its query
    assert reasons[8][0] == "item_id" and "not in the catalogue" in reasons[8][1]
    assert reasons[9] == ("item_id", "missing value")  # a click needs an item
    assert reasons[10][0] == "timestamp" and "milliseconds" in reasons[10][1]
    assert len(reasons) == 8


def test_clean_input_leaves_no_stale_quarantine(tmp_path):
    q = tmp_path / "events.jsonl"
    q.write_text("old\n")
    events = pd.DataFrame(
        {"user_id": ["a"], "timestamp": [1.0], "kind": ["search"], "text": ["boots"]}
    )
    loaded = load_events(events, quarantine=q)
    assert len(loaded.frame) == 1 and not q.exists()


def test_jsonl_with_mixed_types_and_column_mapping(tmp_path):
    lines = [
        {"customer": 17, "ts": 1700000000, "kind": "search", "query": "red boots"},
        {"customer": "u2", "ts": "bad", "kind": "search", "query": "tent"},
        {"customer": "u3", "ts": 1700000001.5, "kind": "review", "item_id": 5, "query": "ok",
         "rating": "4"},
    ]  # fmt: skip
    source = tmp_path / "events.jsonl"
    source.write_text("\n".join(json.dumps(line) for line in lines), encoding="utf-8")
    loaded = load_events(
        source, items=["5"], columns={"customer": "user_id", "ts": "timestamp", "query": "text"}
    )
    assert list(loaded.frame["user_id"]) == ["17", "u3"]
    assert loaded.frame["item_id"].iloc[1] == "5" and loaded.frame["rating"].iloc[1] == 4.0
    assert loaded.report.rejections[0].row == 2
    assert str(loaded.report.rejections[0]).startswith(f"{source} row 2 field 'timestamp'")


def test_non_utf8_bytes_quarantine_only_that_row(tmp_path):
    source = tmp_path / "events.csv"
    source.write_bytes(
        b"user_id,timestamp,kind,text\nu1,1,search,caf\xe9 latte\nu2,2,search,green tea\n"
    )
    loaded = load_events(source, quarantine=tmp_path / "q.jsonl")
    assert list(loaded.frame["user_id"]) == ["u2"]
    (rejection,) = loaded.report.rejections
    assert (rejection.row, rejection.field) == (1, "text") and "UTF-8" in rejection.reason


def test_huge_text_is_kept(tmp_path):
    text = "wool " * 50_000
    frame = pd.DataFrame({"user_id": ["a"], "timestamp": [1], "kind": ["search"], "text": [text]})
    assert load_events(frame).frame["text"].iloc[0] == text.strip()


def test_unreadable_files_fail_naming_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.csv"):
        load_catalog(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match=r"items\.xlsx.*unsupported"):
        load_catalog(write(tmp_path, "items.xlsx", "x"))
    with pytest.raises(ValueError, match=r"items\.parquet"):
        load_catalog(write(tmp_path, "items.parquet", "this is not parquet"))
    with pytest.raises(ValueError, match=r"missing required column.*'title'"):
        load_catalog(write(tmp_path, "items.csv", "item_id,name\n1,x\n"))
    with pytest.raises(ValueError, match=r"missing required column.*'timestamp'"):
        load_events(write(tmp_path, "events.csv", "user_id,kind\nu,view\n"))


def test_parquet_round_trip_of_bundled_slice(tmp_path, tiny_frames):
    items, _events = tiny_frames
    items.to_parquet(tmp_path / "items.parquet")
    loaded = load_catalog(tmp_path / "items.parquet")
    assert len(loaded.frame) == len(items) and loaded.report.n_rejected == 0
    assert "division" in loaded.frame.columns  # extra columns are kept


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1700000000, 1700000000.0),
        ("1700000000.5", 1700000000.5),
        ("1970-01-02T00:00:00", 86400.0),
        ("1970-01-01T01:00:00+01:00", 0.0),
        ("1970-01-01T00:00:10Z", 10.0),
    ],
)
def test_parse_timestamp(value, expected):
    assert parse_timestamp(value) == expected


@pytest.mark.parametrize("value", [None, "", "soon", float("nan"), "1e20", True])
def test_parse_timestamp_rejects(value):
    with pytest.raises(ValueError):
        parse_timestamp(value)


# -- input rules: ids, files as spreadsheet tools write them, time, duplicates -------------


def test_jsonl_ids_are_never_retyped_and_a_broken_line_costs_only_itself(tmp_path):
    lines = [
        json.dumps({"user_id": 7, "timestamp": 1, "kind": "view", "item_id": "7"}),
        json.dumps({"user_id": "007", "timestamp": 2, "kind": "view", "item_id": "007"}),
        "",  # a blank line is skipped but still counted
        json.dumps({"user_id": "u3", "timestamp": 3, "kind": "view", "item_id": "7"}),
        '{"user_id": "u4", "timestamp": 4, "ki',  # truncated last line, no newline
    ]
    source = write(tmp_path, "events.jsonl", "\n".join(lines))
    loaded = load_events(source, items=["7", "007"], quarantine=tmp_path / "q.jsonl")
    assert loaded.frame["user_id"].tolist() == ["7", "007", "u3"]
    assert loaded.frame["item_id"].tolist() == ["7", "007", "7"]
    (rejection,) = loaded.report.rejections
    assert (rejection.row, rejection.field) == (5, "row") and "truncated" in rejection.reason


def test_empty_files_and_missing_columns_name_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"events\.jsonl: empty file"):
        load_events(write(tmp_path, "events.jsonl", ""))
    with pytest.raises(ValueError, match=r"events\.csv: empty file"):
        load_events(write(tmp_path, "events.csv", ""))
    no_time = "\n".join(json.dumps({"user_id": "u", "kind": "view", "item_id": "i"}) for _ in "ab")
    with pytest.raises(ValueError, match=r"events\.jsonl: missing required column.*'timestamp'"):
        load_events(write(tmp_path, "events.jsonl", no_time))


def test_excel_csv_utf8_bom_and_padded_header(tmp_path):
    source = tmp_path / "items.csv"
    source.write_bytes("\ufeff item_id , title \ni1,Wool coat\ni2,Linen shirt\n".encode())
    loaded = load_catalog(source)
    assert loaded.frame["item_id"].tolist() == ["i1", "i2"]
    assert loaded.frame["title"].tolist() == ["Wool coat", "Linen shirt"]


def test_id_rules_control_characters_length_and_unicode_forms(tmp_path, caplog):
    events = pd.DataFrame(
        {
            "user_id": ["ok\x00", "x" * 1_000_000, "Jose\u0301", "Jos\u00e9", "tab\there"],
            "timestamp": [1.0, 2.0, 3.0, 4.0, 5.0],
            "kind": "search",
            "text": ["a", "b", "c", "d", "e"],
        }
    )
    with caplog.at_level(logging.WARNING, logger="profiler.data.validation"):
        loaded = load_events(events)
    assert "1 user ids were not in Unicode NFC form" in caplog.text  # said, not silent
    reasons = {r.row: (r.field, r.reason) for r in loaded.report.rejections}
    assert reasons[1][0] == "user_id" and "U+0000" in reasons[1][1]
    assert reasons[2][0] == "user_id" and "longer than" in reasons[2][1]
    assert reasons[5][0] == "user_id" and "U+0009" in reasons[5][1]
    # NFD "Jose" + combining accent and NFC "José" are one shopper
    assert loaded.frame["user_id"].tolist() == ["Jos\u00e9", "Jos\u00e9"]


def test_future_events_are_rejected_and_exact_duplicates_dropped():
    events = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u1", "u2"],
            "timestamp": [1.7e9, 1.7e9, 1.7e9 + 1, "2100-01-01T00:00:00Z"],
            "kind": "search",
            "text": ["boots", "boots", "boots", "later"],
        }
    )
    loaded = load_events(events)
    assert loaded.frame["timestamp"].tolist() == [1.7e9, 1.7e9 + 1]
    (rejection,) = loaded.report.rejections
    assert rejection.field == "timestamp" and "future" in rejection.reason
    assert loaded.report.n_duplicates == 1 and loaded.report.n_accepted == 2
    assert "1 exact duplicates dropped" in loaded.report.summary()


def test_terminal_escapes_are_stripped_from_text():
    items = pd.DataFrame(
        {"item_id": ["i1"], "title": ["\x1b[31mRed\x1b[0m coat\x07"], "description": ["a\nb"]}
    )
    row = load_catalog(items).frame.iloc[0]
    assert row["title"] == "Red coat" and row["description"] == "a\nb"
