"""interest-profiler: learn what shoppers are interested in from the text they leave behind.

One workspace directory, shared by the CLI, scripts, notebooks and GPU jobs::

    import profiler

    ws = profiler.build("index/shop", catalog="items.parquet", events="events.csv")
    ws = profiler.open("index/shop")                 # later, elsewhere
    ws.search("waterproof hiking boots", k=10)
    ws.recommend(user="u123", k=10)
    ws.recommend(history=["looking for a trail tent"])
    ws = profiler.Client("http://127.0.0.1:8000")     # the same calls, over HTTP
"""

from __future__ import annotations

import os

from profiler.embedding import Embedder
from profiler.service.client import Client
from profiler.vectors import ExactIndex, FaissIndex, SearchResult, VectorIndex
from profiler.workspace import Results, Workspace

__all__ = [
    "Client",
    "Embedder",
    "ExactIndex",
    "FaissIndex",
    "Results",
    "SearchResult",
    "VectorIndex",
    "Workspace",
    "build",
    "open",
]

__version__ = "0.1.0"


def build(path: str | os.PathLike[str], **kwargs) -> Workspace:
    """Build a workspace at ``path``; see :meth:`Workspace.build` for the arguments."""
    return Workspace.build(path, **kwargs)


def open(path: str | os.PathLike[str], **kwargs) -> Workspace:
    """Open the workspace at ``path``; see :meth:`Workspace.open`."""
    return Workspace.open(path, **kwargs)
