"""Interest tags on the Amazon Reviews 2023 development split: review text -> category.

Every history review, read together with the title of the product it is about (what the
event says), is labelled with the category its shopper was sampled from (24 categories).
Shoppers are split by user id (train / validation / test; a shopper never straddles two
sides). The script fine-tunes the tagger, reports the fine-tuned classifier,
the zero-shot tagger and TF-IDF + logistic regression on the test reviews, and then the
per-shopper check: for each test (shopper, category) row, aggregate the tags of her four
history reviews (weighted by rating like her profile) and compare the top-1 tag with
the category she was sampled from.

    python scripts/amazon_tags.py --out index/amazon2023-tags
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from profiler.embedding import Embedder
from profiler.profiles import ProfileBuilder
from profiler.storage import write_json
from profiler.tags.taxonomy import Tag, Taxonomy
from profiler.tags.training import TaggingData, report_table, split_by_group, train_tags
from profiler.tags.users import aggregate_tags

sys.path.insert(0, str(Path(__file__).resolve().parent))
from amazon2023 import DEFAULT_SOURCE, _review_text


def _event_text(review: dict) -> str:
    """The product's title, then the review: the event as a tagger sees it."""
    title = ((review.get("product") or {}).get("title") or "").strip()
    text = _review_text(review)
    return f"{title}. {text}" if title and text else title or text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=Path("index/amazon2023-tags"))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    rows = [json.loads(line) for line in args.source.read_text(encoding="utf-8").splitlines()]

    texts, labels, groups, row_of = [], [], [], []
    for number, row in enumerate(rows):
        for review in row["history"]:
            text = _event_text(review)
            if text:
                texts.append(text)
                labels.append([row["category"]])
                groups.append(row["user_id"])
                row_of.append(number)
    data = TaggingData(texts, labels, groups)
    names = sorted({row["category"] for row in rows})
    taxonomy = Taxonomy([Tag(name, name.replace("_", " ")) for name in names])
    embedder = Embedder(device="cpu", show_progress_bar=False)
    model, report = train_tags(
        data, taxonomy, embedder, output=args.out, epochs=args.epochs, seed=args.seed
    )
    print(report_table(report))

    _, _, test = split_by_group(groups, seed=args.seed)
    test_rows = sorted({row_of[i] for i in test})
    builder = ProfileBuilder()
    hits = []
    for number in test_rows:
        row = rows[number]
        history = pd.DataFrame(
            {
                "kind": "review",
                "item_id": [r["parent_asin"] for r in row["history"]],
                "timestamp": [r["timestamp_ms"] / 1000 for r in row["history"]],
                "text": [_event_text(r) for r in row["history"]],
                "rating": [r["rating"] for r in row["history"]],
            }
        )
        history = history[history["text"] != ""].reset_index(drop=True)
        weights = builder.config.kind_weights["review"] * builder.rating_factor(history["rating"])
        probs = model.predict_proba(list(history["text"]))
        tags = aggregate_tags(history, probs, weights, taxonomy.names, top=1, min_confidence=0.0)
        hits.append(bool(tags) and tags[0].tag == row["category"])
    rate = float(np.mean(hits))
    print(
        f"per-shopper top-1 tag == sampled category: {rate:.3f} ({sum(hits)}/{len(hits)} test rows)"
    )
    write_json(args.out / "per_user.json", {"top1_rate": rate, "rows": len(hits)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
