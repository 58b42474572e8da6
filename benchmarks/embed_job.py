"""Embedding-job memory: peak RSS of ``profiler embed`` as the input grows.

Writes Parquet inputs of ``--sizes`` rows (default 10k and 200k) and runs
``profiler embed`` on each in a fresh process, sampling that process's resident memory
every 50 ms. A job that streams its input and holds one shard at a time has the same
peak at every size; one that loads the input, or keeps all vectors, grows with it. For
contrast, the same run measures the obvious alternative: read the whole file with pandas
and call ``SentenceTransformer.encode`` on all texts at once (``--baseline-max`` rows at
most, since it is the side that grows).

The texts are made of the bundled catalogue's real titles: row ``i`` (id ``r{i}``) is
``titles[i % n] + " | " + titles[i // n % n]``, two real titles joined, so 99% of the
rows are distinct texts (some titles repeat in the catalogue). Distinct matters: the
embedder computes a repeated text once, which would make a cycled input look cheap.

Run from the repository root (the 200k size takes a few minutes on 2 cores)::

    .venv/bin/python benchmarks/embed_job.py
    .venv/bin/python benchmarks/embed_job.py --sizes 2000,20000   # quick check

Prints a table and writes JSON (default ``benchmarks/results/embed_job.json``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil
from machine import write_results

from profiler.data import clothing_catalog

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "embed_job.json"

BASELINE = """
import sys, pandas as pd
from sentence_transformers import SentenceTransformer
from profiler.embedding import Embedder
frame = pd.read_parquet(sys.argv[1])
model = SentenceTransformer(str(Embedder().spec.path), device="cpu")
vectors = model.encode(frame["title"].tolist(), batch_size=int(sys.argv[2]),
                       normalize_embeddings=True, show_progress_bar=False)
print(vectors.shape)
"""


def write_input(path: Path, n: int) -> None:
    titles = pd.read_parquet(clothing_catalog(), columns=["title"])["title"]
    titles = titles[titles.str.strip() != ""].tolist()
    frame = pd.DataFrame(
        {
            "item_id": [f"r{i}" for i in range(n)],
            "title": [
                f"{titles[i % len(titles)]} | {titles[i // len(titles) % len(titles)]}"
                for i in range(n)
            ],
        }
    )
    frame.to_parquet(path, index=False, row_group_size=10_000)


def peak_rss(command: list[str]) -> tuple[float, float]:
    """Run ``command``; return (wall seconds, peak RSS in MiB of it and its children)."""
    start = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    handle = psutil.Process(process.pid)
    peak = 0
    while process.poll() is None:
        try:
            rss = handle.memory_info().rss
            rss += sum(c.memory_info().rss for c in handle.children(recursive=True))
            peak = max(peak, rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"{command[:4]} failed: {process.stderr.read()[-2000:]}")
    return seconds, peak / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Peak memory of profiler embed by input size.")
    parser.add_argument("--sizes", default="10000,200000", help="comma-separated row counts")
    parser.add_argument("--shard-size", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--baseline-max", type=int, default=200_000, help="largest size for the baseline"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    env_python = sys.executable
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-embed-job-") as tmp:
        for n in sizes:
            source = Path(tmp) / f"input-{n}.parquet"
            write_input(source, n)
            sides = {
                "profiler embed": [
                    env_python,
                    "-m",
                    "profiler.cli",
                    "embed",
                    "--input",
                    str(source),
                    "--text-column",
                    "title",
                    "--id-column",
                    "item_id",
                    "--output",
                    str(Path(tmp) / f"out-{n}"),
                    "--shard-size",
                    str(args.shard_size),
                    "--batch-size",
                    str(args.batch_size),
                    "--device",
                    "cpu",
                    "-q",
                ],
            }
            if n <= args.baseline_max:
                sides["pandas + encode"] = [
                    env_python,
                    "-c",
                    BASELINE,
                    str(source),
                    str(args.batch_size),
                ]
            for side, command in sides.items():
                seconds, peak = peak_rss(command)
                rows.append(
                    {
                        "side": side,
                        "rows": n,
                        "seconds": seconds,
                        "texts_per_second": n / seconds,
                        "peak_rss_mib": peak,
                    }
                )
                print(f"{side:<16} {n:>8} rows {seconds:>8.1f} s {peak:>8.0f} MiB", flush=True)
    for row in rows:
        first = next(r for r in rows if r["side"] == row["side"])
        row["peak_vs_smallest"] = row["peak_rss_mib"] / first["peak_rss_mib"]

    header = (
        f"{'side':<16} {'rows':>8} {'seconds':>8} {'texts/s':>8} {'peak MiB':>9} {'vs first':>8}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for row in rows:
        print(
            f"{row['side']:<16} {row['rows']:>8} {row['seconds']:>8.1f} "
            f"{row['texts_per_second']:>8.0f} {row['peak_rss_mib']:>9.0f} "
            f"{row['peak_vs_smallest']:>7.2f}x"
        )
    write_results(
        args.out,
        "embed_job",
        {
            "sizes": sizes,
            "shard_size": args.shard_size,
            "batch_size": args.batch_size,
            "texts": "pairs of bundled catalogue titles, 99% distinct",
        },
        rows,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
