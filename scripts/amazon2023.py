"""Convert the Amazon Reviews 2023 development split into a catalogue and events.

Reads ``../shared/data/amazon2023/users.jsonl`` (research data: never copied into this
repository) and writes ``items.parquet`` and ``events.parquet`` for ``profiler build``.
Each (user, sampled category) row is one shopper, ``<user_id>:<category>``, with her four
history reviews and the held-out next review as ``review`` events, so a leave-last-out
split holds out exactly the held-out review. Every product any row mentions is a
catalogue item (title, brand, price, main category).

    python scripts/amazon2023.py --out index/amazon2023-input [--background 3]
    profiler build --catalog index/amazon2023-input/items.parquet \\
        --events index/amazon2023-input/events.parquet --workspace index/amazon2023
    profiler evaluate --workspace index/amazon2023 --truncate 0,1

``--background L`` guards the evaluation against an artefact of this extract: almost
every item is touched by one shopper only, so an item nobody touched in the workspace is
nearly always somebody's held-out target, and popularity or "how many users" features
find targets by construction. Every catalogue item, whatever its role, then also gets a
Poisson(L) number of ``view`` events from one-off anonymous shoppers (``bg:<n>``, one
event each, at uniform times over the data's span, seeded), so counts follow one
distribution for targets and non-targets alike. One-event shoppers have no history, so
they are never test cases.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

SHARED = Path(__file__).resolve().parents[2] / "shared"
DEFAULT_SOURCE = SHARED / "data" / "amazon2023" / "users.jsonl"


def _review_text(review: dict) -> str:
    title = (review.get("review_title") or "").strip()
    body = (review.get("review_full") or review.get("review_excerpt") or "").strip()
    return f"{title}. {body}" if title and body else title or body


def item_record(review: dict, category: str) -> dict:
    """The catalogue row of the product a review is about."""
    product = review.get("product") or {}
    return {
        "item_id": review["parent_asin"],
        "title": product.get("title") or "",
        "brand": product.get("brand") or "",
        "price": product.get("price"),
        "category": category,
    }


def review_event(review: dict, shopper: str) -> dict:
    """A review as a ``review`` event of ``shopper``."""
    return {
        "user_id": shopper,
        "timestamp": review["timestamp_ms"] / 1000.0,
        "kind": "review",
        "item_id": review["parent_asin"],
        "text": _review_text(review),
        "rating": review.get("rating"),
    }


def convert(source: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    items: dict[str, dict] = {}
    events = []
    with open(source, encoding="utf-8") as fh:
        for line_number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{source} line {line_number}: not JSON ({exc})") from exc
            shopper = f"{row['user_id']}:{row['category']}"
            for review in [*row["history"], row["heldout"]]:
                main = (review.get("product") or {}).get("main_category") or ""
                items.setdefault(review["parent_asin"], item_record(review, main))
                events.append(review_event(review, shopper))
    catalog = pd.DataFrame(list(items.values()))
    catalog["price"] = pd.to_numeric(catalog["price"], errors="coerce")
    return catalog, pd.DataFrame(events)


def background_traffic(
    catalog: pd.DataFrame, events: pd.DataFrame, rate: float, seed: int = 0
) -> pd.DataFrame:
    """One-off ``view`` events: Poisson(``rate``) per item, each from a new shopper."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(rate, size=len(catalog))
    items = np.repeat(catalog["item_id"].to_numpy(), counts)
    low, high = events["timestamp"].min(), events["timestamp"].max()
    return pd.DataFrame(
        {
            "user_id": [f"bg:{n}" for n in range(len(items))],
            "timestamp": rng.uniform(low, high, size=len(items)),
            "kind": "view",
            "item_id": items,
            "text": "",
            "rating": np.nan,
        }
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=Path("index/amazon2023-input"))
    parser.add_argument(
        "--background", type=float, default=0.0, help="Poisson rate of one-off views per item"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.source.is_file():
        parser.error(f"{args.source}: no such file (the development split lives in ../shared)")
    catalog, events = convert(args.source)
    if args.background > 0:
        events = pd.concat(
            [events, background_traffic(catalog, events, args.background, args.seed)],
            ignore_index=True,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    catalog.to_parquet(args.out / "items.parquet", index=False)
    events.to_parquet(args.out / "events.parquet", index=False)
    print(f"wrote {len(catalog)} items and {len(events)} events to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
