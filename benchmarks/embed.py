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

import numpy as np
import pandas as pd
from machine import PACKAGES, write_results

import profiler
from profiler.embedding import Embedder

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


#: Explicit paths benchmarked beside the default: side name -> Embedder keywords.
PATHS = {
    "torch-fp32": {"backend": "torch", "dtype": "float32"},
    "torch-bf16": {"backend": "torch", "dtype": "bfloat16"},
    "onnx": {"backend": "onnx"},
    "onnx-int8": {"backend": "onnx-int8"},
}
CHUNK = 250  # texts per timed chunk (see the module docstring)


def agreement(reference: np.ndarray, vectors: np.ndarray, k: int = 10) -> tuple[float, float]:
    """``(mean cosine, mean top-k neighbour overlap)`` of ``vectors`` with ``reference``."""
    cosine = float(np.mean(np.sum(reference * vectors, axis=1)))

    def neighbours(x: np.ndarray) -> np.ndarray:
        scores = x @ x.T
        np.fill_diagonal(scores, -np.inf)
        return np.argpartition(-scores, k, axis=1)[:, :k]

    overlap = [
        len(np.intersect1d(a, b)) / k for a, b in zip(neighbours(reference), neighbours(vectors))
    ]
    return cosine, float(np.mean(overlap))


def bench_set(
    name: str,
    texts: list[str],
    sides: dict[str, Callable[[list[str]], np.ndarray]],
    batch_size: int,
    repeats: int,
) -> list[dict]:
    """Time every side on one text set; return one result row per side."""
    for side, run in sides.items():
        run(texts[:batch_size])  # warm-up: loads the model, exports ONNX once
        logger.info("%s %s warmed up", name, side)
    times = dict.fromkeys(sides, 0.0)
    parts: dict[str, list[np.ndarray]] = {side: [] for side in sides}
    for start in range(0, len(texts), CHUNK):
        chunk = texts[start : start + CHUNK]
        best = dict.fromkeys(sides, float("inf"))
        for repeat in range(repeats):
            order = list(sides) if repeat % 2 == 0 else list(reversed(sides))
            for side in order:
                began = time.perf_counter()
                vectors = sides[side](chunk)
                best[side] = min(best[side], time.perf_counter() - began)
            logger.info("%s chunk %d repeat %d done", name, start // CHUNK, repeat)
        for side in sides:
            times[side] += best[side]
            parts[side].append(np.asarray(sides[side](chunk), dtype=np.float32))

    baseline = np.concatenate(parts["encode"])
    rows = []
    for side, seconds in times.items():
        vectors = np.concatenate(parts[side])
        assert vectors.shape == baseline.shape, (side, vectors.shape, baseline.shape)
        cosine, overlap = agreement(baseline, vectors)
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
                "mean_cosine_vs_encode": cosine,
                "top10_overlap_vs_encode": overlap,
                "max_abs_diff_vs_encode": float(np.max(np.abs(vectors - baseline))),
            }
        )
    return rows


def format_table(rows: list[dict]) -> str:
    header = (
        f"{'set':<8} {'side':<15} {'n':>5} {'chars':>6} {'batch':>5} {'best s':>8} "
        f"{'texts/s':>9} {'vs encode':>9} {'cosine':>8} {'top-10':>7} {'max|diff|':>10}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['text_set']:<8} {row['side']:<15} {row['n_texts']:>5} "
            f"{row['mean_chars']:>6.0f} {row['batch_size']:>5} {row['best_seconds']:>8.3f} "
            f"{row['texts_per_second']:>9.1f} {row['ratio_vs_encode']:>8.2f}x "
            f"{row['mean_cosine_vs_encode']:>8.5f} {row['top10_overlap_vs_encode']:>7.4f} "
            f"{row['max_abs_diff_vs_encode']:>10.2e}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Texts/s and agreement of profiler's Embedder paths against "
        "SentenceTransformer.encode in float32."
    )
    parser.add_argument("--n", type=int, default=1000, help="texts per set (default 1000)")
    parser.add_argument("--batch-size", type=int, default=64, help="texts per forward pass")
    parser.add_argument("--repeats", type=int, default=3, help="best-of-N per chunk (default 3)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: auto)")
    parser.add_argument("--onnx-cache", type=Path, default=None, help="exported ONNX models")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    args = parser.parse_args(argv)
    for option in ("n", "batch_size", "repeats"):
        if getattr(args, option) <= 0:
            parser.error(f"--{option.replace('_', '-')} must be positive")
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.verbose:
        for name in ("benchmarks", "profiler"):
            logging.getLogger(name).setLevel(logging.INFO)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from profiler.embedding import onnxruntime_available

    common = {
        "device": args.device,
        "batch_size": args.batch_size,
        "show_progress_bar": False,
        "onnx_cache": args.onnx_cache,
    }
    embedder = Embedder(**common)
    dim = embedder.dim  # loads the model (and turns off the weight-loading progress bars)

    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(embedder.spec.path), device=embedder.device)
    embedders = {"embedder": embedder}
    for side, options in PATHS.items():
        if side.startswith("onnx") and not onnxruntime_available():
            logger.warning("skipping %s: onnxruntime is not installed", side)
            continue
        if side.startswith("onnx") and not embedder.device.startswith("cpu"):
            continue
        embedders[side] = Embedder(**common, **options)

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-embed-cache-") as cache_dir:
        for name in TEXT_SETS:
            texts = load_texts(name, args.n)
            Embedder(**common, cache_dir=cache_dir).encode(texts)  # fills the cache; not timed
            sides: dict[str, Callable[[list[str]], np.ndarray]] = {
                "encode": lambda chunk: model.encode(
                    chunk,
                    batch_size=args.batch_size,
                    show_progress_bar=False,
                    convert_to_numpy=True,
                    normalize_embeddings=True,
                ),
            }
            for side, path in embedders.items():
                sides[side] = path.encode
            # A fresh instance reads the cache from disk, as a rebuild in a new process does.
            sides["embedder+cache"] = lambda chunk: Embedder(**common, cache_dir=cache_dir).encode(
                chunk
            )
            rows += bench_set(name, texts, sides, args.batch_size, args.repeats)

    print(format_table(rows))
    write_results(
        args.out,
        "embed",
        {
            "n": args.n,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "chunk": CHUNK,
            "device": embedder.device,
            "default_backend": embedder.backend,
            "default_dtype": embedder.dtype,
            "model_id": embedder.model_id,
            "paths": {side: e.model_id for side, e in embedders.items()},
            "model_path": str(embedder.spec.path),
            "dim": dim,
            "texts": {name: f"{path.name}:{column}" for name, (path, column) in TEXT_SETS.items()},
        },
        rows,
        packages=(*PACKAGES, "onnxruntime", "onnx"),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
