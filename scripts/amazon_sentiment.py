"""Review sentiment on the Amazon Reviews 2023 development split.

Two measurements on the split's star-rated reviews (every history and held-out review):

* **transfer**: a sentiment model trained elsewhere (``--model-dir``, by default the one
  ``profiler train-sentiment --workspace index/demo`` trained on the bundled clothing
  reviews) scores reviews of 24 other categories it never saw;
* **in-domain**: :meth:`profiler.sentiment.SentimentModel.train` with its defaults on the
  Amazon reviews themselves, split by user (70/15/15).

Both next to VADER and the majority rating: accuracy, mean absolute error and ROC-AUC of
1-2 stars against 4-5.

    python scripts/amazon_sentiment.py --model-dir index/demo/models/sentiment
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from amazon2023 import DEFAULT_SOURCE, _review_text

from profiler.sentiment import SentimentModel, evaluate_sentiment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--model-dir", type=Path, default=Path("index/demo/models/sentiment"))
    parser.add_argument("--out", type=Path, default=Path("index/amazon2023-sentiment.json"))
    parser.add_argument(
        "--transfer-only", action="store_true", help="skip the in-domain training (slow on CPU)"
    )
    args = parser.parse_args(argv)
    rows = [json.loads(line) for line in args.source.read_text(encoding="utf-8").splitlines()]
    texts, stars, users = [], [], []
    for row in rows:
        for review in [*row["history"], row["heldout"]]:
            text = _review_text(review)
            if text and review.get("rating") in (1, 2, 3, 4, 5):
                texts.append(text)
                stars.append(int(review["rating"]))
                users.append(row["user_id"])
    stars = np.array(stars)
    majority = int(np.bincount(stars).argmax())
    results = {"reviews": len(texts), "rating_counts": np.bincount(stars, minlength=6)[1:].tolist()}
    if args.model_dir.is_dir():
        transfer = SentimentModel.load(args.model_dir, device="cpu")
        results["transfer"] = evaluate_sentiment(transfer, texts, stars, majority)
    if not args.transfer_only:
        _, results["in_domain"] = SentimentModel.train(texts, stars, users, device="cpu")
    for name in ("transfer", "in_domain"):
        if name not in results:
            continue
        print(f"{name} ({results[name]['test_reviews']} test reviews)")
        for system, row in results[name]["systems"].items():
            print(
                f"  {system:9s} accuracy {row['accuracy']:.3f}  mae {row['mae']:.3f}  "
                f"roc_auc_negative {row['roc_auc_negative']:.3f}"
            )
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
