"""Embedding throughput: :class:`profiler.embedding.Embedder` against bare ``encode``.

Measures texts per second on two sets of real text from the bundled clothing data:
short item titles (``items.parquet``, column ``title``) and long review texts
(``events.parquet``, column ``text``). For each set it times, in the same process, on the
same texts, with the same batch size and ``normalize_embeddings=True``:

* ``encode``: ``SentenceTransformer.encode`` called directly on the model folder that
  ``Embedder().spec.path`` resolves to (the baseline);
* ``embedder``: ``Embedder(cache_dir=None).encode``, i.e. the wrapper's overhead (hashing,
  de-duplication, re-normalisation) on top of the same model;
* ``embedder+cache``: a fresh ``Embedder`` over an on-disk cache that an earlier
  ``encode`` of the same texts filled, so every vector is read from disk and the model is
  never loaded: the speed-up of rebuilding a workspace whose texts are already cached.

Each model is loaded and run on one warm-up batch before any timing; each measurement is
the best wall time of ``--repeats`` runs, with the sides interleaved so that drift in
machine load hits both. Texts are de-duplicated first, so the ``Embedder``'s own
de-duplication cannot make it look faster than the baseline. The table also reports the
largest absolute difference between each side's vectors and the baseline's (expected ~0).

Run from the repository root::

    .venv/bin/python benchmarks/embed.py                        # 1000 texts per set
    .venv/bin/python benchmarks/embed.py --n 100 --repeats 1    # quick check

Results are printed as a table and written as JSON (default
``benchmarks/results/embed.json``) with the machine's facts.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from machine import machine_facts

import profiler
from profiler.embedding import Embedder
from profiler.storage import write_json

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger("benchmarks.embed")

DATA = Path(profiler.__file__).resolve().parent / "data" / "clothing"
TEXT_SETS = {
    "titles": (DATA / "items.parquet", "title"),
    "reviews": (DATA / "events.parquet", "text"),
}
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "embed.json"


def load_texts(name: str, n: int) -> list[str]:
    """The first ``n`` distinct non-empty texts of one bundled text set."""
    path, column = TEXT_SETS[name]
    texts = pd.read_parquet(path, columns=[column])[column].dropna().astype(str)
    texts = texts[texts.str.strip() != ""].drop_duplicates().tolist()
    if len(texts) < n:
        logger.warning("%s: only %d distinct texts, asked for %d", path, len(texts), n)
    return texts[:n]


def timed(run: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    vectors = run()
    return time.perf_counter() - start, vectors


def bench_set(
    name: str,
    texts: list[str],
    embedder: Embedder,
    model: SentenceTransformer,
    batch_size: int,
    repeats: int,
) -> list[dict]:
    """Time the three sides on one text set; return one result row per side.

    ``embedder`` (no cache) and ``model`` (the same folder, loaded separately) are the two
    uncached sides, each already loaded.
    """
    device = embedder.device

    def run_encode() -> np.ndarray:
        return model.encode(
            texts,
            batch_size=batch_size,
            show_progress_bar=False,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )

    def run_embedder() -> np.ndarray:
        return embedder.encode(texts)

    warm = texts[:batch_size]
    model.encode(warm, batch_size=batch_size, show_progress_bar=False)
    embedder.encode(warm)

    with tempfile.TemporaryDirectory(prefix="bench-embed-cache-") as cache_dir:
        Embedder(
            device=device, batch_size=batch_size, show_progress_bar=False, cache_dir=cache_dir
        ).encode(texts)  # fills the cache; not timed

        def run_cached() -> np.ndarray:
            # A fresh instance reads the cache from disk, as a rebuild in a new process does.
            fresh = Embedder(
                device=device, batch_size=batch_size, show_progress_bar=False, cache_dir=cache_dir
            )
            return fresh.encode(texts)

        sides = {"encode": run_encode, "embedder": run_embedder, "embedder+cache": run_cached}
        times: dict[str, float] = dict.fromkeys(sides, float("inf"))
        outputs: dict[str, np.ndarray] = {}
        for repeat in range(repeats):
            order = list(sides) if repeat % 2 == 0 else list(reversed(sides))
            for side in order:
                seconds, outputs[side] = timed(sides[side])
                times[side] = min(times[side], seconds)
                logger.info("%s %s repeat %d: %.3f s", name, side, repeat, seconds)

    baseline = np.asarray(outputs["encode"], dtype=np.float32)
    rows = []
    for side, seconds in times.items():
        vectors = np.asarray(outputs[side], dtype=np.float32)
        assert vectors.shape == baseline.shape, (side, vectors.shape, baseline.shape)
        rows.append(
            {
                "text_set": name,
                "side": side,
                "n_texts": len(texts),
                "mean_chars": float(np.mean([len(t) for t in texts])),
                "batch_size": batch_size,
                "best_seconds": seconds,
                "texts_per_second": len(texts) / seconds,
                "ratio_vs_encode": times["encode"] / seconds,
                "max_abs_diff_vs_encode": float(np.max(np.abs(vectors - baseline))),
            }
        )
    return rows


def format_table(rows: list[dict]) -> str:
    header = (
        f"{'set':<8} {'side':<15} {'n':>5} {'chars':>6} {'batch':>5} {'best s':>8} "
        f"{'texts/s':>9} {'vs encode':>9} {'max|diff|':>10}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['text_set']:<8} {row['side']:<15} {row['n_texts']:>5} "
            f"{row['mean_chars']:>6.0f} {row['batch_size']:>5} {row['best_seconds']:>8.3f} "
            f"{row['texts_per_second']:>9.1f} {row['ratio_vs_encode']:>8.2f}x "
            f"{row['max_abs_diff_vs_encode']:>10.2e}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Texts/s of profiler's Embedder against SentenceTransformer.encode."
    )
    parser.add_argument("--n", type=int, default=1000, help="texts per set (default 1000)")
    parser.add_argument("--batch-size", type=int, default=64, help="texts per forward pass")
    parser.add_argument("--repeats", type=int, default=2, help="best-of-N wall time (default 2)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: auto)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each timing")
    args = parser.parse_args(argv)
    for option in ("n", "batch_size", "repeats"):
        if getattr(args, option) <= 0:
            parser.error(f"--{option.replace('_', '-')} must be positive")
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.verbose:
        for name in ("benchmarks", "profiler"):
            logging.getLogger(name).setLevel(logging.INFO)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    embedder = Embedder(device=args.device, batch_size=args.batch_size, show_progress_bar=False)
    dim = embedder.dim  # loads the model (and turns off the weight-loading progress bars)

    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(embedder.spec.path), device=embedder.device)
    rows = []
    for name in TEXT_SETS:
        texts = load_texts(name, args.n)
        rows += bench_set(name, texts, embedder, model, args.batch_size, args.repeats)

    print(format_table(rows))
    write_json(
        args.out,
        {
            "benchmark": "embed",
            "config": {
                "n": args.n,
                "batch_size": args.batch_size,
                "repeats": args.repeats,
                "device": embedder.device,
                "model_id": embedder.model_id,
                "model_path": str(embedder.spec.path),
                "dim": dim,
                "normalize_embeddings": True,
                "texts": {
                    name: f"{path.name}:{column}" for name, (path, column) in TEXT_SETS.items()
                },
            },
            "machine": machine_facts(),
            "results": rows,
        },
    )
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
