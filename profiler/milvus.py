"""A :class:`~profiler.vectors.VectorIndex` backend on Milvus, for catalogues beyond one
machine's memory.

The same code serves an embedded Milvus Lite file (``milvus:path/to/items.db``, what the
tests use) and a Milvus cluster (``milvus://host:19530``, or ``milvus+https://host`` with
``MILVUS_TOKEN`` in the environment). Vectors live in one collection with the index's
int64 labels as primary keys; the workspace keeps the string-id map, as for FAISS.

What changes against FAISS:

- The vectors are outside the workspace directory. ``save`` writes a small JSON file
  naming the server and the collection; generations version that file and the id map, not
  the collection. ``profiler build --index milvus:...`` names each collection by a digest
  of its ids and vectors, so a rebuild of the same catalogue reuses it, and a changed
  catalogue gets a new one while readers of the previous generation keep theirs.
- Search is Milvus's: the index type (``AUTOINDEX`` by default; ``FLAT`` in Milvus Lite)
  decides exactness, and ``k`` plus excluded ids may not pass Milvus's top-k limit.
- Every call is a round trip: batch queries where you can.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from pathlib import Path
from typing import ClassVar

import numpy as np

from profiler.storage import read_json, write_json
from profiler.vectors import IdMap, VectorIndex, register_backend

__all__ = ["MilvusIndex", "collection_name", "parse_spec"]

#: Milvus's largest ``limit`` for one search.
MAX_TOPK = 16_384
#: Rows per insert or get: 384-d float32 rows stay well under gRPC's 64 MB message limit.
BATCH = 4096
SCHEME = re.compile(r"^milvus(\+https?)?:(//)?(.+)$")


def parse_spec(spec: str) -> str | None:
    """The pymilvus URI of an ``--index`` value: ``None`` for ``faiss``; for
    ``milvus://host:port`` an ``http://`` URI, for ``milvus+https://host`` an ``https://``
    one, for ``milvus:path.db`` (or ``milvus:///abs/path.db``) a Milvus Lite file."""
    text = str(spec).strip()
    if text in ("", "faiss"):
        return None
    found = SCHEME.match(text)
    if not found:
        raise ValueError(
            f"--index {text!r}: expected faiss, milvus://HOST:PORT, milvus+https://HOST "
            "or milvus:FILE.db (Milvus Lite)"
        )
    transport, slashes, rest = found.groups()
    if rest.endswith(".db"):
        return str(Path(("/" if slashes and rest.startswith("/") else "") + rest).resolve())
    if transport or slashes:
        return f"{(transport or '+http')[1:]}://{rest}"
    raise ValueError(f"--index {text!r}: a Milvus Lite file must end in .db")


def collection_name(prefix: str, ids: list[str], vectors: np.ndarray) -> str:
    """A collection name that changes exactly when the ids or vectors do."""
    digest = hashlib.blake2b(digest_size=10)
    digest.update("\x1f".join(ids).encode())
    digest.update(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
    clean = re.sub(r"[^A-Za-z0-9_]", "_", prefix)[:100] or "items"
    return f"{clean}_{digest.hexdigest()}"


def _client(uri: str):
    try:
        from pymilvus import MilvusClient
    except ImportError as exc:
        raise RuntimeError(
            "the Milvus backend needs pymilvus (and milvus-lite for a local .db file): "
            "pip install 'interest-profiler[milvus]'"
        ) from exc
    token = os.environ.get("MILVUS_TOKEN", "")
    return MilvusClient(uri=uri, token=token) if token else MilvusClient(uri=uri)


class MilvusIndex(VectorIndex):
    """Vectors in a Milvus collection ``collection`` at ``uri`` (see the module docstring).

    A new index creates its collection (a random name unless one is given; an existing
    collection of that name is refused unless ``overwrite``). :meth:`VectorIndex.load`
    reconnects to the collection its saved file names.
    """

    backend: ClassVar[str] = "milvus"
    vector_suffix: ClassVar[str] = "milvus.json"

    def __init__(
        self,
        dim: int,
        *,
        uri: str,
        collection: str | None = None,
        model_id: str | None = None,
        index_type: str = "AUTOINDEX",
        overwrite: bool = False,
        _create: bool = True,
    ) -> None:
        super().__init__(dim, model_id=model_id)
        self.uri = uri
        self.collection = collection or f"profiler_{uuid.uuid4().hex}"
        self.index_type = index_type
        self._client = _client(uri)
        if _create:
            self._create(overwrite)

    def _create(self, overwrite: bool) -> None:
        from pymilvus import DataType

        client = self._client
        if client.has_collection(self.collection):
            if not overwrite:
                raise ValueError(
                    f"Milvus collection {self.collection!r} at {self.uri} exists already; "
                    "pass overwrite=True to replace it or load it with load_index"
                )
            client.drop_collection(self.collection)
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("label", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        index = client.prepare_index_params()
        index.add_index(field_name="vector", index_type=self.index_type, metric_type="IP")
        client.create_collection(
            self.collection, schema=schema, index_params=index, consistency_level="Strong"
        )

    @classmethod
    def copy_of(cls, source: VectorIndex, *, uri: str, collection: str) -> MilvusIndex:
        """``source``'s ids and vectors in collection ``collection``; a collection of that
        name that already holds exactly those rows is reused (see :func:`collection_name`)."""
        ids = source.ids
        client = _client(uri)
        if client.has_collection(collection):
            rows = int(client.get_collection_stats(collection).get("row_count", -1))
            if rows == len(ids):
                index = cls(source.dim, uri=uri, collection=collection, _create=False)
                index.model_id = source.model_id
                index._id_map = IdMap()
                index._id_map.add(ids)
                return index
        index = cls(source.dim, uri=uri, collection=collection, overwrite=True)
        index.model_id = source.model_id
        for start in range(0, len(ids), BATCH):
            chunk = ids[start : start + BATCH]
            index.add(chunk, source.get(chunk))
        return index

    # -- persistence --------------------------------------------------------------------

    def _config(self) -> dict:
        return {"uri": self.uri, "collection": self.collection, "index_type": self.index_type}

    @classmethod
    def _from_manifest(cls, manifest: dict) -> MilvusIndex:
        return cls(
            manifest["dim"],
            uri=manifest["uri"],
            collection=manifest["collection"],
            model_id=manifest["model_id"],
            index_type=manifest.get("index_type", "AUTOINDEX"),
            _create=False,
        )

    def _save_vectors(self, path: Path) -> None:
        self._client.flush(self.collection)
        write_json(path, self._config())

    def _load_vectors(self, path: Path, id_map: IdMap, *, mmap: bool = False) -> None:
        saved = read_json(path)
        if saved.get("collection") != self.collection:
            raise ValueError(
                f"{path}: names collection {saved.get('collection')!r}, the manifest "
                f"{self.collection!r}; the index is damaged"
            )
        if not self._client.has_collection(self.collection):
            raise ValueError(
                f"{path}: Milvus collection {self.collection!r} is gone from {self.uri}; "
                "rebuild the workspace"
            )
        rows = int(self._client.get_collection_stats(self.collection).get("row_count", -1))
        if rows != len(id_map):
            raise ValueError(
                f"{path}: Milvus collection {self.collection!r} holds {rows} vectors, the "
                f"workspace's id map {len(id_map)}; another writer changed it: rebuild"
            )
        self._client.load_collection(self.collection)

    # -- backend hooks ------------------------------------------------------------------

    def _rows(self, labels: np.ndarray, vectors: np.ndarray) -> list[dict]:
        return [{"label": int(n), "vector": v} for n, v in zip(labels.tolist(), vectors)]

    def _add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        for start in range(0, len(labels), BATCH):
            end = start + BATCH
            self._client.insert(self.collection, self._rows(labels[start:end], vectors[start:end]))

    def _update(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        for start in range(0, len(labels), BATCH):
            end = start + BATCH
            self._client.upsert(self.collection, self._rows(labels[start:end], vectors[start:end]))

    def _remove(self, labels: np.ndarray) -> None:
        self._client.delete(self.collection, ids=labels.tolist())

    def _get(self, labels: np.ndarray) -> np.ndarray:
        out = np.empty((len(labels), self.dim), dtype=np.float32)
        row_of = {label: row for row, label in enumerate(labels.tolist())}
        for start in range(0, len(labels), BATCH):
            chunk = labels[start : start + BATCH].tolist()
            for found in self._client.get(self.collection, ids=chunk, output_fields=["vector"]):
                out[row_of[int(found["label"])]] = np.asarray(found["vector"], dtype=np.float32)
        return out

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if k > MAX_TOPK:
            raise ValueError(
                f"Milvus searches at most {MAX_TOPK} hits at a time; asked for {k} "
                "(k plus excluded ids)"
            )
        limit = k
        while True:
            scores, labels, short = self._search_once(queries, k, limit)
            # hits of labels this index does not map were dropped: ask for more, so the
            # answer is full whenever enough of its own vectors exist
            if not short or limit >= MAX_TOPK:
                break
            limit = min(2 * limit, MAX_TOPK)
        return scores, labels

    def _search_once(
        self, queries: np.ndarray, k: int, limit: int
    ) -> tuple[np.ndarray, np.ndarray, bool]:
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        labels = np.full((len(queries), k), -1, dtype=np.int64)
        found = self._client.search(
            self.collection,
            data=[q for q in queries],
            limit=limit,
            anns_field="vector",
            search_params={"metric_type": "IP"},
            output_fields=["label"],
        )
        short = False
        for row, hits in enumerate(found):
            pairs = sorted(((h["distance"], int(h["label"])) for h in hits), reverse=True)
            ids = self._id_map.lookup(np.array([label for _, label in pairs], dtype=np.int64))
            # a label that another generation's writer added is not this index's
            mine = [pair for pair, item_id in zip(pairs, ids) if item_id is not None]
            short |= len(mine) < min(k, len(self)) and len(pairs) == limit
            for col, (score, label) in enumerate(mine[:k]):
                scores[row, col], labels[row, col] = score, label
        return scores, labels, short

    def drop(self) -> None:
        """Delete the collection from the server (the saved files then no longer load)."""
        self._client.drop_collection(self.collection)


register_backend(MilvusIndex)
