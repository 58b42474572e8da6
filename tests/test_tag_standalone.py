"""A text-only tagger: train-tags and tags on a directory that holds no catalogue, here
a tiny real Chinese fine-tune of multilingual-e5-small."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from profiler import cli
from profiler.tags.standalone import TextTagger


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, chinese_reviews) -> tuple:
    """140 real reviews labelled with Chinese tags (好评 / 差评), and 40 held-out ones."""
    sample = chinese_reviews[chinese_reviews["text"].str.len().between(8, 60)]
    sample = sample.groupby("label").head(90).sample(frac=1.0, random_state=0)
    sample = sample.assign(tag=sample["label"].map({1: "好评", 0: "差评"}))
    train, held = sample.iloc[:140], sample.iloc[140:]
    path = tmp_path_factory.mktemp("zh") / "reviews.csv"
    train[["text", "tag"]].to_csv(path, index=False)
    return path, held


@pytest.mark.slow  # a real fine-tune of the multilingual model: 1 minute on 2 cores
def test_train_tags_and_tags_work_without_a_catalogue(e5, labelled, tmp_path, capsys):
    data, held = labelled
    directory = tmp_path / "zh-tags"  # a new directory: no workspace, no catalogue
    argv = ["train-tags", "--workspace", str(directory), "--data", str(data)]
    options = ["--label-column", "tag", "--model", "multilingual-e5-small", "--epochs", "1"]
    assert cli.main([*argv, *options, "--max-length", "64", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    systems = {r["system"] for r in rows}
    assert {"stacked", "tfidf-logreg", "zero-shot"} <= systems
    assert TextTagger.exists(directory) and (directory / "tags" / "tagger.json").is_file()
    texts = directory / "texts.txt"
    texts.write_text("\n".join(held["text"]), encoding="utf-8")
    assert cli.main(["tags", "--workspace", str(directory), "--texts", str(texts), "--json"]) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(answers) == len(held)
    top = pd.Series([a["tags"][0]["tag"] if a["tags"] else "" for a in answers])
    assert set(top) <= {"好评", "差评", ""}  # the taxonomy's own (Chinese) tags
    accuracy = (top.to_numpy() == held["tag"].to_numpy()).mean()
    assert accuracy >= 0.75, accuracy  # 40 unseen real reviews, two balanced classes
    evidence = answers[0]["tags"][0]["evidence"][0]
    assert evidence["snippet"] and evidence["snippet"] in held["text"].iloc[0]


def test_a_directory_without_tagger_or_data_says_what_to_run(tmp_path, capsys):
    empty = tmp_path / "nothing"
    assert cli.main(["tags", "--workspace", str(empty), "--text", "好"]) == 2
    assert "profiler train-tags" in capsys.readouterr().err
    assert cli.main(["train-tags", "--workspace", str(empty)]) == 2
    assert "--data FILE" in capsys.readouterr().err
