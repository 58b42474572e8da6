"""Vector search: exact numpy, FAISS ``Flat`` and the size-selected IVF index, one thread.

For each database size (default 100k and 1M vectors of dim 384) it builds three indexes
over the same vectors with string ids and measures, for each:

* ``build s``: ``add`` of all vectors, plus ``optimize()`` (IVF training on a seeded sample,
  adding every vector to its list, ``nprobe`` tuning) for the IVF index;
* ``index MB``: the bytes the index keeps in memory: the vector array for numpy, the saved
  FAISS file for FAISS (what ``load`` reads back, ids excluded); the IVF index stores
  float16 (``SQfp16``), about half of ``Flat``;
* ``queries/s``: one batched ``search`` call over all queries (k=10) with ONE thread
  (``faiss.omp_set_num_threads(1)``, and BLAS limited to one thread for numpy);
* ``recall@10`` against the exact top 10 (FAISS ``Flat``), and ``vs exact``, the speed-up
  over the numpy reference.

The IVF row is built with ``FaissIndex(ann_threshold=1)``, i.e. the structure
``factory="auto"`` builds above :data:`profiler.vectors.ANN_THRESHOLD`, at every size; the
``auto`` column says what ``factory="auto"`` picks at that size. Numpy exact search is
timed on the first ``--exact-queries`` queries only (at 1M it takes tens of seconds for
200); its queries/s is measured on those and its recall on those.

DATA. Real sentence embeddings have a much lower intrinsic dimension than random vectors,
and that decides how hard approximate search is. This machine holds ~6.7k real embeddings:
the bundled clothing data's item titles, item descriptions and review texts
(``profiler/data/clothing``), encoded by the bundled all-MiniLM-L6-v2 with
:class:`profiler.embedding.Embedder` (cached under ``benchmarks/results/embedding_cache``;
the first run embeds them, about a minute or more on CPU). The synthetic database and queries
are anchored on them: each synthetic vector is a random real embedding (the anchor) plus
Gaussian noise with the real embeddings' own covariance (from their PCA) scaled by
``--noise`` (default 0.5, i.e. half the real set's spread in every principal direction), then
L2-normalised. So the points follow the real data's anisotropic shape, but every one of the
~6.7k anchors is the centre of its own cloud of ``size / 6.7k`` points: neighbours are more
clustered than in a real 1M catalogue. Queries are fresh draws, never database vectors. The
JSON records the mean cosine between a synthetic vector and its anchor (0.93 at 0.5).
The noise level decides how hard the synthetic set is, so read the IVF rows with it: at
``--noise 0.5`` the clouds are tight and 1M vectors need ``nprobe`` 1; at ``--noise 1.0``
(noise as large as the real set's own spread) they need ``nprobe`` ~42 for the same recall,
about 30x fewer queries/s. The ``real`` row below is the check on real embeddings.

How realistic each noise level is (measured once, 500 held-out queries against 6,250
vectors, mean cosine of the 1st / 10th neighbour): real embeddings 0.740 / 0.662;
``--noise 0.5`` 0.782 / 0.595; ``--noise 1.0`` 0.595 / 0.493. So at equal size noise 1.0
has much weaker neighbours than real text (harder than real data), and noise 0.5 a sharper
nearest neighbour but a weaker 10th. Neither is a real 1M catalogue, which would span far
more topics than one shop's 6.7k texts. A known artefact: the data have exactly ~6.7k
clusters, so an IVF with more lists than anchors (8192 at 1M) puts each cloud in its own
lists and looks ~3x better at noise 1.0 than ``IVF4096`` (measured: recall 0.971 at
nprobe 16, 3.3k queries/s); that gain says more about the generator than about real data,
which is why the list count was not raised on its evidence.

REAL-DATA RECALL. Separately, the real embeddings themselves are split into ``--real-queries``
held-out queries and a database of the rest, the IVF index is built and tuned on that
database alone, and its recall@10 against exact search on the held-out real queries is
reported (``real`` row), so the reader sees recall on real embeddings, not only synthetic.

Run from the repository root (about 2 GB of RAM at 100k and 8 GB at 1M; see the JSON for
the time it took)::

    .venv/bin/python benchmarks/search.py                      # 100k and 1M
    .venv/bin/python benchmarks/search.py --sizes 10000 --queries 200   # quick check

Results are printed as a table and written as JSON (default
``benchmarks/results/search.json``) with the machine's facts.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
from machine import write_results
from threadpoolctl import threadpool_limits

import profiler
from profiler.embedding import Embedder
from profiler.vectors import ANN_THRESHOLD, ExactIndex, FaissIndex, VectorIndex

logger = logging.getLogger("benchmarks.search")

K = 10
GENERATE_CHUNK = 100_000  # rows drawn at a time, to bound the float32 temporaries
RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_OUT = RESULTS / "search.json"
DATA = Path(profiler.__file__).resolve().parent / "data" / "clothing"


def real_texts() -> list[str]:
    """Distinct non-empty titles, descriptions and review texts of the bundled data."""
    items = pd.read_parquet(DATA / "items.parquet")
    events = pd.read_parquet(DATA / "events.parquet")
    texts = [*items["title"], *items["description"], *events["text"]]
    return list(dict.fromkeys(t for t in texts if isinstance(t, str) and t.strip()))


def real_vectors(cache_dir: Path) -> np.ndarray:
    """The bundled texts embedded by the bundled model (cached: a re-run reads the cache)."""
    start = time.perf_counter()
    vectors = Embedder(device="cpu", cache_dir=cache_dir).encode(real_texts())
    logger.info("%d real vectors in %.1f s", len(vectors), time.perf_counter() - start)
    return vectors


class AnchoredGenerator:
    """Unit vectors drawn around real embeddings with their covariance (see module docs)."""

    def __init__(self, anchors: np.ndarray, noise: float) -> None:
        self.anchors = anchors
        centred = anchors - anchors.mean(axis=0)
        # Rows of ``basis`` are principal directions scaled by their standard deviation,
        # so ``z @ basis`` for standard normal ``z`` has the anchors' covariance.
        _, singular, directions = np.linalg.svd(centred, full_matrices=False)
        std = singular / np.sqrt(len(anchors) - 1)
        self.basis = (directions * (noise * std)[:, None]).astype(np.float32)

    def draw(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` vectors and the index of each one's anchor."""
        dim = self.anchors.shape[1]
        out = np.empty((n, dim), dtype=np.float32)
        which = rng.integers(len(self.anchors), size=n)
        for start in range(0, n, GENERATE_CHUNK):
            stop = min(start + GENERATE_CHUNK, n)
            z = rng.standard_normal((stop - start, len(self.basis)), dtype=np.float32)
            block = z @ self.basis
            block += self.anchors[which[start:stop]]
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            out[start:stop] = block
        return out, which


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each query's true top-k ids that ``found`` also returns."""
    hits = sum(len(set(f) & set(t)) for f, t in zip(found.tolist(), truth.tolist()))
    return hits / truth.size


def index_bytes(index: VectorIndex) -> int:
    if isinstance(index, ExactIndex):
        return int(index._vectors.nbytes)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "index.faiss"
        index._save_vectors(path)
        return path.stat().st_size


def bench_index(
    name: str, index: VectorIndex, ids: list[str], vectors: np.ndarray, queries: np.ndarray
) -> tuple[dict, np.ndarray]:
    start = time.perf_counter()
    index.add(ids, vectors)
    if isinstance(index, FaissIndex):
        index.optimize()
    build = time.perf_counter() - start
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        with threadpool_limits(1):
            start = time.perf_counter()
            result = index.search(queries, K)
            seconds = time.perf_counter() - start
    finally:
        faiss.omp_set_num_threads(threads)
    row = {
        "backend": name,
        "structure": getattr(index, "structure_", "numpy"),
        "nprobe": getattr(index, "nprobe_", None),
        "tuned_recall": getattr(index, "tuned_recall_", None),
        "build_seconds": build,
        "index_bytes": index_bytes(index),
        "n_queries": len(queries),
        "search_seconds": seconds,
        "queries_per_second": len(queries) / seconds,
    }
    logger.info("%s: %s", name, row)
    return row, result.ids


def bench_size(
    size: int, generator: AnchoredGenerator, queries: np.ndarray, exact_queries: int, seed
) -> list[dict]:
    start = time.perf_counter()
    vectors, _ = generator.draw(size, np.random.default_rng(seed))
    ids = [f"v{i}" for i in range(size)]
    logger.info("size %d: generated in %.1f s", size, time.perf_counter() - start)
    dim = vectors.shape[1]
    auto = FaissIndex(dim).target_structure(size)
    rows = []
    flat_row, truth = bench_index(
        "faiss Flat", FaissIndex(dim, factory="Flat"), ids, vectors, queries
    )
    exact_row, exact_ids = bench_index(
        "numpy exact", ExactIndex(dim), ids, vectors, queries[:exact_queries]
    )
    exact_row["recall_at_10"] = recall_at_k(exact_ids, truth[:exact_queries])
    flat_row["recall_at_10"] = 1.0  # the ground truth
    gc.collect()
    ivf_row, ivf_ids = bench_index(
        "faiss IVF", FaissIndex(dim, ann_threshold=1), ids, vectors, queries
    )
    ivf_row["recall_at_10"] = recall_at_k(ivf_ids, truth)
    for row in (exact_row, flat_row, ivf_row):
        row["size"] = size
        row["auto_picks"] = auto
        row["ratio_vs_exact"] = row["queries_per_second"] / exact_row["queries_per_second"]
        rows.append(row)
    return rows


def bench_real(real: np.ndarray, n_queries: int, seed) -> dict:
    """IVF built and tuned on real embeddings, recall on held-out real queries."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(real))
    queries, database = real[order[:n_queries]], real[order[n_queries:]]
    ids = [f"r{i}" for i in range(len(database))]
    exact = FaissIndex(real.shape[1], factory="Flat")
    exact.add(ids, database)
    truth = exact.search(queries, K).ids
    row, found = bench_index(
        "faiss IVF", FaissIndex(real.shape[1], ann_threshold=1), ids, database, queries
    )
    row.update(size=len(database), auto_picks="Flat", recall_at_10=recall_at_k(found, truth))
    row["ratio_vs_exact"] = None
    return row


def format_table(rows: list[dict]) -> str:
    header = (
        f"{'size':>9} {'data':<5} {'backend':<12} {'structure':<13} {'nprobe':>6} "
        f"{'build s':>8} {'index MB':>9} {'queries/s':>10} {'recall@10':>9} {'vs exact':>9} "
        f"{'auto picks':<13}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        ratio = row["ratio_vs_exact"]
        lines.append(
            f"{row['size']:>9} {row['data']:<5} {row['backend']:<12} {row['structure']:<13} "
            f"{row['nprobe'] if row['nprobe'] is not None else '-':>6} "
            f"{row['build_seconds']:>8.2f} {row['index_bytes'] / 1e6:>9.1f} "
            f"{row['queries_per_second']:>10.1f} {row['recall_at_10']:>9.4f} "
            f"{f'{ratio:.1f}x' if ratio is not None else '-':>9} {row['auto_picks']:<13}"
        )
    return "\n".join(lines)


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes must be comma-separated ints: {text!r}") from None
    if not sizes or min(sizes) < 1000:
        raise argparse.ArgumentTypeError(f"sizes must be at least 1000: {text!r}")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build time, memory, single-thread queries/s and recall@10 of exact "
        "numpy, FAISS Flat and the size-selected IVF index."
    )
    parser.add_argument("--sizes", type=_sizes, default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=1000, help="queries per size")
    parser.add_argument(
        "--exact-queries", type=int, default=200, help="queries timed on numpy exact search"
    )
    parser.add_argument("--real-queries", type=int, default=500, help="held-out real queries")
    parser.add_argument("--noise", type=float, default=0.5, help="noise scale (module docs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=RESULTS / "embedding_cache")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each step")
    args = parser.parse_args(argv)
    if min(args.queries, args.exact_queries, args.real_queries) <= 0 or args.noise < 0:
        parser.error("--queries, --exact-queries, --real-queries must be positive")
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.verbose:
        logging.getLogger("benchmarks").setLevel(logging.INFO)
        logging.getLogger("profiler.vectors").setLevel(logging.INFO)

    started = time.perf_counter()
    real = real_vectors(args.cache_dir)
    generator = AnchoredGenerator(real, args.noise)
    query_seed, real_seed, *size_seeds = np.random.SeedSequence(args.seed).spawn(
        2 + len(args.sizes)
    )
    queries, anchors = generator.draw(args.queries, np.random.default_rng(query_seed))
    anchor_cosine = float(np.mean(np.sum(queries * real[anchors], axis=1)))
    rows = [{**bench_real(real, args.real_queries, real_seed), "data": "real"}]
    for size, seed in zip(args.sizes, size_seeds):
        rows += [
            {**row, "data": "synth"}
            for row in bench_size(
                size, generator, queries, min(args.exact_queries, args.queries), seed
            )
        ]
        gc.collect()
    total = time.perf_counter() - started

    print(format_table(rows))
    print(f"\ntook {total:.0f} s")
    write_results(
        args.out,
        "search",
        {
            "sizes": args.sizes,
            "dim": int(real.shape[1]),
            "k": K,
            "n_queries": args.queries,
            "exact_queries": args.exact_queries,
            "real_queries": args.real_queries,
            "ann_threshold": ANN_THRESHOLD,
            "threads": 1,
            "seed": args.seed,
            "data": {
                "kind": "synthetic anchored on real embeddings",
                "description": (
                    f"{len(real)} real all-MiniLM-L6-v2 embeddings of the bundled "
                    "clothing titles, descriptions and reviews are anchors; each vector "
                    "is a random anchor plus Gaussian noise with the anchors' covariance "
                    f"scaled by {args.noise}, L2-normalised. Queries are fresh draws."
                ),
                "n_anchors": len(real),
                "noise": args.noise,
                "mean_cosine_to_anchor": anchor_cosine,
            },
        },
        rows,
        packages=("torch", "faiss-cpu", "numpy"),
        total_seconds=total,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
