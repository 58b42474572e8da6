"""End to end through the ``profiler`` command: build, search, recommend on real data."""

from __future__ import annotations

import json
import shutil

import pytest

from profiler import cli
from profiler.store import Store


@pytest.fixture(scope="module")
def cli_template(tmp_path_factory, tiny_files_template):
    """The tiny CSV files built through ``profiler build``, once for this module."""
    catalog, events = tiny_files_template
    ws = tmp_path_factory.mktemp("cli") / "ws"
    argv = ["build", "--catalog", str(catalog), "--events", str(events), "--workspace", str(ws)]
    assert cli.main([*argv, "--device", "cpu", "-q"]) == 0
    return ws


@pytest.fixture
def workspace(tmp_path, cli_template):
    """A copy of :func:`cli_template` for one test to change."""
    shutil.copytree(cli_template, tmp_path / "ws", symlinks=True)
    return tmp_path / "ws"


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_build_search_recommend(workspace, tiny_frames, capsys, tmp_path):
    items, events = tiny_frames
    category = dict(zip(items["item_id"].astype(str), items["category"]))
    capsys.readouterr()

    assert cli.main(["search", "--workspace", str(workspace), "swimsuit", "-k", "4", "--json"]) == 0
    (hit,) = json_lines(capsys.readouterr().out)
    assert hit["query"] == "swimsuit" and len(hit["items"]) == 4
    assert set(hit["items"][0]) == {"item_id", "score", "title"}
    assert all(category[i["item_id"]].endswith("Swim") for i in hit["items"][:3])

    user = events["user_id"].iloc[0]
    users_file = tmp_path / "users.txt"
    users_file.write_text(f"{user}\nghost\n")
    code = cli.main(
        ["recommend", "--workspace", str(workspace), "--users", str(users_file), "--json"]
    )
    out = capsys.readouterr()
    assert code == 1 and "unknown user 'ghost'" in out.err and "line 2" in out.err
    (rec,) = json_lines(out.out)
    assert rec["user_id"] == user and len(rec["items"]) == 10
    assert events["item_id"].iloc[0] not in {i["item_id"] for i in rec["items"]}

    argv = ["recommend", "--workspace", str(workspace), "--history", "warm wool sweater"]
    assert cli.main([*argv, "--history", "cozy knit", "-k", "3", "--json"]) == 0
    (anon,) = json_lines(capsys.readouterr().out)
    assert anon["user_id"] is None and len(anon["items"]) == 3
    assert category[anon["items"][0]["item_id"]].endswith("Sweaters")

    assert cli.main(["search", "--workspace", str(workspace), "jeans", "-k", "2"]) == 0
    assert "query: jeans" in capsys.readouterr().out


def test_errors_are_messages_not_tracebacks(tmp_path, capsys):
    missing = tmp_path / "missing.csv"
    argv = [
        "build",
        "--catalog",
        str(missing),
        "--events",
        str(missing),
        "--workspace",
        str(tmp_path),
    ]
    assert cli.main(argv) == 2
    assert "missing.csv: no such file" in capsys.readouterr().err
    assert cli.main(["search", "--workspace", str(tmp_path / "none"), "jeans"]) == 2
    assert "no workspace here" in capsys.readouterr().err


def test_evaluate_writes_report(workspace, capsys):
    assert (
        cli.main(["evaluate", "--workspace", str(workspace), "--split", "text", "--json", "-q"])
        == 0
    )
    rows = json_lines(capsys.readouterr().out)
    systems = {r["system"] for r in rows}
    assert {"profiler", "popularity", "tfidf", "mean-embedding", "item-knn", "als"} <= systems
    assert {r["bucket"] for r in rows} == {"0", "all"}
    assert all(0.0 <= r["ndcg@10"] <= 1.0 for r in rows)
    for suffix in ("jsonl", "md", "png"):
        assert (workspace / "reports" / f"evaluate-text.{suffix}").is_file()
    # evaluate measures what build trained; it writes no serving settings of its own
    served = json.loads((Store(workspace).current().dir / "models/recommender.json").read_text())
    assert served["scorer"]["kind"] in {"blend", "lightgbm"}
    assert served["training"]["queries"] >= 0


def test_only_unknown_users_are_reported_as_unknown(tmp_path):
    """A KeyError from inside serving is a bug to surface, not an 'unknown user' line."""
    import argparse

    from profiler.workspace import UnknownUserError

    args = argparse.Namespace(user="u1", users=None)

    def unknown(user):
        raise UnknownUserError(user)

    def broken(user):
        raise KeyError("centre_offsets")

    assert cli._for_each_user(args, unknown) == 1
    with pytest.raises(KeyError, match="centre_offsets"):
        cli._for_each_user(args, broken)


def test_a_cut_manifest_is_refused_naming_the_file(workspace, capsys):
    manifest = Store(workspace).current().dir / "manifest.json"
    data = json.loads(manifest.read_text())
    del data["model"]
    manifest.write_text(json.dumps(data))
    assert cli.main(["search", "--workspace", str(workspace), "boots"]) == 2
    error = capsys.readouterr().err
    assert "manifest.json" in error and "changed after it was published" in error
    assert "rebuild" in error
