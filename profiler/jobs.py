"""Sharded, resumable embedding jobs: text files in, float32 ``.npy`` shards out.

A job streams its input row by row (:mod:`profiler.data.loading`: one file or a folder of
CSV / JSON Lines / Parquet files, read in name order), cuts the valid rows into shards of
``shard_size`` input rows, embeds each shard and writes, per shard::

    shard-00000.ids.npy        the shard's ids (unicode), input order
    shard-00000.rejected.jsonl bad rows of the shard, with file, row, field and reason
    shard-00000.npy            float32 [rows, dim], L2-normalised, input order

each atomically, the vectors last: a shard is complete exactly when its ``.npy`` exists,
so a crashed job resumes from the shards it finished. When every shard is done the job
writes ``ids.npy`` (all ids in input order), ``quarantine.jsonl`` and, last,
``manifest.json``. Concatenated in name order, the shards hold the rows in input order.

Under ``accelerate launch`` each process takes the shards ``i`` with
``i % num_processes == process_index`` on its own device, so no row is embedded twice
or missed; the main process waits for the others and writes the manifest. Memory stays
flat: a process holds one shard's texts and vectors at a time.

A workspace build takes such a folder, or a Parquet file of vectors from the user's own
pipeline (:class:`ParquetVectors`), as its item vectors: :func:`open_item_vectors` opens
either behind one interface, :class:`ItemVectors`.

Examples
--------
>>> job = EmbedJob("items.parquet", "index/item-vectors", text_column="title")  # doctest: +SKIP
>>> shards = job.run()                                                          # doctest: +SKIP
>>> shards.ids[:3], shards.vectors().shape                                      # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import pandas as pd

from profiler.data.loading import FORMATS, ROW_ERROR, iter_numbered_rows, read_columns
from profiler.data.validation import json_safe
from profiler.storage import read_json, save_npy, write_json, write_text

if TYPE_CHECKING:
    from accelerate import PartialState

__all__ = [
    "DTYPES",
    "EmbedJob",
    "ItemVectors",
    "ParquetVectors",
    "ShardedEmbeddings",
    "input_files",
    "input_fingerprint",
    "open_item_vectors",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
DTYPES = ("auto", "float32", "float16", "bfloat16")
_JOB_FILE = "job.json"
_MANIFEST = "manifest.json"
_OUTPUT_FILES = (
    "shard-*.npy",
    "shard-*.rejected.jsonl",
    "ids.npy",
    "quarantine.jsonl",
    _MANIFEST,
    _JOB_FILE,
)


class Encoder(Protocol):
    """What a job needs of an embedder: :class:`profiler.embedding.Embedder` has it."""

    model_id: str

    def encode(self, texts: Sequence[str], *, kind: str = "query") -> np.ndarray: ...


def input_files(path: str | os.PathLike[str]) -> list[Path]:
    """The files a job reads: ``path`` itself, or a folder's supported files in name order."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() not in FORMATS:
            raise ValueError(f"{path}: unsupported file type; use one of {sorted(FORMATS)}")
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in FORMATS)
        if not files:
            raise ValueError(f"{path}: folder holds no {sorted(FORMATS)} files")
        return files
    raise FileNotFoundError(f"{path}: no such file or folder")


def input_fingerprint(files: Sequence[Path]) -> str:
    """SHA-256 over the files' names and bytes: a resumed job must read the same input."""
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.name}\0{file.stat().st_size}\0".encode())
        with open(file, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def _shard_name(index: int) -> str:
    return f"shard-{index:05d}"


@dataclass(frozen=True)
class _Row:
    file: str
    row: int  # 1-based data row within its file, as the quarantine elsewhere reports it
    item_id: str
    text: str


@dataclass(frozen=True)
class _Rejected:
    file: str
    row: int
    field: str
    reason: str
    record: dict

    def to_json(self) -> str:
        record = json_safe(self.record)  # NaN -> null, numpy scalars -> Python
        return json.dumps(
            {
                "file": self.file,
                "row": self.row,
                "field": self.field,
                "reason": self.reason,
                "record": record,
            },
            ensure_ascii=False,
        )


def _check_row(
    file: Path, row: int, record: dict, id_column: str, text_column: str
) -> _Row | _Rejected:
    if ROW_ERROR in record:  # a line the reader could not parse
        return _Rejected(str(file), row, "row", str(record[ROW_ERROR]), record)
    item_id = record.get(id_column)
    text = record.get(text_column)
    if item_id is None or (isinstance(item_id, float) and np.isnan(item_id)):
        return _Rejected(str(file), row, id_column, "missing id", record)
    if isinstance(item_id, (int, np.integer)) and not isinstance(item_id, bool):
        item_id = str(item_id)
    if not isinstance(item_id, str) or not item_id.strip():
        return _Rejected(
            str(file),
            row,
            id_column,
            f"id must be a non-empty string, got {type(item_id).__name__} {item_id!r:.40}",
            record,
        )
    if not isinstance(text, str):
        kind = (
            "missing text" if text is None else f"text must be a string, got {type(text).__name__}"
        )
        return _Rejected(str(file), row, text_column, kind, record)
    if not text.strip():
        return _Rejected(str(file), row, text_column, "empty text", record)
    if "\ufffd" in text:
        return _Rejected(str(file), row, text_column, "not valid UTF-8", record)
    return _Row(str(file), row, item_id.strip(), text)


@dataclass(frozen=True)
class EmbedJob:
    """One embedding job: what to read, how to embed it, where the shards go.

    Parameters
    ----------
    input : path
        A CSV / JSON Lines / Parquet file, or a folder of them (read in name order).
    output : path
        Folder for the shards and the manifest (created if missing).
    text_column, id_column : str
        Columns holding the text to embed and its id (``item_id`` by default).
    model : str or path, optional
        Bundled model name or a local sentence-transformers folder.
    batch_size : int
        Texts per forward pass.
    dtype : str
        ``auto`` (the embedder's default: the fastest precision that agrees with float32
        on this device), ``float32``, ``float16`` or ``bfloat16``; shards are float32
        either way, and the manifest's model id names the precision.
    shard_size : int
        Input rows per shard: the unit of work, of resumption and of memory.
    device : str, optional
        ``auto`` picks each process's accelerator when there is one, else the CPU.
    """

    input: str | os.PathLike[str]
    output: str | os.PathLike[str]
    text_column: str = "text"
    id_column: str = "item_id"
    model: str | None = None
    batch_size: int = 64
    dtype: str = "auto"
    shard_size: int = 10_000
    device: str | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r}: expected one of {DTYPES}")
        for name in ("batch_size", "shard_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.text_column == self.id_column:
            raise ValueError(f"text and id columns are both {self.text_column!r}")

    # -- the job ----------------------------------------------------------------------

    def run(
        self,
        *,
        encoder: Encoder | None = None,
        state: PartialState | None = None,
        overwrite: bool = False,
        show_progress_bar: bool | None = None,
    ) -> ShardedEmbeddings | None:
        """Embed every shard this process owns, then (main process) write the manifest.

        Parameters
        ----------
        encoder : Encoder, optional
            An already loaded embedder; by default one is made from ``model``, ``dtype``,
            ``device`` and ``batch_size`` on this process's device.
        state : accelerate.PartialState, optional
            The process group; by default ``PartialState()``, which is one process unless
            started by ``accelerate launch``.
        overwrite : bool
            Delete an earlier job's output in ``output`` when it was a different job
            (other input, model or settings). Without it such a folder is an error.

        Returns
        -------
        ShardedEmbeddings or None
            The finished output on the main process; ``None`` on the others.
        """
        files = input_files(self.input)
        for file in files:
            self._check_columns(file)
        out = Path(self.output)
        state = state if state is not None else _partial_state(self.device)
        rank, world = state.process_index, state.num_processes
        if encoder is None:
            encoder = self._make_encoder(state)
        job = {
            "format_version": FORMAT_VERSION,
            "model_id": encoder.model_id,
            "input": {"files": [f.name for f in files], "fingerprint": input_fingerprint(files)},
            **{k: v for k, v in asdict(self).items() if k not in ("input", "output", "device")},
            # The precision that runs, not the request: "auto" differs between machines.
            "dtype": getattr(encoder, "dtype", self.dtype),
        }
        if state.is_main_process:
            self._start(out, job, overwrite)
        state.wait_for_everyone()
        if not state.is_main_process and read_json(out / _JOB_FILE) != job:
            raise RuntimeError(f"{out / _JOB_FILE}: processes disagree on the job")

        from tqdm.auto import tqdm

        if show_progress_bar is None:
            show_progress_bar = logger.getEffectiveLevel() <= logging.INFO
        bar = tqdm(
            desc=f"embedding shards (process {rank})", unit="shard", disable=not show_progress_bar
        )
        done = skipped = 0
        n_shards = 0
        for index, rows, rejected in self._shards(files):
            n_shards = index + 1
            if index % world != rank:
                continue
            if (out / f"{_shard_name(index)}.npy").is_file():
                skipped += 1
                continue
            self._write_shard(out, index, rows, rejected, encoder)
            done += 1
            bar.update()
        bar.close()
        logger.info(
            "process %d/%d: embedded %d shards, %d already done", rank, world, done, skipped
        )
        state.wait_for_everyone()
        if not state.is_main_process:
            return None
        return self._finish(out, job, n_shards)

    def _check_columns(self, file: Path) -> None:
        if file.suffix.lower() == ".jsonl" or file.suffix.lower() == ".json":
            return  # no header: a missing column shows up row by row
        present = read_columns(file)
        missing = [c for c in (self.id_column, self.text_column) if c not in present]
        if missing:
            raise ValueError(
                f"{file}: missing column(s) {missing}; found {present} "
                "(choose others with --id-column / --text-column)"
            )

    def _make_encoder(self, state: PartialState) -> Encoder:
        from profiler.embedding import Embedder

        device = self.device
        if device in (None, "auto"):
            device = str(state.device)
        return Embedder(
            self.model,
            device=device,
            batch_size=self.batch_size,
            dtype=None if self.dtype == "auto" else self.dtype,
            show_progress_bar=False,
        )

    def _start(self, out: Path, job: dict, overwrite: bool) -> None:
        """Record the job in ``out``, or check that ``out`` holds this same job."""
        previous = out / _JOB_FILE
        for stale in out.glob(".*.tmp") if out.is_dir() else ():
            stale.unlink()  # half-written files of a killed process
        if previous.is_file():
            if read_json(previous) == job:
                logger.info("resuming the job in %s", out)
                return
            if not overwrite:
                raise ValueError(
                    f"{out}: holds the output of a different job (other input, model or "
                    "settings); choose another --output or pass --overwrite to replace it"
                )
            logger.warning("replacing the earlier job's output in %s", out)
            for pattern in _OUTPUT_FILES:  # only what a job writes: never a user's files
                for file in out.glob(pattern):
                    file.unlink()
        elif out.is_dir() and any(out.iterdir()):
            raise ValueError(
                f"{out}: folder is not empty and holds no embedding job; choose an empty "
                "or new --output folder"
            )
        out.mkdir(parents=True, exist_ok=True)
        write_json(previous, job)

    def _shards(self, files: Sequence[Path]) -> Iterator[tuple[int, list[_Row], list[_Rejected]]]:
        """Stream the input as ``(shard index, valid rows, rejected rows)``."""
        rows: list[_Row] = []
        rejected: list[_Rejected] = []
        index = seen = 0
        for file in files:
            for row, record in iter_numbered_rows(file):
                checked = _check_row(file, row, record, self.id_column, self.text_column)
                (rows if isinstance(checked, _Row) else rejected).append(checked)
                seen += 1
                if seen == self.shard_size:
                    yield index, rows, rejected
                    rows, rejected, seen = [], [], 0
                    index += 1
        if seen:
            yield index, rows, rejected

    def _write_shard(
        self,
        out: Path,
        index: int,
        rows: list[_Row],
        rejected: list[_Rejected],
        encoder: Encoder,
    ) -> None:
        name = _shard_name(index)
        texts = [r.text for r in rows]
        # Longest first, as sentence-transformers does: batches pad to similar lengths.
        order = np.argsort([-len(t) for t in texts], kind="stable")
        vectors = np.empty((len(rows), 0), dtype=np.float32)
        if rows:
            # a job embeds catalogue documents: passages, for a model that prompts them
            encoded = encoder.encode([texts[i] for i in order], kind="passage")
            vectors = np.empty_like(encoded, dtype=np.float32)
            vectors[order] = encoded
        ids = np.array([r.item_id for r in rows], dtype=str) if rows else np.array([], "<U1")
        save_npy(out / f"{name}.ids.npy", ids)
        write_text(out / f"{name}.rejected.jsonl", "".join(r.to_json() + "\n" for r in rejected))
        save_npy(out / f"{name}.npy", vectors)  # last: its presence marks the shard done
        logger.info("%s: %d rows, %d rejected", name, len(rows), len(rejected))

    def _finish(self, out: Path, job: dict, n_shards: int) -> ShardedEmbeddings:
        missing = [i for i in range(n_shards) if not (out / f"{_shard_name(i)}.npy").is_file()]
        if missing:
            raise RuntimeError(
                f"{out}: shards {missing[:10]} are missing after every process finished; "
                "run the job again to fill them in"
            )
        ids, shards, dim = [], [], None
        rejected_lines: list[str] = []
        start = 0
        for i in range(n_shards):
            name = _shard_name(i)
            vectors = np.load(out / f"{name}.npy", mmap_mode="r", allow_pickle=False)
            shard_ids = np.load(out / f"{name}.ids.npy", allow_pickle=False)
            if len(vectors) != len(shard_ids):
                raise RuntimeError(f"{out / name}: {len(vectors)} vectors for {len(shard_ids)} ids")
            if len(vectors) and vectors.shape[1]:
                if dim not in (None, vectors.shape[1]):
                    raise RuntimeError(f"{out / name}: {vectors.shape[1]}-d, others {dim}-d")
                dim = int(vectors.shape[1])
            ids.append(shard_ids)
            lines = (out / f"{name}.rejected.jsonl").read_text(encoding="utf-8").splitlines()
            rejected_lines += lines
            shards.append({"file": f"{name}.npy", "first_row": start, "rows": len(vectors)})
            start += len(vectors)
        if dim is None:
            raise ValueError(
                f"{self.input}: no valid rows to embed; see {out / 'quarantine.jsonl'}"
            )
        all_ids = np.concatenate(ids) if ids else np.array([], dtype=str)
        unique, counts = np.unique(all_ids, return_counts=True)
        duplicates = unique[counts > 1]
        if len(duplicates):
            logger.warning(
                "%s: %d ids occur more than once, e.g. %s; the last row of each wins when "
                "the shards are read by id",
                out,
                len(duplicates),
                duplicates[:5].tolist(),
            )
        save_npy(out / "ids.npy", all_ids)
        write_text(out / "quarantine.jsonl", "".join(line + "\n" for line in rejected_lines))
        if rejected_lines:
            logger.warning(
                "%d rows rejected; see %s", len(rejected_lines), out / "quarantine.jsonl"
            )
        manifest = {
            **job,
            "dim": dim,
            "rows": len(all_ids),
            "rejected": len(rejected_lines),
            "duplicate_ids": len(duplicates),
            "ids": "ids.npy",
            "quarantine": "quarantine.jsonl",
            "shards": shards,
            "vector_dtype": "float32",
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        write_json(out / _MANIFEST, manifest)  # last: a folder with a manifest is complete
        logger.info(
            "%s: %d rows in %d shards, %d rejected",
            out,
            len(all_ids),
            n_shards,
            len(rejected_lines),
        )
        return ShardedEmbeddings(out)


def _partial_state(device: str | None) -> PartialState:
    try:
        from accelerate import PartialState
    except ImportError as exc:  # pragma: no cover - accelerate is a core dependency
        raise ImportError("embedding jobs need accelerate: pip install accelerate") from exc
    import torch

    # On a host without an accelerator the processes talk over gloo on the CPU.
    cpu = device == "cpu" or (device in (None, "auto") and not torch.cuda.is_available())
    return PartialState(cpu=cpu)


class ShardedEmbeddings:
    """The finished output of an :class:`EmbedJob`, read lazily (vectors memory-mapped).

    Raises ``FileNotFoundError`` for a folder without a manifest (a job that has not
    finished) and ``ValueError`` when a shard does not match it.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        path = self.directory / _MANIFEST
        if not path.is_file():
            hint = (
                " (the job has not finished: run it again)"
                if (self.directory / _JOB_FILE).is_file()
                else ""
            )
            raise FileNotFoundError(f"{path}: no embedding-job manifest{hint}")
        self.manifest = read_json(path)
        self.model_id: str = self.manifest["model_id"]
        self.dim = int(self.manifest["dim"])
        self.ids: np.ndarray = np.load(self.directory / self.manifest["ids"], allow_pickle=False)
        if len(self.ids) != self.manifest["rows"]:
            raise ValueError(
                f"{self.directory}: ids.npy has {len(self.ids)} rows, manifest "
                f"says {self.manifest['rows']}"
            )

    @property
    def source(self) -> Path:
        """The job's output folder, as messages name it."""
        return self.directory

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return (
            f"ShardedEmbeddings({str(self.directory)!r}, rows={len(self)}, dim={self.dim}, "
            f"model={self.model_id!r})"
        )

    def shards(self) -> Iterator[np.ndarray]:
        """Each shard's ``[rows, dim]`` float32 vectors, memory-mapped, in input order."""
        for shard in self.manifest["shards"]:
            vectors = np.load(self.directory / shard["file"], mmap_mode="r", allow_pickle=False)
            if len(vectors) != shard["rows"] or (len(vectors) and vectors.shape[1] != self.dim):
                raise ValueError(
                    f"{self.directory / shard['file']}: shape {vectors.shape} does "
                    f"not match the manifest ({shard['rows']}, {self.dim})"
                )
            yield vectors

    def vectors(self) -> np.ndarray:
        """All vectors in input order as one float32 array (read into memory)."""
        blocks = [np.asarray(v) for v in self.shards() if len(v)]
        if not blocks:
            return np.empty((0, self.dim), dtype=np.float32)
        return np.concatenate(blocks).astype(np.float32, copy=False)

    def lookup(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(found_mask, vectors_of_found)`` for ``ids``; a repeated id gives its last row."""
        row_of = {item_id: row for row, item_id in enumerate(self.ids.tolist())}
        rows = [row_of.get(i, -1) for i in ids]
        found = np.array([r >= 0 for r in rows], dtype=bool)
        wanted = np.array([r for r in rows if r >= 0], dtype=np.int64)
        out = np.empty((len(wanted), self.dim), dtype=np.float32)
        start = 0
        for vectors in self.shards():
            stop = start + len(vectors)
            inside = (wanted >= start) & (wanted < stop)
            if inside.any():
                out[inside] = vectors[wanted[inside] - start]
            start = stop
        return found, out


class ItemVectors(Protocol):
    """Vectors keyed by item id that a workspace build takes instead of embedding items.

    :class:`ShardedEmbeddings` (an embedding job's folder) and :class:`ParquetVectors`
    (a file of the user's own vectors) have it; :func:`open_item_vectors` opens either.
    """

    @property
    def source(self) -> Path:
        """The folder or file the vectors come from, as messages name it."""
        ...

    @property
    def model_id(self) -> str | None:
        """The model that made the vectors, or ``None`` where the source cannot say."""
        ...

    @property
    def dim(self) -> int: ...

    def __len__(self) -> int: ...

    def lookup(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]: ...


#: Rows whose norm is further than this from 1 are L2-normalised; the others are kept
#: exactly as given. Float32 rounding of a unit 384-d vector moves its norm by ~1e-7.
_UNIT_TOLERANCE = 1e-5
#: Rows read, checked and copied per step. Reading the whole table at once held Parquet's
#: decoding buffers beside the copy: 1M x 384 float32 peaked at 6.8 GB RSS, in steps of
#: 65,536 rows at 3.7 GB, in the same ~3-5 s (2 busy cores).
_READ_BATCH = 1 << 16


class ParquetVectors:
    """Item vectors made by the user's own pipeline: a Parquet file, read into memory.

    The file has a string column ``item_id`` (integers are read as their decimal text,
    surrounding whitespace is dropped, as the catalogue loader does) and a column
    ``vector``: an Arrow ``fixed_size_list`` or ``list`` of float32 / float64 whose rows
    all have the same length. Vectors are stored as float32; rows that are not unit
    vectors are L2-normalised, since the profiler scores by inner product = cosine.

    A Parquet file does not record the model that made its vectors, so :attr:`model_id`
    is ``None`` and a workspace build takes them as its own model's: only their
    dimension can be checked. They must come from the same model (and the same text per
    item) for item and event vectors to be comparable.

    Parameters
    ----------
    path : path
        The ``.parquet`` file.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        A missing or mistyped column, an id that is missing, empty or repeated, or a
        vector that is null, has another length than the others, holds a NaN or an
        infinite value, or is all zeros; the message names the file, column and row
        (1-based, as the data loaders count).

    Examples
    --------
    >>> import pandas as pd                                                 # doctest: +SKIP
    >>> pd.DataFrame({"item_id": ["a", "b"], "vector": list(vectors)}).to_parquet(
    ...     "vectors.parquet")                                              # doctest: +SKIP
    >>> Workspace.build("ws", catalog=..., events=...,
    ...                 item_vectors="vectors.parquet")                     # doctest: +SKIP
    """

    model_id: str | None = None

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.source = Path(path)
        self.ids, self._vectors = _read_parquet_vectors(self.source)
        self.dim = int(self._vectors.shape[1])
        self._rows = pd.Index(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"ParquetVectors({str(self.source)!r}, rows={len(self)}, dim={self.dim})"

    def vectors(self) -> np.ndarray:
        """All vectors in file order, float32 ``[rows, dim]``, unit norm (read-only view)."""
        view = self._vectors.view()
        view.flags.writeable = False
        return view

    def lookup(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(found_mask, vectors_of_found)`` for ``ids``, as :meth:`ShardedEmbeddings.lookup`."""
        rows = self._rows.get_indexer(pd.Index(list(ids), dtype=object))
        found = rows >= 0
        return found, self._vectors[rows[found]]


def open_item_vectors(path: str | os.PathLike[str]) -> ShardedEmbeddings | ParquetVectors:
    """Open precomputed item vectors: an embedding job's folder or a ``.parquet`` file.

    Parameters
    ----------
    path : path
        The output folder of ``profiler embed`` (:class:`ShardedEmbeddings`) or a Parquet
        file with ``item_id`` and ``vector`` columns (:class:`ParquetVectors`).

    Returns
    -------
    ShardedEmbeddings or ParquetVectors
    """
    path = Path(path)
    if path.is_dir():
        return ShardedEmbeddings(path)
    if path.is_file():
        if path.suffix.lower() != ".parquet":
            raise ValueError(
                f"{path}: item vectors are an embedding job's output folder or a .parquet "
                f"file with item_id and vector columns, not a {path.suffix or 'suffix-less'} "
                "file"
            )
        return ParquetVectors(path)
    raise FileNotFoundError(f"{path}: no such file or folder")


def _read_parquet_vectors(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, float32 unit vectors)`` of a vectors file, checked; see :class:`ParquetVectors`."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        file = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"{path}: not a readable Parquet file ({exc})") from exc
    schema = file.schema_arrow
    expected = "item_id (string) and vector (list of float32 or float64)"
    missing = [c for c in ("item_id", "vector") if c not in schema.names]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {missing}; found {schema.names}, expected {expected}"
        )
    id_type, vector_type = schema.field("item_id").type, schema.field("vector").type
    if not (pa.types.is_string(id_type) or pa.types.is_large_string(id_type)) and not (
        pa.types.is_integer(id_type)
    ):
        raise ValueError(f"{path}: column 'item_id' must hold strings, got {id_type}")
    listlike = (
        pa.types.is_fixed_size_list(vector_type)
        or pa.types.is_list(vector_type)
        or pa.types.is_large_list(vector_type)
    )
    if not listlike or not (
        pa.types.is_floating(vector_type.value_type) or pa.types.is_integer(vector_type.value_type)
    ):
        raise ValueError(
            f"{path}: column 'vector' must be a list of numbers (float32 or float64), "
            f"got {vector_type}"
        )
    n_rows = file.metadata.num_rows
    if n_rows == 0:
        raise ValueError(f"{path}: holds no rows")

    id_column = file.read(columns=["item_id"]).column("item_id")
    if pa.types.is_integer(id_type):
        id_column = pc.cast(id_column, pa.string())
    id_column = pc.utf8_trim_whitespace(id_column)
    ids = id_column.to_numpy(zero_copy_only=False)  # object array of str / None
    if id_column.null_count:
        row = int(np.flatnonzero(pc.is_null(id_column).to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"{path}: column 'item_id', row {row + 1}: missing id")
    empty = np.flatnonzero(pc.equal(id_column, "").to_numpy(zero_copy_only=False))
    if len(empty):
        raise ValueError(f"{path}: column 'item_id', row {empty[0] + 1}: empty id")
    repeated = np.flatnonzero(pd.Index(ids).duplicated())
    if len(repeated):
        first = int(np.flatnonzero(ids == ids[repeated[0]])[0])
        raise ValueError(
            f"{path}: column 'item_id': duplicate id {ids[repeated[0]]!r} at rows "
            f"{first + 1} and {repeated[0] + 1} ({len(repeated)} repeats in all); give each "
            "item one vector"
        )

    def fault(row: int, reason: str) -> ValueError:
        # 1-based rows, as the data loaders count them.
        return ValueError(
            f"{path}: column 'vector', row {row + 1} (item_id {ids[row]!r}): {reason}"
        )

    vectors = np.empty((0, 0), dtype=np.float32)
    dim = renormalised = start = 0
    for batch in file.iter_batches(batch_size=_READ_BATCH, columns=["vector"]):
        chunk = batch.column(0)
        if not len(chunk):
            continue
        stop = start + len(chunk)
        if chunk.null_count:
            first = int(np.flatnonzero(chunk.is_null().to_numpy(zero_copy_only=False))[0])
            raise fault(start + first, "null vector")
        if pa.types.is_fixed_size_list(vector_type):
            lengths = np.full(len(chunk), vector_type.list_size, dtype=np.int64)
        else:
            lengths = pc.list_value_length(chunk).to_numpy(zero_copy_only=False)
        if start == 0:
            dim = int(lengths[0])
            if dim == 0:
                raise fault(0, "empty vector")
            vectors = np.empty((n_rows, dim), dtype=np.float32)
        odd = np.flatnonzero(lengths != dim)
        if len(odd):
            raise fault(
                start + int(odd[0]),
                f"{lengths[odd[0]]} values, but row 1 has {dim}; every vector must have the "
                "same length",
            )
        values = chunk.flatten()  # honours the chunk's offsets, unlike .values
        if values.null_count:
            first = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
            raise fault(start + first // dim, "null value in the vector")
        block = vectors[start:stop]
        with np.errstate(over="ignore"):  # float64 beyond float32's range: inf, refused below
            block[:] = values.to_numpy(zero_copy_only=False).reshape(-1, dim)
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            raise fault(
                start + int(np.flatnonzero(~finite)[0]),
                "NaN or infinite value (or one beyond float32's range)",
            )
        norms = np.sqrt(np.einsum("ij,ij->i", block, block, dtype=np.float64))
        zero = np.flatnonzero(norms == 0)
        if len(zero):
            raise fault(start + int(zero[0]), "zero vector (it has no direction to compare)")
        off = np.flatnonzero(np.abs(norms - 1.0) > _UNIT_TOLERANCE)
        if len(off):
            block[off] = block[off] / norms[off, None]
            renormalised += len(off)
        start = stop
    assert start == n_rows, (start, n_rows)
    if renormalised:
        logger.info(
            "%s: L2-normalised %d of %d vectors that were not unit length",
            path,
            renormalised,
            n_rows,
        )
    return ids, vectors
