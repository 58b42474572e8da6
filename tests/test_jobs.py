"""Sharded, resumable embedding jobs (profiler/jobs.py) on real bundled titles."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from profiler.cli import main
from profiler.data import clothing_catalog
from profiler.jobs import EmbedJob, ShardedEmbeddings, input_files
from profiler.workspace import Workspace
from tests.conftest import HashingEncoder


class SingleProcess:
    """The slice of ``accelerate.PartialState`` a job uses, for one process."""

    process_index, num_processes, is_main_process = 0, 1, True
    device = "cpu"

    def wait_for_everyone(self) -> None:
        pass


class CrashingEncoder(HashingEncoder):
    """Counts its calls and raises on call number ``crash_on`` (1-based), like a killed job."""

    def __init__(self, crash_on: int | None = None) -> None:
        super().__init__()
        self.calls = 0
        self.crash_on = crash_on

    def encode(self, texts, *, kind="query"):
        self.calls += 1
        if self.calls == self.crash_on:
            raise KeyboardInterrupt("simulated crash")
        return super().encode(texts, kind=kind)


@pytest.fixture(scope="module")
def titles() -> pd.DataFrame:
    """The first 130 real catalogue rows: ``item_id`` and ``title``."""
    return pd.read_parquet(clothing_catalog(), columns=["item_id", "title"]).head(130)


@pytest.fixture
def titles_file(tmp_path: Path, titles: pd.DataFrame) -> Path:
    path = tmp_path / "titles.parquet"
    titles.to_parquet(path, index=False)
    return path


def run_job(source: Path, out: Path, encoder=None, **kwargs) -> ShardedEmbeddings | None:
    job = EmbedJob(
        source, out, text_column="title", shard_size=kwargs.pop("shard_size", 40), **kwargs
    )
    return job.run(encoder=encoder or HashingEncoder(), state=SingleProcess())


def embed_argv(source: Path, out: Path, shard_size: int) -> list[str]:
    """``profiler embed`` arguments for the titles file, on the CPU."""
    return [
        "embed", "--input", str(source), "--text-column", "title", "--id-column", "item_id",
        "--output", str(out), "--shard-size", str(shard_size), "--device", "cpu",
    ]  # fmt: skip


def output_bytes(directory: Path) -> dict[str, bytes]:
    """Every file of a job's output, the manifest without its finishing time."""
    files = {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}
    manifest = json.loads(files.pop("manifest.json"))
    manifest.pop("finished")
    files["manifest.json"] = json.dumps(manifest, sort_keys=True).encode()
    return files


def test_shards_hold_every_row_in_input_order(titles_file, titles, tmp_path):
    shards = run_job(titles_file, tmp_path / "out")
    assert [s["rows"] for s in shards.manifest["shards"]] == [40, 40, 40, 10]
    assert sorted(p.name for p in (tmp_path / "out").glob("shard-*[0-9].npy")) == [
        f"shard-{i:05d}.npy" for i in range(4)
    ]
    assert shards.ids.tolist() == titles["item_id"].tolist()
    expected = HashingEncoder().encode(titles["title"].tolist())
    np.testing.assert_allclose(shards.vectors(), expected, atol=1e-6)
    assert shards.manifest["rows"] == 130 and shards.manifest["dim"] == 32
    assert shards.manifest["model_id"] == HashingEncoder.model_id
    assert len(shards.manifest["input"]["fingerprint"]) == 64


def test_resume_after_a_crash_gives_identical_output(titles_file, tmp_path):
    run_job(titles_file, tmp_path / "clean")

    crashing = CrashingEncoder(crash_on=3)
    with pytest.raises(KeyboardInterrupt):
        run_job(titles_file, tmp_path / "crashed", encoder=crashing)
    out = tmp_path / "crashed"
    assert (out / "shard-00001.npy").is_file() and not (out / "shard-00002.npy").exists()
    with pytest.raises(FileNotFoundError, match="has not finished"):
        ShardedEmbeddings(out)

    resumed = CrashingEncoder()
    run_job(titles_file, out, encoder=resumed)
    assert resumed.calls == 2  # shards 2 and 3 only: 0 and 1 were kept
    assert output_bytes(out) == output_bytes(tmp_path / "clean")


def test_bad_rows_are_quarantined_and_good_rows_go_on(tmp_path):
    source = tmp_path / "items.csv"
    source.write_text(
        "item_id,title\n"
        "a,red summer dress\n"
        ",blue jeans\n"  # row 2: no id
        "c,\n"  # row 3: no text
        "d,   \n"  # row 4: blank text
        "e,wool winter coat\n",
        encoding="utf-8",
    )
    shards = run_job(source, tmp_path / "out", shard_size=2)
    assert shards.ids.tolist() == ["a", "e"]
    rejected = [json.loads(line) for line in (tmp_path / "out/quarantine.jsonl").open()]
    assert [(r["row"], r["field"]) for r in rejected] == [
        (2, "item_id"),
        (3, "title"),
        (4, "title"),
    ]
    assert all(r["file"] == str(source) for r in rejected)
    assert rejected[2]["reason"] == "empty text"
    assert shards.manifest["rejected"] == 3


def test_missing_column_names_the_file(titles_file, tmp_path):
    job = EmbedJob(titles_file, tmp_path / "out", text_column="description")
    with pytest.raises(ValueError, match=r"titles\.parquet: missing column\(s\) \['description'\]"):
        job.run(encoder=HashingEncoder(), state=SingleProcess())


def test_a_different_job_in_the_output_folder_is_refused_unless_overwritten(
    titles_file, titles, tmp_path
):
    out = tmp_path / "out"
    run_job(titles_file, out)
    other = tmp_path / "other.parquet"
    titles.head(50).to_parquet(other, index=False)
    with pytest.raises(ValueError, match="different job"):
        run_job(other, out)
    shards = EmbedJob(other, out, text_column="title", shard_size=40).run(
        encoder=HashingEncoder(), state=SingleProcess(), overwrite=True
    )
    assert len(shards) == 50 and not (out / "shard-00002.npy").exists()


def test_a_folder_of_files_is_read_in_name_order(titles, tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    titles.iloc[60:].to_csv(folder / "part-b.csv", index=False)
    titles.iloc[:60].to_json(folder / "part-a.jsonl", orient="records", lines=True)
    (folder / "notes.txt").write_text("not input")
    assert [p.name for p in input_files(folder)] == ["part-a.jsonl", "part-b.csv"]
    shards = run_job(folder, tmp_path / "out", shard_size=50)
    assert shards.ids.tolist() == titles["item_id"].tolist()


def test_bad_job_settings_are_refused(titles_file, tmp_path):
    with pytest.raises(ValueError, match="dtype"):
        EmbedJob(titles_file, tmp_path, dtype="int4")
    with pytest.raises(ValueError, match="shard_size"):
        EmbedJob(titles_file, tmp_path, shard_size=0)
    with pytest.raises(FileNotFoundError, match="no such file"):
        EmbedJob(tmp_path / "nope.csv", tmp_path / "out").run(
            encoder=HashingEncoder(), state=SingleProcess()
        )


def test_lookup_by_id_and_build_takes_the_shards(tiny_files, tiny_frames, embedder, tmp_path):
    catalog, events = tiny_files
    items = tiny_frames[0]
    half = tmp_path / "half.csv"
    items.head(20).to_csv(half, index=False)
    out = tmp_path / "vectors"
    shards = EmbedJob(half, out, text_column="title", shard_size=8).run(
        encoder=embedder, state=SingleProcess()
    )
    found, vectors = shards.lookup(["nope", *items["item_id"].head(3)])
    assert found.tolist() == [False, True, True, True]
    np.testing.assert_allclose(vectors, embedder.encode(items["title"].head(3).tolist()), atol=1e-5)

    ws = Workspace.build(
        tmp_path / "ws", catalog=catalog, events=events, embedder=embedder, item_vectors=out
    )
    ids = items["item_id"].tolist()
    stored = ws.item_index.get(ids)
    np.testing.assert_allclose(stored[:20], shards.vectors(), atol=1e-6)
    # Items the job did not cover were embedded by the build from their documents.
    plain = Workspace.build(tmp_path / "plain", catalog=catalog, events=events, embedder=embedder)
    np.testing.assert_allclose(stored[20:], plain.item_index.get(ids[20:]), atol=1e-5)
    assert not np.allclose(stored[:20], plain.item_index.get(ids[:20]), atol=1e-3)


def test_build_refuses_vectors_from_another_model(tiny_files, embedder, tmp_path):
    catalog, events = tiny_files
    run_job(catalog, tmp_path / "vectors")
    with pytest.raises(ValueError, match="test/hashing-encoder"):
        Workspace.build(
            tmp_path / "ws",
            catalog=catalog,
            events=events,
            embedder=embedder,
            item_vectors=tmp_path / "vectors",
        )


def test_cli_embed_with_the_bundled_model(titles_file, titles, embedder, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [*embed_argv(titles_file, out, shard_size=50), "-q"]
    assert main(argv) == 0
    assert "130 vectors (384-d) in 3 shards, 0 rows rejected" in capsys.readouterr().out
    shards = ShardedEmbeddings(out)
    # The job runs the default precision (bfloat16 where the probe measured it faster).
    assert shards.model_id.startswith(embedder.model_id)
    assert shards.manifest["dtype"] in ("float32", "bfloat16")
    cosines = np.sum(shards.vectors() * embedder.encode(titles["title"].tolist()), axis=1)
    assert cosines.min() > 0.995
    # Run again: everything is done already, nothing changes.
    before = output_bytes(out)
    assert main(argv) == 0
    assert output_bytes(out) == before


def test_two_processes_under_accelerate_cover_every_row_once(
    titles_file, titles, embedder, tmp_path
):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    if accelerate is None:
        pytest.fail("accelerate is a dependency of the dev extra but its launcher is missing")
    out = tmp_path / "out"
    # On a host without GPUs, accelerate's torchrun launcher starts the processes and they
    # talk over gloo on the CPU (``--cpu`` alone would need MPI to start two).
    command = [
        accelerate,
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "profiler.cli",
        *embed_argv(titles_file, out, shard_size=20),
        "--dtype",
        "float32",
        "-v",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "process 0/2: embedded 4 shards" in done.stderr
    assert "process 1/2: embedded 3 shards" in done.stderr
    shards = ShardedEmbeddings(out)
    assert shards.ids.tolist() == titles["item_id"].tolist()
    # Float32 (set below), so every row must match one process's float32 vectors.
    np.testing.assert_allclose(
        shards.vectors(), embedder.encode(titles["title"].tolist()), atol=1e-5
    )


@pytest.mark.gpu
def test_half_precision_job_on_gpu_agrees_with_float32_on_cpu(
    titles_file, titles, embedder, tmp_path
):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    out = tmp_path / "out"
    shards = EmbedJob(titles_file, out, text_column="title", dtype="float16", device="cuda").run()
    assert shards.vectors().dtype == np.float32
    cosines = np.sum(shards.vectors() * embedder.encode(titles["title"].tolist()), axis=1)
    assert cosines.min() > 0.99


def test_overwrite_never_deletes_files_the_job_did_not_write(titles_file, titles, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and holds no embedding job"):
        EmbedJob(titles_file, out, text_column="title").run(
            encoder=HashingEncoder(), state=SingleProcess(), overwrite=True
        )
    fresh = tmp_path / "fresh"
    run_job(titles_file, fresh)
    (fresh / "notes.txt").write_text("mine")
    (fresh / ".shard-00009.npy.abc.tmp").write_bytes(b"torn")  # left by a killed process
    other = tmp_path / "other.parquet"
    titles.head(10).to_parquet(other, index=False)
    EmbedJob(other, fresh, text_column="title", shard_size=40).run(
        encoder=HashingEncoder(), state=SingleProcess(), overwrite=True
    )
    assert (fresh / "notes.txt").read_text() == "mine"
    assert not list(fresh.glob(".*.tmp"))
    assert sorted(p.name for p in fresh.glob("shard-*[0-9].npy")) == ["shard-00000.npy"]


def test_quarantine_lines_are_valid_json_with_nan_values(tmp_path):
    source = tmp_path / "items.jsonl"
    source.write_text(
        '{"item_id": "a", "title": "linen shirt", "price": 10.5}\n'
        '{"item_id": "b", "title": null, "price": NaN}\n',
        encoding="utf-8",
    )
    shards = run_job(source, tmp_path / "out")
    assert shards.ids.tolist() == ["a"]
    line = (tmp_path / "out/quarantine.jsonl").read_text(encoding="utf-8").strip()
    rejected = json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert (rejected["row"], rejected["field"], rejected["reason"]) == (2, "title", "missing text")
    assert rejected["record"]["price"] is None
