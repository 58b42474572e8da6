"""Machine facts recorded with every benchmark result, so runs on different machines are
never compared by their absolute numbers, and the one JSON layout every benchmark writes."""

from __future__ import annotations

import datetime as dt
import os
import platform
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from profiler.storage import write_json

PACKAGES = ("torch", "faiss-cpu", "numpy", "sentence-transformers", "transformers")


def machine_facts(packages: Sequence[str] = PACKAGES) -> dict:
    """CPU model, core count, threads, library versions and date."""
    cpu_model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu_model = next(
                (line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")),
                cpu_model,
            )
    except OSError:
        pass
    versions = {}
    for package in packages:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    import faiss
    import torch

    versions["faiss"] = faiss.__version__
    return {
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "faiss_omp_threads": faiss.omp_get_max_threads(),
        "faiss_compile_options": faiss.get_compile_options(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def write_results(
    out: Path,
    benchmark: str,
    config: dict,
    rows: list[dict],
    *,
    packages: Sequence[str] = PACKAGES,
    **extra,
) -> None:
    """Write ``{benchmark, config, machine, results, **extra}`` to ``out`` and say so."""
    write_json(
        out,
        {
            "benchmark": benchmark,
            "config": config,
            **extra,
            "machine": machine_facts(packages),
            "results": rows,
        },
    )
    print(f"\nwrote {out}")
