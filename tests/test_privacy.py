"""Privacy: pseudonyms, PII scrubbing, forgetting a shopper everywhere, DP aggregates."""

from __future__ import annotations

import json
import stat

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from profiler import cli
from profiler.privacy import (
    BudgetSpentError,
    Pseudonymizer,
    Scrubber,
    dp_aggregates,
    luhn_ok,
)
from profiler.workspace import Workspace
from tests.conftest import copy_workspace

# -- scrubbing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to jo.smith+shop@example.co.uk please", "write to [email] please"),
        ("call +1 (415) 555-0132 after 5", "call [phone] after 5"),
        ("ring 020 7946 0958", "ring [phone]"),
        ("my number is 4155550132", "my number is [phone]"),
        ("paid with 4111 1111 1111 1111 twice", "paid with [card] twice"),
        ("card 5500-0000-0000-0004", "card [card]"),
        ("ship to 221B Baker Street, London", "ship to [address], London"),
        ("at 1600 Pennsylvania Avenue apt 4", "at [address]"),
    ],
)
def test_scrubber_removes_personal_data(text, expected):
    assert Scrubber()(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "size 38-40, $19.99, bought 3 in 2021",
        "order 1234567812345678 arrived",  # 16 digits that fail Luhn: not a card
        "worn 2019 2020 2021 seasons",
        "fits 5 ft 4 in, 120 lbs, 34B",
        "model no. 12345",
    ],
)
def test_scrubber_keeps_ordinary_numbers(text):
    assert Scrubber()(text) == text


def test_scrubber_kinds_are_configurable():
    text = "jo@example.com, 4111111111111111"
    assert Scrubber.parse("email")(text) == "[email], 4111111111111111"
    assert Scrubber.parse("none")(text) == text
    assert Scrubber.parse(None).scrub(text)[1] == {"email": 1, "card": 1}
    with pytest.raises(ValueError, match="unknown scrub kinds"):
        Scrubber.parse("email,ssn")
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")


# -- pseudonyms -----------------------------------------------------------------------


def test_pseudonym_key_is_private_stable_and_per_workspace(tmp_path):
    a = Pseudonymizer.for_workspace(tmp_path / "a")
    assert stat.S_IMODE((tmp_path / "a" / "privacy.key").stat().st_mode) == 0o600
    again = Pseudonymizer.for_workspace(tmp_path / "a")
    other = Pseudonymizer.for_workspace(tmp_path / "b")
    assert a("shopper-1") == again("shopper-1") != other("shopper-1")
    assert len(a("shopper-1")) == 32 and "shopper" not in a("shopper-1")
    with pytest.raises(FileNotFoundError, match="pseudonym key is missing"):
        Pseudonymizer.for_workspace(tmp_path / "c", create=False)


def _files(root):
    return [p for p in root.rglob("*") if p.is_file()]


def _strings_in(path) -> str:
    """A file's bytes as text, and for Parquet also its decoded cells (compressed pages
    could hide a string from a byte scan)."""
    raw = path.read_bytes()
    text = raw.decode("utf-8", errors="ignore")
    if path.suffix == ".parquet":
        text += json.dumps(pq.read_table(path).to_pylist(), default=str)
    elif path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            text += " ".join(str(data[k].tolist()) for k in data.files)
    return text


@pytest.fixture(scope="module")
def private_template(tmp_path_factory, tiny_frames, embedder):
    """The tiny real slice plus one shopper whose review holds an e-mail and a phone, and a
    broken row of hers that goes to the quarantine, built once for this module."""
    items, events = tiny_frames
    secret = pd.DataFrame(
        [
            {
                "user_id": "alice.smith",
                "timestamp": float(events["timestamp"].max()) + 60,
                "kind": "review",
                "item_id": items["item_id"].iloc[0],
                "text": "Lovely jeans! Questions to alice@example.org or 415 555 0132.",
                "rating": 5,
            },
            {
                "user_id": "alice.smith",
                "timestamp": float(events["timestamp"].max()) + 120,
                "kind": "review",
                "item_id": items["item_id"].iloc[1],
                "text": "Second pair, size runs small for my hips.",
                "rating": 4,
            },
            {
                "user_id": "alice.smith",
                "timestamp": "not a time",
                "kind": "review",
                "item_id": items["item_id"].iloc[1],
                "text": "card 4111 1111 1111 1111 on file",
                "rating": 4,
            },
        ]
    )
    all_events = pd.concat([events.astype({"timestamp": object}), secret], ignore_index=True)
    path = tmp_path_factory.mktemp("private") / "ws"
    Workspace.build(path, catalog=items, events=all_events, embedder=embedder).close()
    return path


@pytest.fixture
def private_ws(tmp_path, private_template, embedder):
    """A copy of :func:`private_template` for one test to change."""
    return copy_workspace(private_template, tmp_path, embedder)


def test_build_writes_no_raw_id_no_pii_and_owner_only_files(private_ws):
    ws = private_ws
    assert "alice.smith" not in ws.users and ws.stored_id("alice.smith") in ws.users
    for path in _files(ws.path):
        text = _strings_in(path)
        assert "alice.smith" not in text, path
        assert "alice@example.org" not in text and "555 0132" not in text, path
        assert "4111 1111" not in text, path
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for path in [ws.path, *(p for p in ws.path.rglob("*") if p.is_dir())]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    mine = ws.user_events("alice.smith")  # raw ids work in the API
    assert "[email]" in mine["text"].iloc[0] and "[phone]" in mine["text"].iloc[0]
    quarantined = (ws.path / "quarantine" / "events.jsonl").read_text()
    record = json.loads(quarantined.splitlines()[0])["record"]
    assert record["user_id"] == ws.stored_id("alice.smith") and "[card]" in record["text"]
    assert ws.manifest["privacy"] == {
        "pseudonymous": True,
        "scrub": ["email", "card", "phone", "address"],
        "dp": {},
    }


def test_forget_leaves_nothing_derived_from_her(private_ws, embedder):
    ws = private_ws
    pseudonym = ws.stored_id("alice.smith")
    mine = ws.user_events("alice.smith")
    her_texts = list(mine["text"])
    her_vectors = ws.event_vectors[mine["text_row"].to_numpy()]
    her_profile = ws.profile("alice.smith").vector.astype(np.float32)
    others = [u for u in ws.users if u != pseudonym]
    report = ws.forget("alice.smith")
    assert report.events == 2 and report.texts == 2 and report.user_index
    assert report.quarantine_rows == 1 and report.cache_entries == 2
    assert report.ranker == "retrained" and report.old_generations_held == ()
    with pytest.raises(KeyError, match=r"alice\.smith"):
        ws.recommend("alice.smith")
    assert ws.users == others and len(ws.event_vectors) == ws.events["text_row"].max() + 1
    needles = [pseudonym, "alice.smith", *(t[:24] for t in her_texts)]
    blobs = [v.tobytes() for v in her_vectors] + [her_profile.tobytes()]
    for path in _files(ws.path):
        text, raw = _strings_in(path), path.read_bytes()
        for needle in needles:
            assert needle not in text, (path, needle)
        for blob in blobs:
            assert blob not in raw, path
    reopened = Workspace.open(ws.path, embedder=embedder)
    assert reopened.users == others and reopened.recommend(others[0], k=3).ids
    with pytest.raises(KeyError, match=r"alice\.smith"):
        reopened.forget("alice.smith")


def test_forget_removes_models_she_trained_and_keeps_file_trained_ones(private_ws):
    ws = private_ws
    # a tag model trained on this workspace's own reviews, registered as such
    with ws._writing() as staged:
        (staged / "models" / "tags").mkdir(parents=True)
        (staged / "models" / "tags" / "tagger.json").write_text("{}")
        ws._register(staged, "models/tags", None)
    report = ws.forget("alice.smith", retrain=False)
    assert report.models_removed == ("models/tags",) and report.ranker == "kept"
    assert not (ws.data / "models" / "tags").exists()
    assert "models/tags" not in ws.manifest["artifacts"]


def test_forget_cli(private_ws, capsys):
    path = str(private_ws.path)
    private_ws.close()
    assert cli.main(["forget", "--workspace", path, "--user", "alice.smith", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["user"] == "alice.smith" and report["events"] == 2
    assert cli.main(["forget", "--workspace", path, "--user", "alice.smith"]) == 1
    assert "unknown user 'alice.smith'" in capsys.readouterr().err
    assert cli.main(["verify", "--workspace", path]) == 0
    assert "OK" in capsys.readouterr().out


# -- differentially private aggregates ----------------------------------------------


def test_dp_counts_are_noisy_around_the_truth_and_cover_the_domain():
    users = [f"u{i}" for i in range(400)]
    table = pd.DataFrame(
        {
            "user": users + users[:100],
            "statistic": "tags",
            "segment": "all",
            "key": ["jeans"] * 400 + ["swim"] * 100,
        }
    )
    domain = {"tags": [("all", "jeans"), ("all", "swim"), ("all", "sleep")]}
    runs = [dp_aggregates(table, domain, epsilon=1.0, per_user=2) for _ in range(30)]
    counts = np.array([r["count"].to_numpy() for r in runs])
    assert counts.shape == (30, 3)  # every cell of the domain, the empty one too
    mean = counts.mean(axis=0)
    assert abs(mean[0] - 400) < 4 and abs(mean[1] - 100) < 4 and mean[2] < 4
    assert counts[:, 0].std() > 0.2  # noise was added
    # per_user=1 keeps one key per shopper: the 100 with two keys count once
    cut = dp_aggregates(table, domain, epsilon=1e6, per_user=1)
    assert cut["count"].tolist() == [400, 0, 0]


def test_export_aggregates_spends_a_recorded_budget(private_ws, tiny_frames, embedder, capsys):
    ws = private_ws
    table = ws.export_aggregates(0.4, budget=1.0)
    assert set(table["statistic"]) == {"category_interest", "tag_popularity"}
    assert (table["count"] >= 0).all() and (table["epsilon"] == 0.2).all()
    assert ws.manifest["privacy"]["dp"]["spent"] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="cannot be changed"):
        ws.export_aggregates(0.1, budget=5.0)
    path = str(ws.path)
    ws.close()
    assert cli.main(["export-aggregates", "--workspace", path, "--epsilon", "0.5", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows and {"statistic", "segment", "key", "count", "epsilon"} <= set(rows[0])
    items, events = tiny_frames
    rebuilt = Workspace.build(path, catalog=items, events=events, embedder=embedder)
    assert rebuilt.manifest["privacy"]["dp"]["spent"] == pytest.approx(0.9)  # kept
    with pytest.raises(BudgetSpentError, match="exceed the privacy budget"):
        rebuilt.export_aggregates(0.2)
    assert cli.main(["export-aggregates", "--workspace", path, "--epsilon", "0.2"]) == 2
    assert "privacy budget" in capsys.readouterr().err


def test_quarantine_never_stores_a_raw_id_from_an_unreadable_line(tmp_path):
    """A broken JSONL line cannot be parsed, so its user id cannot be mapped: its text is
    withheld; a CSV row's extra cells are scrubbed like every other string."""
    from profiler.data import load_events
    from profiler.privacy import WITHHELD, PrivacyPolicy

    policy = PrivacyPolicy(Pseudonymizer(b"k" * 32), Scrubber())
    good = '{"user_id": "bob", "timestamp": 1700000000, "kind": "search", "text": "boots"}\n'
    source = tmp_path / "events.jsonl"
    source.write_text(good + '{"user_id": "alice.smith", "timestamp": 17')  # cut short
    quarantine = tmp_path / "q.jsonl"
    loaded = load_events(source, quarantine=quarantine, privacy=policy)
    assert len(loaded.frame) == 1 and loaded.report.n_rejected == 1
    text = quarantine.read_text()
    assert "alice.smith" not in text and WITHHELD in text
    record = json.loads(text)
    assert record["row"] == 2 and "truncated" in record["reason"]
    csv = tmp_path / "events.csv"
    csv.write_text(
        "user_id,timestamp,kind,text\ncarol,1700000000,search,boots,mail carol@example.com\n"
    )
    load_events(csv, quarantine=quarantine, privacy=policy)
    stored = json.loads(quarantine.read_text())["record"]
    assert "carol@example.com" not in quarantine.read_text()
    assert stored["user_id"] == policy.user("carol") and "[email]" in str(stored)
    plain = PrivacyPolicy(None, Scrubber())  # raw ids kept: the raw line may stay
    assert plain.record({"__row_text__": "x"}) == {"__row_text__": "x"}
