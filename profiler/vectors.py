"""Vector indexes with stable string ids: an exact numpy reference and a FAISS backend.

Both backends implement :class:`VectorIndex`, so tests run one contract suite against
each and the exact index is the oracle for the fast one, as in implicit and FAISS.

Vectors are float32 ``[n, d]`` and L2-normalised by contract, so the inner product is the
cosine. Ids are the caller's strings; :class:`IdMap` turns them into the int64 labels that
FAISS stores and back. Results are padded with ``None`` ids and ``-inf`` scores when fewer
than ``k`` items exist.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import ClassVar, NamedTuple

import numpy as np

from profiler.storage import atomic_path, read_json, save_npy, write_json

__all__ = ["ExactIndex", "FaissIndex", "IdMap", "SearchResult", "VectorIndex", "load_index"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


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
    still holds after a crash can never be confused with a newer item.
    """

    def __init__(self) -> None:
        self._label_of: dict[str, int] = {}
        self._id_of: dict[int, str] = {}
        self.next_label = 0

    def __len__(self) -> int:
        return len(self._label_of)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._label_of

    @property
    def ids(self) -> list[str]:
        """Live ids in label order."""
        return [self._id_of[label] for label in sorted(self._id_of)]

    def add(self, ids: Sequence[str]) -> np.ndarray:
        """Assign new labels to ``ids``; raise ``ValueError`` if any is already present."""
        clash = [i for i in ids if i in self._label_of]
        if clash:
            raise ValueError(f"ids already in the index: {clash[:5]!r} (use update())")
        labels = np.arange(self.next_label, self.next_label + len(ids), dtype=np.int64)
        for item_id, label in zip(ids, labels.tolist()):
            self._label_of[item_id] = label
            self._id_of[label] = item_id
        self.next_label += len(ids)
        return labels

    def labels(self, ids: Iterable[str]) -> np.ndarray:
        """Labels of known ids; raise ``KeyError`` naming the first unknown one."""
        out = []
        for item_id in ids:
            try:
                out.append(self._label_of[item_id])
            except KeyError:
                raise KeyError(f"unknown id {item_id!r}") from None
        return np.asarray(out, dtype=np.int64)

    def remove(self, ids: Sequence[str]) -> np.ndarray:
        """Forget ``ids`` and return their labels; raise ``KeyError`` for unknown ids."""
        labels = self.labels(ids)
        for item_id, label in zip(ids, labels.tolist()):
            del self._label_of[item_id]
            del self._id_of[label]
        return labels

    def lookup(self, labels: np.ndarray) -> np.ndarray:
        """Map labels to ids; ``-1`` (FAISS's "no hit") maps to ``None``."""
        get = self._id_of.get
        return np.array([get(int(label)) for label in labels.ravel()], dtype=object).reshape(
            labels.shape
        )

    def to_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(ids, labels)`` arrays for saving without pickle."""
        labels = np.array(sorted(self._id_of), dtype=np.int64)
        ids = np.array([self._id_of[label] for label in labels.tolist()], dtype=np.str_)
        return ids, labels

    @classmethod
    def from_arrays(cls, ids: np.ndarray, labels: np.ndarray, next_label: int) -> IdMap:
        id_map = cls()
        id_map._label_of = dict(zip(ids.tolist(), labels.tolist()))
        id_map._id_of = {label: item_id for item_id, label in id_map._label_of.items()}
        id_map.next_label = int(next_label)
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

    # -- public API ---------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._id_map)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._id_map

    @property
    def ids(self) -> list[str]:
        """All ids currently in the index, in insertion order."""
        return self._id_map.ids

    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Add new vectors; raise ``ValueError`` for ids already present or duplicated."""
        ids = self._check_ids(ids)
        vectors = self._check_vectors(vectors, len(ids))
        if ids:
            self._add(self._id_map.add(ids), vectors)

    def update(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Replace the vectors of existing ids; raise ``KeyError`` for unknown ids."""
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

    def search(
        self, queries: np.ndarray, k: int = 10, *, exclude: Collection[str] | None = None
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
        raw_scores, raw_labels = self._search(np.ascontiguousarray(queries), fetch)
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
    ) -> VectorIndex:
        """Load an index saved with :meth:`save`.

        ``model_id`` and ``dim``, when given, must match what the index was built with,
        else ``ValueError`` says which model built it.
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
        backend = _BACKENDS.get(manifest["backend"])
        if backend is None or (cls is not VectorIndex and backend is not cls):
            raise ValueError(f"{directory / name}: unexpected backend {manifest['backend']!r}")
        index = backend._from_manifest(manifest)
        index._id_map = IdMap.from_arrays(
            np.load(directory / f"{name}.ids.npy", allow_pickle=False),
            np.load(directory / f"{name}.labels.npy", allow_pickle=False),
            manifest["next_label"],
        )
        index._load_vectors(directory / f"{name}.{backend.vector_suffix}", index._id_map)
        if len(index) != manifest["count"]:
            raise ValueError(
                f"{directory / name}: manifest says {manifest['count']} vectors, "
                f"files hold {len(index)}; the index is damaged, rebuild it"
            )
        return index

    # -- validation ---------------------------------------------------------------------

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

    @abstractmethod
    def _load_vectors(self, path: Path, id_map: IdMap) -> None: ...


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

    def _load_vectors(self, path: Path, id_map: IdMap) -> None:
        vectors = np.load(path, allow_pickle=False)
        _, labels = id_map.to_arrays()
        if vectors.shape != (len(labels), self.dim):
            raise ValueError(f"{path}: expected ({len(labels)}, {self.dim}), got {vectors.shape}")
        self._vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self._labels = labels
        self._row = {label: row for row, label in enumerate(labels.tolist())}


class FaissIndex(VectorIndex):
    """FAISS inner-product index wrapped in ``IndexIDMap2`` for stable int64 labels.

    Parameters
    ----------
    dim : int
        Vector dimension.
    model_id : str, optional
        Model that produced the vectors (checked on load).
    factory : str
        FAISS factory string for the inner index; ``"Flat"`` is exact search.
    """

    backend = "faiss"
    vector_suffix = "faiss"

    def __init__(self, dim: int, *, model_id: str | None = None, factory: str = "Flat") -> None:
        super().__init__(dim, model_id=model_id)
        import faiss

        self.factory = factory
        self._index = faiss.index_factory(self.dim, f"IDMap2,{factory}", faiss.METRIC_INNER_PRODUCT)

    def _config(self) -> dict:
        return {"factory": self.factory}

    @classmethod
    def _from_manifest(cls, manifest: dict) -> FaissIndex:
        return cls(manifest["dim"], model_id=manifest["model_id"], factory=manifest["factory"])

    def _add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        self._index.add_with_ids(vectors, labels)

    def _update(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        self._index.remove_ids(labels)
        self._index.add_with_ids(vectors, labels)

    def _remove(self, labels: np.ndarray) -> None:
        removed = self._index.remove_ids(labels)
        if removed != len(labels):
            raise RuntimeError(f"FAISS removed {removed} of {len(labels)} vectors")

    def _get(self, labels: np.ndarray) -> np.ndarray:
        return np.vstack([self._index.reconstruct(int(label)) for label in labels])

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self._index.search(queries, k)

    def _save_vectors(self, path: Path) -> None:
        import faiss

        with atomic_path(path) as tmp:
            faiss.write_index(self._index, str(tmp))

    def _load_vectors(self, path: Path, id_map: IdMap) -> None:
        import faiss

        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        self._index = faiss.read_index(str(path))
        if self._index.d != self.dim or self._index.ntotal != len(id_map):
            raise ValueError(
                f"{path}: holds {self._index.ntotal} vectors of dim {self._index.d}, "
                f"manifest says {len(id_map)} of dim {self.dim}"
            )


_BACKENDS: dict[str, type[VectorIndex]] = {"exact": ExactIndex, "faiss": FaissIndex}


def load_index(
    directory: str | Path, name: str, *, model_id: str | None = None, dim: int | None = None
) -> VectorIndex:
    """Load an index of whatever backend its manifest names."""
    return VectorIndex.load(directory, name, model_id=model_id, dim=dim)
