"""Interest tags on the Amazon Reviews 2023 development split, the way a new user runs them.

Shoppers (by ``user_id``: one person never straddles the two sides) are split 70 / 30.
The workspace shoppers' reviews and their products become a workspace; each product's
category is the category its review file was sampled from (24 categories). Then, with
the CLI and its defaults::

    profiler build --workspace WS --catalog items.parquet --events events.parquet
    profiler train-tags --workspace WS
    profiler tags --workspace WS --texts shoppers.txt --json   # one line per test shopper

where each line of ``shoppers.txt`` is one test shopper's four history reviews joined,
and ``reviews.txt`` holds each test review on its own line. A tag run is scored by the
top tag against the shopper's sampled category (top-1, top-3, macro-F1 of the top tag),
against TF-IDF + logistic regression trained on the same workspace reviews with the same
labels (:class:`profiler.tags.baseline.TfidfLogisticTagger`).

    python scripts/amazon_tags.py --out index/amazon2023-tags
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from amazon2023 import DEFAULT_SOURCE, _review_text, item_record, review_event

CLI = [sys.executable, "-c", "from profiler.cli import main; raise SystemExit(main())"]


def _profiler(*args: str) -> str:
    result = subprocess.run([*CLI, *args], check=True, capture_output=True, text=True)
    return result.stdout


def _split(users: list[str], seed: int) -> set[str]:
    unique = np.array(sorted(set(users)))
    np.random.default_rng(seed).shuffle(unique)
    return set(unique[: round(0.3 * len(unique))])


def _inputs(rows: list[dict], test: set[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    items: dict[str, dict] = {}
    events = []
    for row in rows:
        if row["user_id"] in test:
            continue
        shopper = f"{row['user_id']}:{row['category']}"
        for review in row["history"]:
            items.setdefault(review["parent_asin"], item_record(review, row["category"]))
            events.append(review_event(review, shopper))
    catalog = pd.DataFrame(list(items.values()))
    catalog["price"] = pd.to_numeric(catalog["price"], errors="coerce")
    return catalog, pd.DataFrame(events)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _scores(ranked: list[list[str]], truth: list[str]) -> dict:
    from sklearn.metrics import f1_score

    top = [r[0] if r else "" for r in ranked]
    return {
        "top1": float(np.mean([t == y for t, y in zip(top, truth)])),
        "top3": float(np.mean([y in r[:3] for r, y in zip(ranked, truth)])),
        "macro_f1": float(f1_score(truth, top, labels=sorted(set(truth)), average="macro")),
        "n": len(truth),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=Path("index/amazon2023-tags"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rows = [json.loads(line) for line in args.source.read_text(encoding="utf-8").splitlines()]
    test = _split([r["user_id"] for r in rows], args.seed)
    catalog, events = _inputs(rows, test)
    args.out.mkdir(parents=True, exist_ok=True)
    catalog.to_parquet(args.out / "items.parquet", index=False)
    events.to_parquet(args.out / "events.parquet", index=False)
    workspace = args.out / "ws"

    shoppers, shopper_truth, reviews, review_truth = [], [], [], []
    for row in rows:
        if row["user_id"] not in test:
            continue
        texts = [_one_line(_review_text(r)) for r in row["history"]]
        texts = [t for t in texts if t]
        shoppers.append(" ".join(texts))
        shopper_truth.append(row["category"])
        reviews += texts
        review_truth += [row["category"]] * len(texts)
    (args.out / "shoppers.txt").write_text("\n".join(shoppers) + "\n", encoding="utf-8")
    (args.out / "reviews.txt").write_text("\n".join(reviews) + "\n", encoding="utf-8")

    _profiler(
        "build",
        "--workspace",
        str(workspace),
        "--catalog",
        str(args.out / "items.parquet"),
        "--events",
        str(args.out / "events.parquet"),
        "-q",
    )
    report = [
        json.loads(x)
        for x in _profiler("train-tags", "--workspace", str(workspace), "--json", "-q").splitlines()
    ]

    results: dict[str, dict] = {"train_tags_report": report}
    for level, name, truth in (
        ("shopper", "shoppers.txt", shopper_truth),
        ("review", "reviews.txt", review_truth),
    ):
        out = _profiler(
            "tags", "--workspace", str(workspace), "--texts", str(args.out / name), "--json", "-q"
        )
        ranked = [[t["tag"] for t in json.loads(line)["tags"]] for line in out.splitlines()]
        results[f"profiler_{level}"] = _scores(ranked, truth)

    from profiler.tags.baseline import TfidfLogisticTagger

    names = sorted(set(catalog["category"]))
    labelled = events.merge(catalog[["item_id", "category"]], on="item_id")
    labelled = labelled[labelled["text"].str.strip() != ""]
    targets = np.eye(len(names))[[names.index(c) for c in labelled["category"]]]
    baseline = TfidfLogisticTagger(seed=args.seed).fit(list(labelled["text"]), targets)
    for level, texts, truth in (
        ("shopper", shoppers, shopper_truth),
        ("review", reviews, review_truth),
    ):
        probs = baseline.predict_proba(texts)
        ranked = [[names[j] for j in np.argsort(-p)[:5]] for p in probs]
        results[f"tfidf_{level}"] = _scores(ranked, truth)

    print(f"{'system':10s} {'level':8s} {'top1':>6s} {'top3':>6s} {'macroF1':>8s} {'n':>5s}")
    for level in ("shopper", "review"):
        for system in ("profiler", "tfidf"):
            r = results[f"{system}_{level}"]
            values = f"{r['top1']:6.3f} {r['top3']:6.3f} {r['macro_f1']:8.3f} {r['n']:5d}"
            print(f"{system:10s} {level:8s} {values}")
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
