"""Serving memory: what opening a workspace and its first queries cost in resident memory,
memory-mapped (``mmap=True``, how ``profiler search``/``recommend`` open it) against read
into memory (``mmap=False``), in the same run.

Each mode runs in a fresh process that imports the libraries (the baseline), opens the
workspace (``verify=True``, the default: every file is checksummed first, with buffered
reads that leave nothing resident), serves one known user, then one text query (which
loads the model). After each step it records the process's RSS and its private memory
(USS: pages no other process could share), and at the end whether the text query read
the embedding cache. The gap between the modes is what memory mapping saves per serving
process.

Run from the repository root::

    .venv/bin/python benchmarks/serving_memory.py                       # the bundled data
    .venv/bin/python benchmarks/serving_memory.py --workspace index/amazon-bg

Without ``--workspace`` it builds ``index/bench-memory`` from the bundled clothing data
(once). Prints a table and writes JSON (default ``benchmarks/results/serving_memory.json``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from machine import write_results

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "serving_memory.json"
DEFAULT_WORKSPACE = Path("index") / "bench-memory"

PROBE = r"""
import json, sys
import psutil

process = psutil.Process()


def mib():
    info = process.memory_full_info()
    return round(info.rss / 2**20, 1), round(info.uss / 2**20, 1)


# every library serving uses, imported before the baseline: the steps measure the
# workspace's data, not torch's code (about 400 MiB of it)
import bm25s, faiss, lightgbm, sentence_transformers, torch, transformers  # noqa: E401,F401
import profiler  # noqa: E402,F401
from profiler.workspace import Workspace  # noqa: E402

path, mmap = sys.argv[1], sys.argv[2] == "mmap"
steps = {"imports": mib()}
ws = Workspace.open(path, mmap=mmap, show_progress_bar=False)
steps["open"] = mib()
ws.recommend(ws.users[0], k=10)
steps["known user"] = mib()
ws.recommend(history=["a warm winter coat"], k=10)
steps["text query"] = mib()
cache = ws.embedder.cache
print(json.dumps({"steps": steps, "cache_loaded": bool(cache is not None and cache.loaded),
                  "files_mib": sum(f["size"] for f in ws.manifest["files"].values()) / 2**20}))
"""


def measure(workspace: Path, mode: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(workspace), mode],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{mode} probe failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", type=Path)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    workspace = args.workspace
    if workspace is None:
        workspace = DEFAULT_WORKSPACE
        if not (workspace / "CURRENT").is_file():
            import profiler
            from profiler.data import clothing_catalog, clothing_events

            print(f"building {workspace} from the bundled data ...", flush=True)
            profiler.build(workspace, catalog=clothing_catalog(), events=clothing_events()).close()
    runs = {mode: measure(workspace, mode) for mode in ("mmap", "full")}
    rows = []
    print(f"\n{workspace}: {runs['mmap']['files_mib']:.1f} MiB of workspace files")
    print(
        f"{'step':<12} {'mmap RSS':>9} {'mmap USS':>9} {'full RSS':>9} {'full USS':>9}"
        f" {'USS saved':>10}"
    )
    base = {m: runs[m]["steps"]["imports"] for m in runs}
    for step in runs["mmap"]["steps"]:
        (m_rss, m_uss), (f_rss, f_uss) = runs["mmap"]["steps"][step], runs["full"]["steps"][step]
        row = {
            "step": step,
            "mmap_rss_mib": m_rss,
            "mmap_uss_mib": m_uss,
            "full_rss_mib": f_rss,
            "full_uss_mib": f_uss,
            "mmap_uss_added_mib": round(m_uss - base["mmap"][1], 1),
            "full_uss_added_mib": round(f_uss - base["full"][1], 1),
        }
        rows.append(row)
        print(
            f"{step:<12} {m_rss:>9.1f} {m_uss:>9.1f} {f_rss:>9.1f} {f_uss:>9.1f}"
            f" {f_uss - m_uss:>10.1f}"
        )
    loaded = {m: runs[m]["cache_loaded"] for m in runs}
    print(f"embedding cache read by the text query: {loaded}")
    write_results(
        args.out,
        "serving_memory",
        {"workspace": str(workspace), "files_mib": runs["mmap"]["files_mib"]},
        rows,
        cache_loaded=loaded,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
