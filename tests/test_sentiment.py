"""Review sentiment: the rating model on real bundled reviews, predicted ratings in
profiles (marked as predicted), and item display names that never quote a complaint."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from profiler.data import clothing_events
from profiler.workspace import Workspace, display_titles, predict_ratings


class FixedSentiment:
    """Deterministic stand-in: 'broke' or 'awful' means 1 star, anything else 5."""

    def predict(self, texts):
        bad = np.array([("broke" in t or "awful" in t) for t in texts])
        rating = np.where(bad, 1.0, 5.0)
        return rating, bad.astype(float)


def test_predict_ratings_fills_only_reviews_without_one():
    events = pd.DataFrame(
        {
            "kind": ["review", "review", "view", "review"],
            "text": ["broke after one day", "love it", "", ""],
            "rating": [np.nan, 2.0, np.nan, np.nan],
        }
    )
    assert predict_ratings(events, FixedSentiment()) == 1
    assert events["rating"].iloc[0] == 1.0 and events["rating"].iloc[1] == 2.0
    assert events["rating_predicted"].tolist() == [True, False, False, False]
    assert np.isnan(events["rating"].iloc[3])  # no text, nothing to read
    # predicting again re-predicts the predicted ones only
    assert predict_ratings(events, FixedSentiment()) == 1


def test_display_titles_never_quote_a_complaint():
    items = pd.DataFrame(
        {
            "item_id": ["a", "b", "c"],
            "title": ["Blue dress", "", ""],
            "category": ["Dresses", "Tops > Knits", "Tops > Blouses"],
        }
    )
    events = pd.DataFrame(
        {
            "item_id": ["b", "b", "b", "c"],
            "kind": "review",
            "text": [
                "Worst sweater ever. It fell apart.",
                "Soft and warm! I wear it daily.",
                "Nice.",
                "Terrible fit. Returned it.",
            ],
            "rating": [1.0, 5.0, 5.0, 2.0],
        }
    )
    assert display_titles(items, events).tolist() == ["Blue dress", "Soft and warm!", "Blouses c"]


@pytest.fixture(scope="module")
def rated_reviews():
    events = pd.read_parquet(clothing_events())
    return events.iloc[:1500].reset_index(drop=True)


@pytest.mark.slow  # a real fine-tune: 35 s on 2 cores
def test_sentiment_model_on_real_reviews(rated_reviews, tmp_path_factory):
    """The bundled model, probe head only (epochs=0) on 700 real reviews: it separates
    1-2 star reviews from 4-5 star ones, ahead of the majority baseline."""
    from profiler.sentiment import SentimentModel

    reviews = rated_reviews
    model, report = SentimentModel.train(
        reviews["text"],
        reviews["rating"],
        reviews["user_id"],
        epochs=0,
        max_length=128,
        max_train=700,
        device="cpu",
    )
    systems = report["systems"]
    assert systems["model"]["roc_auc_negative"] >= 0.85  # measured 0.9x (see README)
    assert systems["model"]["roc_auc_negative"] > systems["majority"]["roc_auc_negative"]
    assert systems["model"]["mae"] < systems["majority"]["mae"]
    rating, negative = model.predict(["It broke after one day, awful quality.", "I love it!"])
    assert rating[0] < 3.0 < rating[1] and negative[0] > 0.5 > negative[1]
    directory = tmp_path_factory.mktemp("sentiment")
    model.save(directory, report)
    again = SentimentModel.load(directory, device="cpu")
    np.testing.assert_allclose(
        again.predict_proba(["so soft"]), model.predict_proba(["so soft"]), atol=1e-5
    )
    assert json.loads((directory / "report.json").read_text())["test_reviews"] > 0


def test_unrated_negative_review_lowers_the_profile(tmp_path, tiny_frames, embedder, monkeypatch):
    """A review without stars is read: a predicted 1 star makes it negative evidence, and
    its tag evidence says the rating was predicted."""
    import profiler.sentiment as sentiment_module

    items, events = tiny_frames
    user = events["user_id"].iloc[0]
    item = events["item_id"].iloc[0]
    unrated = pd.DataFrame(
        [
            {
                "user_id": user,
                "timestamp": float(events["timestamp"].max()) + 60.0,
                "kind": "review",
                "item_id": item,
                "text": "it broke after one day, awful",
            }
        ]
    )
    first = Workspace.build(tmp_path / "ws", catalog=items, events=events, embedder=embedder)
    # as if train-sentiment had run: a rebuild carries models/sentiment over and loads it
    marker = first.data / "models" / "sentiment" / "head.safetensors"
    marker.parent.mkdir(parents=True)
    marker.write_bytes(b"weights")
    monkeypatch.setattr(
        sentiment_module.SentimentModel, "load", staticmethod(lambda *a, **k: FixedSentiment())
    )
    ws = Workspace.build(
        tmp_path / "ws",
        catalog=items,
        events=pd.concat([events, unrated], ignore_index=True),
        embedder=embedder,
    )
    mine = ws.user_events(user)
    last = mine[mine["text"] == "it broke after one day, awful"].iloc[0]
    assert last["rating"] == 1.0 and bool(last["rating_predicted"])
    assert not mine["rating_predicted"].iloc[:-1].any()
    builder = ws.recommender.builder_
    assert builder.rating_factor(np.array([last["rating"]]))[0] < 0


def test_train_sentiment_and_sentiment_cli(tmp_path, tiny_frames, embedder, capsys):
    """train-sentiment on a workspace's own rated reviews (probe head, 64 tokens), then
    `profiler sentiment --json`; the workspace's reviews keep their own ratings."""
    from profiler import cli

    items, events = tiny_frames
    ws = Workspace.build(tmp_path / "ws", catalog=items, events=events, embedder=embedder)
    before = ws.events["rating"].copy()
    args = ["train-sentiment", "--workspace", str(ws.path), "--epochs", "0", "--max-length", "64"]
    assert cli.main([*args, "--json", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["systems"]) >= {"model", "majority"} and report["test_reviews"] > 0
    again = Workspace.open(ws.path)
    assert (again.sentiment_dir / "head.safetensors").is_file()
    assert again.manifest["artifacts"]["models/sentiment"]["built_from"]["workspace"]
    np.testing.assert_array_equal(again.events["rating"].to_numpy(), before.to_numpy())
    assert not again.events["rating_predicted"].any()  # every review here had stars
    code = cli.main(
        [
            "sentiment",
            "--workspace",
            str(ws.path),
            "--text",
            "Love it!",
            "--text",
            "awful",
            "--json",
        ]
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0 and [line["text"] for line in lines] == ["Love it!", "awful"]
    for line in lines:
        assert 1.0 <= line["rating"] <= 5.0 and 0.0 <= line["negative"] <= 1.0
        assert abs(sum(line["probabilities"]) - 1.0) < 1e-3
    missing = cli.main(["sentiment", "--workspace", str(tmp_path / "none"), "--text", "x"])
    assert missing == 2


@pytest.mark.slow
def test_sentiment_defaults_on_bundled_reviews():
    """train-sentiment's defaults on the 5,000 bundled reviews: ROC-AUC of 1-2 stars
    against 4-5 on held-out shoppers >= 0.90 and ahead of VADER and majority."""
    from profiler.sentiment import SentimentModel

    events = pd.read_parquet(clothing_events())
    _, report = SentimentModel.train(
        events["text"], events["rating"], events["user_id"], device="cpu"
    )
    systems = report["systems"]
    assert systems["model"]["roc_auc_negative"] >= 0.90
    assert systems["model"]["roc_auc_negative"] > systems["vader"]["roc_auc_negative"]
    assert systems["model"]["accuracy"] > systems["majority"]["accuracy"]


def test_rated_file_reads_stars_and_polarity_labels(tmp_path, caplog):
    from profiler.sentiment import rated_file

    stars = tmp_path / "stars.csv"
    pd.DataFrame({"text": ["a", "b", "c"], "rating": [5, 1, ""]}).to_csv(stars, index=False)
    texts, ratings, groups = rated_file(stars)
    assert texts == ["a", "b", "c"] and ratings[:2].tolist() == [5.0, 1.0]
    assert np.isnan(ratings[2]) and groups == ["row-0", "row-1", "row-2"]
    binary = tmp_path / "binary.csv"  # 1 = positive, 0 = negative: no star is 0
    pd.DataFrame({"t": ["好", "差", "好"], "y": [1, 0, 1]}).to_csv(binary, index=False)
    assert rated_file(binary, "t", "y")[1].tolist() == [5.0, 1.0, 5.0]
    words = tmp_path / "words.jsonl"
    words.write_text('{"t": "x", "y": "Positive"}\n{"t": "y", "y": "neg"}\n', encoding="utf-8")
    assert rated_file(words, "t", "y")[1].tolist() == [5.0, 1.0]
    with pytest.raises(ValueError, match="row 1 has no column 'stars'"):
        rated_file(stars, rating_column="stars")
    odd = tmp_path / "odd.csv"
    pd.DataFrame({"text": ["a", "b", "c"], "rating": ["4", "five", "7"]}).to_csv(odd, index=False)
    with caplog.at_level("WARNING", logger="profiler.sentiment"):
        assert rated_file(odd)[1][0] == 4.0
    assert "odd.csv: 2 rows have a rating that is not a star rating" in caplog.text
    assert "(first: row 2, 'five')" in caplog.text


@pytest.mark.slow  # a real fine-tune of the multilingual model: 20 s on 2 cores
def test_text_only_sentiment_needs_no_catalogue(e5, chinese_reviews, tmp_path, capsys):
    """train-sentiment and sentiment on a directory without a workspace: a tiny real
    Chinese fine-tune of multilingual-e5-small, labels 1 (positive) / 0 (negative)."""
    from profiler import cli

    sample = chinese_reviews[chinese_reviews["text"].str.len().between(8, 60)]
    sample = sample.groupby("label").head(80).sample(frac=1.0, random_state=0)
    data = tmp_path / "reviews.csv"
    sample[["text", "label"]].to_csv(data, index=False)
    directory = tmp_path / "zh-sentiment"  # a new directory: no workspace, no catalogue
    argv = ["train-sentiment", "--workspace", str(directory), "--data", str(data)]
    options = ["--rating-column", "label", "--model", "multilingual-e5-small", "--epochs", "1"]
    assert cli.main([*argv, *options, "--max-length", "64", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["train_reviews"] > 50 and "model" in report["systems"]
    assert (directory / "sentiment" / "head.safetensors").is_file()
    texts = ["质量非常好，很满意，下次还买", "太差了，用了一天就坏了，退货"]
    query = ["sentiment", "--workspace", str(directory), "--json"]
    assert cli.main([*query, "--text", texts[0], "--text", texts[1]]) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [a["text"] for a in answers] == texts
    assert answers[1]["negative"] > answers[0]["negative"]
    assert cli.main(["train-sentiment", "--workspace", str(tmp_path / "empty")]) == 2
    assert "--data FILE" in capsys.readouterr().err
