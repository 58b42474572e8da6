"""Vector indexes with stable string ids: an exact numpy reference and a FAISS backend
(and a Milvus one in :mod:`profiler.milvus`).

Both backends implement :class:`VectorIndex`, so tests run one contract suite against
each and the exact index is the oracle for the fast one, as in implicit and FAISS.

Vectors are float32 ``[n, d]`` and L2-normalised by contract, so the inner product is the
cosine. Ids are the caller's strings; :class:`IdMap` turns them into the int64 labels that
FAISS stores and back. Results are padded with ``None`` ids and ``-inf`` scores when fewer
than ``k`` items exist.

:class:`FaissIndex` picks its structure by size (``factory="auto"``): exact ``Flat`` search
below :data:`ANN_THRESHOLD` vectors, an inverted-file index (IVF) above it, trained on a
seeded sample of the stored vectors, with ``nprobe`` tuned so that recall@10 against exact
search reaches ``target_recall``. The IVF lists hold the vectors as float16
(:data:`ANN_CODEC`): half the memory and about 1.6-2x the single-thread queries/s of
float32 lists, with the same recall. The switch happens in :meth:`FaissIndex.optimize`, which
:meth:`FaissIndex.save` calls when the structure no longer fits the size.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import ClassVar, NamedTuple

import numpy as np

from profiler.storage import atomic_path, read_json, save_npy, write_json

__all__ = [
    "ANN_CODEC",
    "ANN_THRESHOLD",
    "ExactIndex",
    "FaissIndex",
    "IdMap",
    "SearchResult",
    "VectorIndex",
    "faiss_gpus",
    "ivf_lists",
    "load_index",
    "register_backend",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1

#: Size from which ``FaissIndex(factory="auto")`` builds an IVF index instead of exact
#: ``Flat``. Measured with ``benchmarks/search_threshold.py`` (384-d, one thread, batches of
#: 1000 queries, k=10): exact ``Flat`` search falls below 1,000 queries/s between 150k and
#: 200k vectors; below that exact search is fast enough and has no recall loss.
ANN_THRESHOLD = 150_000
#: How ``factory="auto"`` stores vectors in its IVF lists. An IVF scan reads every vector of
#: the scanned lists, and with one thread that is bound by memory traffic, not arithmetic;
#: float16 halves the bytes. Measured at 1M real-anchored 384-d vectors (``IVF4096``, one
#: thread, same nprobe, see ``benchmarks/search.py``): 1.6-2.0x the queries/s of float32
#: lists and recall@10 within 0.0001 of them (rounding moves cosines by ~1e-4, far below the
#: gaps between neighbours); 8-bit codes (``SQ8``) were no faster and lost 0.008 recall.
#: ``get`` returns the float16-rounded vectors (relative error at most 2**-11).
ANN_CODEC = "SQfp16"
#: Recall@10 against exact search that ``nprobe`` is tuned for.
TARGET_RECALL = 0.95
#: Tuning aims this much above the target: stored vectors as queries (each excluding
#: itself) overestimate recall for unseen queries (measured on the bundled data's real
#: embeddings: 0.951 on tuning queries but 0.938-0.950 on held-out real texts, and 0.960
#: against 0.946 with a 0.01 margin; see ``benchmarks/search.py``).
TUNE_MARGIN = 0.02
#: Held-out queries (the index's own vectors, each excluding itself) used to tune ``nprobe``.
TUNE_QUERIES = 1000
#: Training points per IVF list; FAISS warns below 39.
TRAIN_PER_LIST = 40


class SearchResult(NamedTuple):
    """Top-k hits for a batch of queries, best first.

    Attributes
    ----------
    ids : ndarray of object, shape (n_queries, k)
        The caller's string ids; ``None`` where fewer than ``k`` hits exist.
    scores : ndarray of float32, shape (n_queries, k)
        Inner products (cosines for normalised vectors); ``-inf`` for padding.
    """

    ids: np.ndarray
    scores: np.ndarray


class IdMap:
    """Bidirectional map between external string ids and int64 labels.

    Labels are handed out in increasing order and never reused, so a label that FAISS
    still holds after a crash can never be confused with a newer item. Ids by label are
    an object array (``None``: removed), which maps a search's labels in one step and
    costs 8 bytes a label where a dict cost about 40 (1M items: 40 MB).
    """

    def __init__(self) -> None:
        self._label_of: dict[str, int] = {}
        self._id_of = np.empty(0, dtype=object)  # by label, len >= next_label
        self.next_label = 0

    def __len__(self) -> int:
        return len(self._label_of)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._label_of

    @property
    def ids(self) -> list[str]:
        """Live ids in label order."""
        return [i for i in self._id_of.tolist() if i is not None]

    def add(self, ids: Sequence[str]) -> np.ndarray:
        """Assign new labels to ``ids``; raise ``ValueError`` if any is already present."""
        clash = [i for i in ids if i in self._label_of]
        if clash:
            raise ValueError(f"ids already in the index: {clash[:5]!r} (use update())")
        start, stop = self.next_label, self.next_label + len(ids)
        if stop > len(self._id_of):  # grown geometrically: one add at a time stays linear
            grown = np.empty(max(stop, 2 * len(self._id_of)), dtype=object)
            grown[:start] = self._id_of[:start]
            self._id_of = grown
        labels = np.arange(start, stop, dtype=np.int64)
        for item_id, label in zip(ids, labels.tolist()):
            self._label_of[item_id] = label
        self._id_of[start:stop] = list(ids)
        self.next_label = stop
        return labels

    def labels(self, ids: Iterable[str], missing: int | None = None) -> np.ndarray:
        """Labels of known ids; raise ``KeyError`` naming the first unknown one, or give
        unknown ones the label ``missing`` when it is set."""
        ids = ids if isinstance(ids, (list, tuple)) else list(ids)
        label_of = self._label_of
        if missing is not None:
            return np.array([label_of.get(i, missing) for i in ids], dtype=np.int64)
        try:
            return np.array([label_of[item_id] for item_id in ids], dtype=np.int64)
        except KeyError:
            unknown = next(i for i in ids if i not in label_of)
            raise KeyError(f"unknown id {unknown!r}") from None

    def remove(self, ids: Sequence[str]) -> np.ndarray:
        """Forget ``ids`` and return their labels; raise ``KeyError`` for unknown ids."""
        labels = self.labels(ids)
        for item_id in ids:
            del self._label_of[item_id]
        self._id_of[labels] = None
        return labels

    def lookup(self, labels: np.ndarray) -> np.ndarray:
        """Map labels to ids; ``-1`` (FAISS's "no hit") maps to ``None``."""
        labels = np.asarray(labels, dtype=np.int64)
        out = np.full(labels.shape, None, dtype=object)
        valid = (labels >= 0) & (labels < len(self._id_of))
        out[valid] = self._id_of[labels[valid]]
        return out

    def to_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(ids, labels)`` arrays for saving without pickle."""
        by_label = self._id_of
        labels = np.flatnonzero(np.array([i is not None for i in by_label.tolist()], bool))
        ids = np.array(by_label[labels].tolist(), dtype=np.str_)
        return ids, labels.astype(np.int64)

    @classmethod
    def from_arrays(cls, ids: np.ndarray, labels: np.ndarray, next_label: int) -> IdMap:
        id_map = cls()
        names, numbers = ids.tolist(), labels.tolist()
        id_map._label_of = dict(zip(names, numbers))
        id_map.next_label = int(next_label)
        labels = np.asarray(labels, dtype=np.int64)
        size = max(id_map.next_label, int(labels.max()) + 1 if len(labels) else 0)
        id_map._id_of = np.empty(size, dtype=object)
        id_map._id_of[labels] = names  # the same str objects as the dict's keys
        return id_map


class VectorIndex(ABC):
    """Inner-product index over L2-normalised float32 vectors with string ids.

    Parameters
    ----------
    dim : int
        Vector dimension.
    model_id : str, optional
        Identifier of the model that produced the vectors; saved in the manifest and
        checked on load so vectors of different models are never mixed.
    """

    backend: ClassVar[str]

    def __init__(self, dim: int, *, model_id: str | None = None) -> None:
        if int(dim) <= 0:
            raise ValueError(f"dim must be positive, got {dim!r}")
        self.dim = int(dim)
        self.model_id = model_id
        self._id_map = IdMap()
        self._read_only = False

    # -- public API ---------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._id_map)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._id_map

    @property
    def ids(self) -> list[str]:
        """All ids currently in the index, in insertion order."""
        return self._id_map.ids

    @property
    def read_only(self) -> bool:
        """True for an index loaded with ``mmap=True``: it can be searched, not changed."""
        return self._read_only

    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Add new vectors; raise ``ValueError`` for ids already present or duplicated."""
        self._check_writable()
        ids = self._check_ids(ids)
        vectors = self._check_vectors(vectors, len(ids))
        if ids:
            self._add(self._id_map.add(ids), vectors)

    def update(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Replace the vectors of existing ids; raise ``KeyError`` for unknown ids."""
        self._check_writable()
        ids = self._check_ids(ids)
        vectors = self._check_vectors(vectors, len(ids))
        if ids:
            self._update(self._id_map.labels(ids), vectors)

    def upsert(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Update the ids that exist and add the rest."""
        ids = self._check_ids(ids)
        vectors = self._check_vectors(vectors, len(ids))
        known = np.array([i in self._id_map for i in ids], dtype=bool)
        if known.any():
            self.update([i for i, k in zip(ids, known) if k], vectors[known])
        if (~known).any():
            self.add([i for i, k in zip(ids, known) if not k], vectors[~known])

    def remove(self, ids: Iterable[str]) -> None:
        """Remove ids; raise ``KeyError`` naming the first unknown one (nothing is removed)."""
        self._check_writable()
        ids = self._check_ids(list(ids))
        self._id_map.labels(ids)  # validate all before changing anything
        if ids:
            self._remove(self._id_map.remove(ids))

    def get(self, ids: Sequence[str]) -> np.ndarray:
        """Return the stored vectors of ``ids`` as float32 ``[n, dim]``."""
        labels = self._id_map.labels(ids)
        if not len(labels):
            return np.empty((0, self.dim), dtype=np.float32)
        return self._get(labels)

    @property
    def version(self) -> tuple[int, int]:
        """Changes whenever an id is added or removed: labels from :meth:`labels_of` stay
        valid while it is the same."""
        return self._id_map.next_label, len(self._id_map)

    def labels_of(self, ids: Sequence[str]) -> np.ndarray:
        """The internal labels of ``ids`` (-1: not in the index), for a caller that reads
        the vectors of the same ids again and again (:meth:`get_labelled`): a recommender
        holds its catalogue's labels instead of looking up ~500 ids per query."""
        return self._id_map.labels(ids, missing=-1)

    def get_labelled(self, labels: np.ndarray) -> np.ndarray:
        """:meth:`get` by labels from :meth:`labels_of` (``KeyError`` for -1 or a label
        no longer in the index)."""
        labels = np.asarray(labels, dtype=np.int64)
        if not len(labels):
            return np.empty((0, self.dim), dtype=np.float32)
        found = self._id_map.lookup(labels)
        if any(i is None for i in found.tolist()):
            raise KeyError(f"label {int(labels[[i is None for i in found]][0])} not in the index")
        return self._get(labels)

    def search(
        self,
        queries: np.ndarray,
        k: int = 10,
        *,
        exclude: Collection[str] | None = None,
        effort: float | None = None,
    ) -> SearchResult:
        """Return the ``k`` best ids and scores for each query.

        Parameters
        ----------
        queries : ndarray, shape (n, dim) or (dim,)
            Query vectors; a single 1-D query is treated as a batch of one.
        k : int
            Hits per query.
        exclude : collection of str, optional
            Ids never returned (items a user already interacted with); unknown ids are
            ignored.
        effort : float, optional
            Share in (0, 1] of the index's tuned search work to spend, for callers that
            measured what a faster, lower-recall search costs them (a recommender's
            candidates: :func:`profiler.ranking.tune_candidate_search`). FAISS IVF
            scans that share of its tuned ``nprobe`` lists; exact backends ignore it.
            ``None`` (default): the tuned search.

        Returns
        -------
        SearchResult
            ``ids`` and ``scores`` of shape ``(n, k)``, best first, padded with ``None``
            and ``-inf``.
        """
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        queries = self._check_vectors(queries, len(queries))
        if not isinstance(k, (int, np.integer)) or k <= 0:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        n = len(queries)
        ids = np.full((n, k), None, dtype=object)
        scores = np.full((n, k), -np.inf, dtype=np.float32)
        if not len(self) or not n:
            return SearchResult(ids, scores)
        excluded = self._excluded_labels(exclude)
        fetch = min(k + len(excluded), len(self))
        if effort is not None and not 0.0 < float(effort) <= 1.0:
            raise ValueError(f"effort must be in (0, 1], got {effort!r}")
        queries = np.ascontiguousarray(queries)
        if effort is None or float(effort) == 1.0:
            raw_scores, raw_labels = self._search(queries, fetch)
        else:
            raw_scores, raw_labels = self._search_faster(queries, fetch, float(effort))
        for row in range(n):
            keep = raw_labels[row] >= 0
            if len(excluded):
                keep &= ~np.isin(raw_labels[row], excluded)
            labels = raw_labels[row][keep][:k]
            ids[row, : len(labels)] = self._id_map.lookup(labels)
            scores[row, : len(labels)] = raw_scores[row][keep][:k]
        return SearchResult(ids, scores)

    def save(self, directory: str | Path, name: str) -> None:
        """Write ``{name}.json`` (manifest), ``{name}.ids.npy``, ``{name}.labels.npy`` and
        the backend's vector file into ``directory``, each atomically; the manifest last."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        ids, labels = self._id_map.to_arrays()
        self._save_vectors(directory / f"{name}.{self.vector_suffix}")
        save_npy(directory / f"{name}.ids.npy", ids)
        save_npy(directory / f"{name}.labels.npy", labels)
        write_json(
            directory / f"{name}.json",
            {
                "format_version": FORMAT_VERSION,
                "backend": self.backend,
                "dim": self.dim,
                "model_id": self.model_id,
                "count": len(self),
                "next_label": self._id_map.next_label,
                **self._config(),
            },
        )

    @classmethod
    def load(
        cls,
        directory: str | Path,
        name: str,
        *,
        model_id: str | None = None,
        dim: int | None = None,
        mmap: bool = False,
    ) -> VectorIndex:
        """Load an index saved with :meth:`save`.

        ``model_id`` and ``dim``, when given, must match what the index was built with,
        else ``ValueError`` says which model built it. With ``mmap=True`` the vectors are
        memory-mapped from the file instead of read into memory (the OS pages them in on
        demand and shares them between processes); such an index is read-only, and
        ``add``/``update``/``remove`` raise ``ValueError``.
        """
        directory = Path(directory)
        manifest = read_json(directory / f"{name}.json")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{directory / name}.json: index format {manifest.get('format_version')!r}, "
                f"this library reads format {FORMAT_VERSION}"
            )
        if dim is not None and manifest["dim"] != dim:
            raise ValueError(
                f"{directory / name}: index holds {manifest['dim']}-d vectors from model "
                f"{manifest['model_id']!r}, but {dim}-d vectors were expected"
            )
        if model_id is not None and manifest["model_id"] != model_id:
            raise ValueError(
                f"{directory / name}: index was built with model {manifest['model_id']!r}, "
                f"not {model_id!r}; rebuild it with the same model"
            )
        backend = _backend(manifest["backend"])
        if backend is None or (cls is not VectorIndex and backend is not cls):
            raise ValueError(f"{directory / name}: unexpected backend {manifest['backend']!r}")
        index = backend._from_manifest(manifest)
        index._id_map = IdMap.from_arrays(
            np.load(directory / f"{name}.ids.npy", allow_pickle=False),
            np.load(directory / f"{name}.labels.npy", allow_pickle=False),
            manifest["next_label"],
        )
        index._load_vectors(directory / f"{name}.{backend.vector_suffix}", index._id_map, mmap=mmap)
        index._read_only = mmap
        if len(index) != manifest["count"]:
            raise ValueError(
                f"{directory / name}: manifest says {manifest['count']} vectors, "
                f"files hold {len(index)}; the index is damaged, rebuild it"
            )
        return index

    # -- validation ---------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self._read_only:
            raise ValueError(
                "this index was loaded with mmap=True and is read-only; "
                "load it without mmap to change it"
            )

    def _check_ids(self, ids: Sequence[str]) -> list[str]:
        if isinstance(ids, str):
            raise TypeError("ids must be a sequence of str, not a single str")
        ids = list(ids)
        for position, item_id in enumerate(ids):
            if not isinstance(item_id, str) or not item_id:
                raise ValueError(f"id at position {position} must be a non-empty str: {item_id!r}")
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            dup = next(i for i in ids if i in seen or seen.add(i))
            raise ValueError(f"duplicate id {dup!r} in one call")
        return ids

    def _check_vectors(self, vectors: np.ndarray, n: int) -> np.ndarray:
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape ({n}, {self.dim}), got {vectors.shape}")
        if len(vectors) != n:
            raise ValueError(f"got {n} ids but {len(vectors)} vectors")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if not np.isfinite(vectors).all():
            bad = int(np.flatnonzero(~np.isfinite(vectors).all(axis=1))[0])
            raise ValueError(f"vector at position {bad} has NaN or infinite values")
        return vectors

    def _excluded_labels(self, exclude: Collection[str] | None) -> np.ndarray:
        if not exclude:
            return np.empty(0, dtype=np.int64)
        if isinstance(exclude, str):
            raise TypeError("exclude must be a collection of ids, not a single str")
        return self._id_map.labels([i for i in set(exclude) if i in self._id_map])

    # -- backend hooks ------------------------------------------------------------------

    vector_suffix: ClassVar[str]

    def _config(self) -> dict:
        return {}

    @classmethod
    def _from_manifest(cls, manifest: dict) -> VectorIndex:
        return cls(manifest["dim"], model_id=manifest["model_id"])

    @abstractmethod
    def _add(self, labels: np.ndarray, vectors: np.ndarray) -> None: ...

    @abstractmethod
    def _update(self, labels: np.ndarray, vectors: np.ndarray) -> None: ...

    @abstractmethod
    def _remove(self, labels: np.ndarray) -> None: ...

    @abstractmethod
    def _get(self, labels: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(scores, labels)`` of shape ``(n, k)``, best first, label -1 = none."""

    @abstractmethod
    def _save_vectors(self, path: Path) -> None: ...

    def _search_faster(
        self, queries: np.ndarray, k: int, effort: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_search` with a share ``effort`` of the tuned work; exact: the same."""
        return self._search(queries, k)

    @abstractmethod
    def _load_vectors(self, path: Path, id_map: IdMap, *, mmap: bool = False) -> None: ...


class ExactIndex(VectorIndex):
    """Brute-force inner-product search in numpy: the reference the other backends match."""

    backend = "exact"
    vector_suffix = "npy"

    def __init__(self, dim: int, *, model_id: str | None = None) -> None:
        super().__init__(dim, model_id=model_id)
        self._vectors = np.empty((0, self.dim), dtype=np.float32)
        self._labels = np.empty(0, dtype=np.int64)
        self._row: dict[int, int] = {}

    def _add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        start = len(self._labels)
        self._vectors = np.concatenate([self._vectors, vectors])
        self._labels = np.concatenate([self._labels, labels])
        self._row.update(zip(labels.tolist(), range(start, start + len(labels))))

    def _update(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        self._vectors[[self._row[label] for label in labels.tolist()]] = vectors

    def _remove(self, labels: np.ndarray) -> None:
        keep = ~np.isin(self._labels, labels)
        self._vectors = self._vectors[keep]
        self._labels = self._labels[keep]
        self._row = {label: row for row, label in enumerate(self._labels.tolist())}

    def _get(self, labels: np.ndarray) -> np.ndarray:
        return self._vectors[[self._row[label] for label in labels.tolist()]].copy()

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        # Score in blocks of queries so the score matrix stays under ~256 MB.
        block = max(1, (1 << 26) // max(len(self._labels), 1))
        parts = [
            self._search_block(queries[i : i + block], k) for i in range(0, len(queries), block)
        ]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _search_block(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores = queries @ self._vectors.T
        if k < scores.shape[1]:
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        else:
            top = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        return np.take_along_axis(top_scores, order, axis=1), self._labels[top]

    def _save_vectors(self, path: Path) -> None:
        order = np.argsort(self._labels)
        save_npy(path, self._vectors[order])

    def _load_vectors(self, path: Path, id_map: IdMap, *, mmap: bool = False) -> None:
        vectors = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
        _, labels = id_map.to_arrays()
        if vectors.shape != (len(labels), self.dim):
            raise ValueError(f"{path}: expected ({len(labels)}, {self.dim}), got {vectors.shape}")
        self._vectors = vectors if mmap else np.ascontiguousarray(vectors, dtype=np.float32)
        self._labels = labels
        self._row = {label: row for row, label in enumerate(labels.tolist())}


def ivf_lists(n: int) -> int:
    """IVF list count for ``n`` vectors: the power of two nearest ``4 * sqrt(n)``, kept to at
    most ``n / 16`` so every list gets a few training points (1M -> 4096, 150k -> 2048)."""
    target = 4.0 * np.sqrt(max(n, 1))
    nlist = 1 << max(0, round(np.log2(target)))
    while nlist > 1 and nlist * 16 > n:
        nlist //= 2
    return nlist


class FaissIndex(VectorIndex):
    """FAISS inner-product index: exact ``Flat`` for small sizes, IVF above a threshold.

    New vectors always go straight into the current structure, so ``search`` sees them at
    once. :meth:`optimize` rebuilds the structure for the current size: ``Flat`` (wrapped in
    ``IndexIDMap2`` for stable labels) or an IVF index trained on a seeded sample of the
    stored vectors, storing the labels itself with a hash-table direct map so that
    ``remove``, ``update`` and ``get`` keep working. ``"auto"`` stores the vectors of its
    IVF lists as float16 (:data:`ANN_CODEC`), so there ``get`` returns them rounded to
    float16 (relative error at most ``2**-11``) and scores carry errors of ~1e-4.
    It then tunes ``nprobe`` (lists scanned per query) to the smallest value that reaches
    ``target_recall + TUNE_MARGIN`` recall@10 against exact search, using ``TUNE_QUERIES``
    stored vectors as queries (each excluding itself).
    :meth:`save` calls :meth:`optimize` first when :attr:`needs_optimize`.

    When FAISS sees a GPU (``faiss.get_num_gpus() > 0``, the ``faiss-gpu`` package) and
    ``gpu`` is not ``False``, searches run on a GPU copy of the index, made on the first
    search after a change; the CPU index stays the one that is changed and saved, so saved
    files load on machines without a GPU.

    Parameters
    ----------
    dim : int
        Vector dimension.
    model_id : str, optional
        Model that produced the vectors (checked on load).
    factory : str
        ``"auto"`` (default): ``Flat`` below ``ann_threshold`` vectors, else
        ``IVF{nlist},SQfp16`` (float16 lists, see :data:`ANN_CODEC`) with ``nlist`` from
        :func:`ivf_lists`. ``"Flat"``: always exact.
        Any other FAISS factory string must describe an IVF index (``"IVF1024,Flat"``,
        ``"IVF4096_HNSW32,Flat"``, ``"IVF1024,SQ8"``...); it holds a ``Flat`` index until
        :meth:`optimize` trains it. HNSW alone is refused: FAISS cannot remove from it.
    ann_threshold : int
        Size from which ``"auto"`` builds an IVF index (default :data:`ANN_THRESHOLD`).
    target_recall : float
        Recall@10 against exact search that ``nprobe`` is tuned for.
    nprobe : int, optional
        Fixed ``nprobe`` instead of tuning it.
    seed : int
        Seed of the training sample and the tuning queries.
    gpu : bool, optional
        ``None``: search on GPU when FAISS has one; ``False``: never; ``True``: require one.

    Attributes
    ----------
    structure_ : str
        Factory string of the structure currently built (``"Flat"``, ``"IVF4096,SQfp16"``).
    nprobe_ : int or None
        ``nprobe`` in use for IVF structures.
    tuned_recall_ : float or None
        Recall@10 the tuning queries reached at ``nprobe_``.
    trained_size_ : int or None
        Number of vectors when the IVF structure was trained.

    Examples
    --------
    >>> index = FaissIndex(384, model_id="all-MiniLM-L6-v2")  # doctest: +SKIP
    >>> index.add(ids, vectors)  # doctest: +SKIP
    >>> index.optimize().structure_  # doctest: +SKIP
    'IVF4096,SQfp16'
    """

    backend = "faiss"
    vector_suffix = "faiss"

    def __init__(
        self,
        dim: int,
        *,
        model_id: str | None = None,
        factory: str = "auto",
        ann_threshold: int = ANN_THRESHOLD,
        target_recall: float = TARGET_RECALL,
        nprobe: int | None = None,
        seed: int = 0,
        gpu: bool | None = None,
    ) -> None:
        super().__init__(dim, model_id=model_id)
        import faiss

        if not isinstance(factory, str) or not factory.strip():
            raise ValueError(f"factory must be a non-empty str, got {factory!r}")
        if factory not in ("auto", "Flat"):
            try:
                probe = faiss.index_factory(self.dim, factory, faiss.METRIC_INNER_PRODUCT)
            except RuntimeError as error:
                raise ValueError(f"invalid FAISS factory {factory!r}: {error}") from None
            try:
                faiss.extract_index_ivf(probe)
            except RuntimeError:
                raise ValueError(
                    f"factory {factory!r} is not an IVF index; FaissIndex needs removal, "
                    "so it takes 'auto', 'Flat' or an IVF factory such as 'IVF1024,Flat'"
                ) from None
        if int(ann_threshold) < 1:
            raise ValueError(f"ann_threshold must be positive, got {ann_threshold!r}")
        if not 0.0 < float(target_recall) <= 1.0:
            raise ValueError(f"target_recall must be in (0, 1], got {target_recall!r}")
        if nprobe is not None and int(nprobe) < 1:
            raise ValueError(f"nprobe must be positive, got {nprobe!r}")
        if gpu and faiss_gpus() == 0:
            raise ValueError("gpu=True but FAISS sees no GPU (install faiss-gpu)")
        self.factory = factory
        self.ann_threshold = int(ann_threshold)
        self.target_recall = float(target_recall)
        self.nprobe = None if nprobe is None else int(nprobe)
        self.seed = int(seed)
        self.gpu = gpu
        self.structure_ = "Flat"
        self.nprobe_: int | None = None
        self.tuned_recall_: float | None = None
        self.trained_size_: int | None = None
        self._index = self._new_flat()
        self._gpu_index = None

    # -- size-based structure -----------------------------------------------------------

    def target_structure(self, n: int | None = None) -> str:
        """Factory string :meth:`optimize` would build for ``n`` vectors (default: now)."""
        n = len(self) if n is None else int(n)
        if self.factory == "Flat" or (self.factory == "auto" and n < self.ann_threshold):
            return "Flat"
        if self.factory == "auto":
            return f"IVF{ivf_lists(n)},{ANN_CODEC}"
        return self.factory

    @property
    def needs_optimize(self) -> bool:
        """Whether :meth:`optimize` would change the structure: the size crossed the
        threshold, or an IVF index has grown four-fold since it was trained."""
        target = self.target_structure()
        if target == "Flat" or self.structure_ == "Flat":
            return target != self.structure_
        grown = self.trained_size_ is not None and len(self) > 4 * self.trained_size_
        return self.factory == "auto" and grown

    def optimize(self) -> FaissIndex:
        """Rebuild the structure for the current size, train it and tune ``nprobe``.

        Exact ``Flat`` below the threshold; else an IVF index trained on a seeded sample of
        ``TRAIN_PER_LIST`` vectors per list, with every stored vector re-added under its
        label, and ``nprobe`` tuned (see the class docs). Vectors are read back from the
        current structure, so a lossy factory (``SQ8``, ``PQ``) re-encodes approximations;
        ``"auto"``'s float16 codes are absolute (not residuals from the list centroid), so
        re-encoding them is lossless and repeated ``optimize`` calls lose nothing more.

        Returns
        -------
        FaissIndex
            ``self``.
        """
        import faiss

        self._check_writable()
        target = self.target_structure()
        _, labels = self._id_map.to_arrays()
        vectors = self._get(labels) if len(labels) else np.empty((0, self.dim), np.float32)
        self._gpu_index = None
        if target == "Flat":
            self._index = self._new_flat()
            self._index.add_with_ids(vectors, labels)
            self.structure_, self.nprobe_, self.tuned_recall_, self.trained_size_ = (
                "Flat",
                None,
                None,
                None,
            )
            return self
        index = faiss.index_factory(self.dim, target, faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.extract_index_ivf(index)
        if self.factory == "auto":
            ivf.by_residual = False  # float16 of the vector itself: re-encoding is exact
        if len(vectors) < ivf.nlist:
            raise ValueError(
                f"{target} needs at least {ivf.nlist} vectors to train, the index holds "
                f"{len(vectors)}"
            )
        rng = np.random.default_rng(self.seed)
        n_train = min(len(vectors), TRAIN_PER_LIST * ivf.nlist)
        sample = vectors[np.sort(rng.choice(len(vectors), n_train, replace=False))]
        logger.info("training %s on %d of %d vectors", target, n_train, len(vectors))
        index.train(sample)
        del sample
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        index.add_with_ids(vectors, labels)
        self._index = index
        self.structure_ = target
        self.trained_size_ = len(vectors)
        if self.nprobe is not None:
            self.nprobe_, self.tuned_recall_ = min(self.nprobe, ivf.nlist), None
        else:
            self.nprobe_, self.tuned_recall_ = self._tune_nprobe(vectors, labels, rng)
        logger.info(
            "%s over %d vectors: nprobe %d (tuning recall@10 %s)",
            target,
            len(vectors),
            self.nprobe_,
            self.tuned_recall_,
        )
        return self

    def empty_like(self) -> FaissIndex:
        """An empty index with this one's settings and trained structure (IVF centroids,
        ``nprobe``): filling it with vectors of the same kind needs no training or tuning.

        Ranker training fits several states of the same users; each copying the serving
        user index's structure saved its IVF training and ``nprobe`` tuning."""
        import faiss

        # the settings and tuned state as a saved index records them
        twin = self._from_manifest({"dim": self.dim, "model_id": self.model_id, **self._config()})
        twin.gpu = self.gpu
        if self.structure_ != "Flat":
            twin._index = faiss.clone_index(self._index)
            twin._index.reset()
        return twin

    def _tune_nprobe(
        self, vectors: np.ndarray, labels: np.ndarray, rng: np.random.Generator, k: int = 10
    ) -> tuple[int, float]:
        """Smallest ``nprobe`` whose recall@k on held-out stored vectors reaches the target.

        Each query is a stored vector; its own label is dropped from both the exact and the
        IVF results, so the query is held out of its own ground truth.

        A true neighbour is found once the query scans the list it was added to, so the
        recall at every ``nprobe`` follows from one coarse search: the rank of each true
        neighbour's list in its query's probe order. The smallest ``nprobe`` this predicts
        is then checked with real searches (lossy codes, near-ties or an approximate coarse
        quantizer can lose a few neighbours), growing by 2% until it passes. Measured at
        200k random vectors: predicted and real recall agreed to 0.001 from nprobe 50 to
        1500. Doubling and bisection with real searches took 4 minutes at 1M benchmark
        vectors (nprobe 557 of 4096: twenty searches of 1000 queries)."""
        import faiss

        ivf = faiss.extract_index_ivf(self._index)
        nlist = ivf.nlist
        rows = rng.choice(len(vectors), min(len(vectors), TUNE_QUERIES), replace=False)
        queries = np.ascontiguousarray(vectors[rows])
        fetch = min(k + 1, len(vectors))
        _, exact_rows = faiss.knn(queries, vectors, fetch, metric=faiss.METRIC_INNER_PRODUCT)
        truth_rows = _drop_self(exact_rows, rows, k)  # rows of the true neighbours, -1: none
        truth = np.where(truth_rows >= 0, labels[truth_rows], -1)

        def recall(nprobe: int) -> float:
            params = faiss.SearchParametersIVF(nprobe=nprobe)
            _, found = self._index.search(queries, fetch, params=params)
            return _recall(_drop_self(found, labels[rows], k), truth)

        goal = min(1.0, self.target_recall + TUNE_MARGIN)
        nprobe = min(
            nlist, max(1, _predicted_nprobe(ivf.quantizer, vectors, queries, truth_rows, goal))
        )
        score = recall(nprobe)
        while score < goal and nprobe < nlist:
            nprobe = min(nlist, int(np.ceil(nprobe * 1.02)))
            score = recall(nprobe)
        return nprobe, float(score)

    def _new_flat(self):
        import faiss

        return faiss.index_factory(self.dim, "IDMap2,Flat", faiss.METRIC_INNER_PRODUCT)

    # -- persistence --------------------------------------------------------------------

    def save(self, directory: str | Path, name: str) -> None:
        """Like :meth:`VectorIndex.save`, calling :meth:`optimize` first when
        :attr:`needs_optimize`, so a saved index is always built for its size."""
        if self.needs_optimize and not self._read_only:
            self.optimize()
        super().save(directory, name)

    def _config(self) -> dict:
        return {
            "factory": self.factory,
            "ann_threshold": self.ann_threshold,
            "target_recall": self.target_recall,
            "nprobe": self.nprobe,
            "seed": self.seed,
            "structure": self.structure_,
            "nprobe_tuned": self.nprobe_,
            "tuned_recall": self.tuned_recall_,
            "trained_size": self.trained_size_,
        }

    @classmethod
    def _from_manifest(cls, manifest: dict) -> FaissIndex:
        # Indexes saved before size-based selection hold only "factory" ("Flat").
        index = cls(
            manifest["dim"],
            model_id=manifest["model_id"],
            factory=manifest["factory"],
            ann_threshold=manifest.get("ann_threshold", ANN_THRESHOLD),
            target_recall=manifest.get("target_recall", TARGET_RECALL),
            nprobe=manifest.get("nprobe"),
            seed=manifest.get("seed", 0),
        )
        index.structure_ = manifest.get("structure", "Flat")
        index.nprobe_ = manifest.get("nprobe_tuned")
        index.tuned_recall_ = manifest.get("tuned_recall")
        index.trained_size_ = manifest.get("trained_size")
        return index

    def _save_vectors(self, path: Path) -> None:
        import faiss

        with atomic_path(path) as tmp:
            faiss.write_index(self._index, str(tmp))

    def _load_vectors(self, path: Path, id_map: IdMap, *, mmap: bool = False) -> None:
        import faiss

        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        # IO_FLAG_MMAP_IFC maps the flat codes and the IVF lists from the file instead of
        # copying them; FAISS aborts on writes to such an index, hence the read-only guard.
        flags = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY if mmap else 0
        self._index = faiss.read_index(str(path), flags)
        self._gpu_index = None
        if self._index.d != self.dim or self._index.ntotal != len(id_map):
            raise ValueError(
                f"{path}: holds {self._index.ntotal} vectors of dim {self._index.d}, "
                f"manifest says {len(id_map)} of dim {self.dim}"
            )
        is_ivf = self.structure_ != "Flat"
        if is_ivf and self.nprobe_ is None:
            raise ValueError(f"{path}: IVF index without a tuned nprobe in its manifest")

    # -- backend hooks ------------------------------------------------------------------

    def _add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        self._gpu_index = None
        self._index.add_with_ids(vectors, labels)

    def _update(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        self._gpu_index = None
        self._index.remove_ids(labels)
        self._index.add_with_ids(vectors, labels)

    def _remove(self, labels: np.ndarray) -> None:
        self._gpu_index = None
        removed = self._index.remove_ids(labels)
        if removed != len(labels):
            raise RuntimeError(f"FAISS removed {removed} of {len(labels)} vectors")

    def _get(self, labels: np.ndarray) -> np.ndarray:
        return self._index.reconstruct_batch(np.ascontiguousarray(labels, dtype=np.int64))

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self._search_at(queries, k, self.nprobe_)

    def _search_faster(
        self, queries: np.ndarray, k: int, effort: float
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.structure_ == "Flat":
            return self._search(queries, k)
        return self._search_at(queries, k, max(1, int(np.ceil(self.nprobe_ * effort))))

    def _search_at(
        self, queries: np.ndarray, k: int, nprobe: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.structure_ == "Flat":
            return self._searcher().search(queries, k)
        nlist = self._nlist()
        scores, labels = self._search_ivf(queries, k, nprobe)
        # An IVF search returns fewer than k hits when the scanned lists hold fewer than k
        # items; rescan those queries with more lists so padding only ever means that the
        # index holds fewer than k items, as with exact search.
        short = np.flatnonzero((labels < 0).any(axis=1))
        while len(short) and nprobe < nlist:
            nprobe = min(2 * nprobe, nlist)
            scores[short], labels[short] = self._search_ivf(queries[short], k, nprobe)
            short = short[(labels[short] < 0).any(axis=1)]
        return scores, labels

    def _search_ivf(
        self, queries: np.ndarray, k: int, nprobe: int
    ) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        searcher = self._searcher()
        if searcher is self._index:
            return searcher.search(queries, k, params=faiss.SearchParametersIVF(nprobe=nprobe))
        faiss.GpuParameterSpace().set_index_parameter(searcher, "nprobe", nprobe)
        return searcher.search(queries, k)

    def _nlist(self) -> int:
        import faiss

        return faiss.extract_index_ivf(self._index).nlist

    def _searcher(self):
        """The index to search: a GPU copy when a GPU is used, else the CPU index."""
        if self.gpu is False or self._read_only or faiss_gpus() == 0:
            return self._index
        if self._gpu_index is None:
            import faiss

            self._gpu_index = faiss.index_cpu_to_gpu(_gpu_resources(), 0, self._index)
        return self._gpu_index


def faiss_gpus() -> int:
    """GPUs FAISS can use: 0 with ``faiss-cpu``."""
    import faiss

    get_num_gpus = getattr(faiss, "get_num_gpus", None)
    return int(get_num_gpus()) if get_num_gpus is not None else 0


_GPU_RESOURCES = None


def _gpu_resources():
    """One ``StandardGpuResources`` per process: each holds scratch memory on the GPU."""
    global _GPU_RESOURCES
    if _GPU_RESOURCES is None:
        import faiss

        _GPU_RESOURCES = faiss.StandardGpuResources()
    return _GPU_RESOURCES


def _predicted_nprobe(
    quantizer, vectors: np.ndarray, queries: np.ndarray, truth_rows: np.ndarray, goal: float
) -> int:
    """Smallest ``nprobe`` at which the share of true neighbours (``truth_rows``: rows of
    ``vectors`` per query, ``-1`` = none) whose IVF list is among their query's first
    ``nprobe`` probed lists reaches ``goal``."""
    nlist = quantizer.ntotal
    _, order = quantizer.search(queries, nlist)  # every list, in probe order
    rank = np.full((len(queries), nlist), nlist, dtype=np.int64)
    rows = np.repeat(np.arange(len(queries)), nlist)
    valid = order.ravel() >= 0
    rank[rows[valid], order.ravel()[valid]] = np.tile(np.arange(nlist), len(queries))[valid]
    wanted = truth_rows >= 0
    if not wanted.any():
        return 1
    at = truth_rows[wanted]
    _, lists = quantizer.search(np.ascontiguousarray(vectors[at]), 1)  # where add put them
    needed = rank[np.nonzero(wanted)[0], lists[:, 0]] + 1
    return int(np.ceil(np.quantile(needed, goal, method="inverted_cdf")))


def _drop_self(found: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """Each row of ``found`` without its own label (or its last entry), cut to ``k``."""
    out = np.empty((len(found), k), dtype=np.int64)
    for row, (labels, label) in enumerate(zip(found, own.tolist())):
        keep = labels[labels != label]
        out[row] = (
            keep[:k] if len(keep) >= k else np.pad(keep, (0, k - len(keep)), constant_values=-1)
        )
    return out


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row's true labels (``-1`` = none) that ``found`` also holds."""
    hits = total = 0
    for f, t in zip(found.tolist(), truth.tolist()):
        t = {label for label in t if label >= 0}
        hits += len(t & set(f))
        total += len(t)
    return hits / total if total else 1.0


_BACKENDS: dict[str, type[VectorIndex]] = {"exact": ExactIndex, "faiss": FaissIndex}
#: Backends in modules of their own, imported when a saved index names them.
_OPTIONAL = {"milvus": "profiler.milvus"}


def register_backend(backend: type[VectorIndex]) -> None:
    """Let :func:`load_index` load indexes saved by ``backend`` (by its ``backend`` name)."""
    _BACKENDS[backend.backend] = backend


def _backend(name: str) -> type[VectorIndex] | None:
    if name not in _BACKENDS and name in _OPTIONAL:
        import importlib

        importlib.import_module(_OPTIONAL[name])
    return _BACKENDS.get(name)


def load_index(
    directory: str | Path,
    name: str,
    *,
    model_id: str | None = None,
    dim: int | None = None,
    mmap: bool = False,
) -> VectorIndex:
    """Load an index of whatever backend its manifest names (see :meth:`VectorIndex.load`)."""
    return VectorIndex.load(directory, name, model_id=model_id, dim=dim, mmap=mmap)
