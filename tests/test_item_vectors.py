"""Precomputed item vectors (profiler/jobs.py): Parquet files of the user's own vectors."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from profiler import cli
from profiler.jobs import EmbedJob, ParquetVectors, ShardedEmbeddings, open_item_vectors
from profiler.store import Store
from profiler.workspace import Workspace
from tests.conftest import HashingEncoder, unit_vectors
from tests.test_jobs import SingleProcess


def fixed_size(vectors: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1])


def write(path: Path, ids: list, vectors, row_group_size: int | None = None) -> Path:
    """A vectors file; ``vectors`` an ndarray (fixed_size_list) or an Arrow array / list."""
    column = fixed_size(vectors) if isinstance(vectors, np.ndarray) else vectors
    pq.write_table(
        pa.table({"item_id": ids, "vector": column}), path, row_group_size=row_group_size
    )
    return path


def refused(path: Path, pattern: str) -> str:
    """Open ``path``, expect a ValueError matching ``pattern`` that names the file."""
    with pytest.raises(ValueError, match=pattern) as err:
        ParquetVectors(path)
    assert str(path) in str(err.value)
    return str(err.value)


@pytest.mark.parametrize(
    "layout", ["fixed_size_list float32", "fixed_size_list float64", "list float64"]
)
def test_round_trip_gives_the_vectors_back_normalised(tmp_path, caplog, layout):
    given = unit_vectors(7, 6, seed=1).astype(np.float64)
    given[2] *= 3.0  # two rows off unit length: normalised, the others kept as given
    given[5] *= 0.5
    expected = (given / np.linalg.norm(given, axis=1, keepdims=True)).astype(np.float32)
    ids = [f"item-{i}" for i in range(7)]
    if layout == "fixed_size_list float32":
        column = fixed_size(given.astype(np.float32))
    elif layout == "fixed_size_list float64":
        column = fixed_size(given)
    else:
        column = pa.array(given.tolist(), type=pa.list_(pa.float64()))
    path = write(tmp_path / "vectors.parquet", ids, column, row_group_size=3)

    with caplog.at_level(logging.INFO, logger="profiler.jobs"):
        vectors = open_item_vectors(path)
    assert isinstance(vectors, ParquetVectors)
    assert (len(vectors), vectors.dim, vectors.model_id) == (7, 6, None)
    assert vectors.source == path
    np.testing.assert_allclose(vectors.vectors(), expected, atol=1e-6)
    assert vectors.vectors().dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors.vectors(), axis=1), 1.0, atol=1e-6)
    kept = [0, 1, 3, 4, 6]
    np.testing.assert_array_equal(vectors.vectors()[kept], given[kept].astype(np.float32))
    notes = [r.getMessage() for r in caplog.records if "L2-normalised" in r.getMessage()]
    assert notes == [f"{path}: L2-normalised 2 of 7 vectors that were not unit length"]

    found, looked_up = vectors.lookup(["item-4", "nope", "item-0", "item-4"])
    assert found.tolist() == [True, False, True, True]
    np.testing.assert_array_equal(looked_up, vectors.vectors()[[4, 0, 4]])
    found, looked_up = vectors.lookup([])
    assert found.shape == (0,) and looked_up.shape == (0, 6)


def test_integer_ids_are_read_as_text_and_whitespace_is_dropped(tmp_path):
    path = write(tmp_path / "v.parquet", [12, 7], unit_vectors(2, 3))
    assert ParquetVectors(path).ids.tolist() == ["12", "7"]
    path = write(tmp_path / "w.parquet", [" a ", "b\t"], unit_vectors(2, 3))
    assert ParquetVectors(path).lookup(["a", "b"])[0].tolist() == [True, True]


def test_unit_vectors_need_no_note(tmp_path, caplog):
    path = write(tmp_path / "v.parquet", ["a", "b"], unit_vectors(2, 8))
    with caplog.at_level(logging.INFO, logger="profiler.jobs"):
        ParquetVectors(path)
    assert not [r for r in caplog.records if "L2-normalised" in r.getMessage()]


# -- refused files: each message names the file, and the row and column where one is at fault


def four_rows(overrides: dict[int, list | None]) -> tuple[list, list]:
    """Ids ``a``-``d`` with 4-d unit vectors as lists; ``overrides``: 0-based row -> vector."""
    rows = unit_vectors(4, 4, seed=2).astype(np.float64).tolist()
    for index, vector in overrides.items():
        rows[index] = vector
    return ["a", "b", "c", "d"], rows


def test_missing_columns_are_named(tmp_path):
    path = tmp_path / "v.parquet"
    pq.write_table(pa.table({"id": ["a"], "vector": fixed_size(unit_vectors(1, 4))}), path)
    message = refused(path, re.escape("missing column(s) ['item_id']; found ['id', 'vector']"))
    assert "expected item_id (string) and vector (list of float32 or float64)" in message
    pq.write_table(pa.table({"item_id": ["a"], "embedding": [[1.0, 0.0]]}), path)
    refused(path, re.escape("missing column(s) ['vector']"))


@pytest.mark.parametrize(
    "column",
    [
        pa.array(["0.1,0.2", "0.3,0.4"]),
        pa.array([["x", "y"], ["z", "w"]]),
        pa.array([[[1.0]], [[2.0]]]),
        pa.array([1.0, 2.0]),
    ],
    ids=["text", "list of text", "nested lists", "scalars"],
)
def test_a_vector_column_that_is_not_a_list_of_numbers(tmp_path, column):
    path = tmp_path / "v.parquet"
    pq.write_table(pa.table({"item_id": ["a", "b"], "vector": column}), path)
    refused(path, "column 'vector' must be a list of numbers \\(float32 or float64\\), got ")


def test_item_ids_must_be_text(tmp_path):
    path = tmp_path / "v.parquet"
    pq.write_table(pa.table({"item_id": [1.5, 2.5], "vector": [[1.0], [1.0]]}), path)
    refused(path, "column 'item_id' must hold strings, got double")


def test_rows_of_different_lengths_name_the_first_offending_row(tmp_path):
    ids, rows = four_rows({2: [1.0, 0.0, 0.0], 3: [1.0]})
    path = write(tmp_path / "v.parquet", ids, pa.array(rows), row_group_size=2)
    refused(
        path,
        re.escape(
            "column 'vector', row 3 (item_id 'c'): 3 values, but row 1 has 4; every vector "
            "must have the same length"
        ),
    )


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        ({2: None}, "column 'vector', row 3 \\(item_id 'c'\\): null vector"),
        (
            {3: [0.5, None, 0.5, 0.5]},
            "column 'vector', row 4 \\(item_id 'd'\\): null value in the vector",
        ),
        (
            {1: [0.5, float("nan"), 0.5, 0.5]},
            "column 'vector', row 2 \\(item_id 'b'\\): NaN or infinite value",
        ),
        (
            {3: [float("-inf"), 0.0, 0.0, 0.0]},
            "column 'vector', row 4 \\(item_id 'd'\\): NaN or infinite value",
        ),
        (
            {2: [1e300, 0.0, 0.0, 0.0]},
            "row 3 \\(item_id 'c'\\): NaN or infinite value \\(or one beyond float32's range\\)",
        ),
        ({2: [0.0, 0.0, 0.0, 0.0]}, "column 'vector', row 3 \\(item_id 'c'\\): zero vector"),
    ],
    ids=["null vector", "null value", "nan", "inf", "float32 overflow", "zero"],
)
def test_bad_vectors_name_their_row(tmp_path, overrides, pattern):
    ids, rows = four_rows(overrides)
    column = pa.array(rows, type=pa.list_(pa.float64()))
    refused(write(tmp_path / "v.parquet", ids, column, row_group_size=2), pattern)


@pytest.mark.parametrize(
    ("ids", "pattern"),
    [
        (
            ["a", "b", "c", "b"],
            "column 'item_id': duplicate id 'b' at rows 2 and 4 \\(1 repeats in all\\)",
        ),
        (["a", None, "c", "d"], "column 'item_id', row 2: missing id"),
        (["a", "b", "  ", "d"], "column 'item_id', row 3: empty id"),
    ],
    ids=["duplicate", "missing", "empty"],
)
def test_bad_ids_name_their_row(tmp_path, ids, pattern):
    refused(write(tmp_path / "v.parquet", ids, unit_vectors(4, 4)), pattern)


def test_empty_files_and_vectors_are_refused(tmp_path):
    no_ids = pa.array([], pa.string())
    path = write(tmp_path / "v.parquet", no_ids, fixed_size(np.empty((0, 4), np.float32)))
    refused(path, "holds no rows")
    path = write(tmp_path / "w.parquet", ["a", "b"], pa.array([[], []], pa.list_(pa.float32())))
    refused(path, "row 1 \\(item_id 'a'\\): empty vector")


def test_a_file_that_is_not_parquet(tmp_path):
    path = tmp_path / "v.parquet"
    path.write_bytes(b"item_id,vector\na,1 2 3\n")
    refused(path, "not a readable Parquet file")


def test_open_item_vectors_tells_folders_from_files(tmp_path):
    out = tmp_path / "job"
    source = tmp_path / "items.csv"
    source.write_text("item_id,text\na,red dress\nb,blue jeans\n")
    EmbedJob(source, out).run(encoder=HashingEncoder(), state=SingleProcess())
    shards = open_item_vectors(out)
    assert isinstance(shards, ShardedEmbeddings) and shards.source == out
    with pytest.raises(ValueError, match=r"items\.csv: item vectors are an embedding job's"):
        open_item_vectors(source)
    with pytest.raises(FileNotFoundError, match=r"nothing\.parquet: no such file or folder"):
        open_item_vectors(tmp_path / "nothing.parquet")


# -- a workspace build takes them


def test_build_takes_the_file_and_embeds_the_items_it_lacks(
    tiny_files, tiny_frames, embedder, tmp_path
):
    catalog, events = tiny_files
    ids = tiny_frames[0]["item_id"].astype(str).tolist()
    given = unit_vectors(20, 384, seed=3)
    given[0] *= 2.0
    extra = unit_vectors(1, 384, seed=4)  # an id the catalogue lacks: ignored
    path = write(
        tmp_path / "vectors.parquet", [*ids[:20], "not-in-catalogue"], np.vstack([given, extra])
    )
    ws = Workspace.build(
        tmp_path / "ws", catalog=catalog, events=events, embedder=embedder, item_vectors=path
    )
    stored = ws.item_index.get(ids)
    given[0] /= 2.0
    np.testing.assert_allclose(stored[:20], given, atol=1e-6)
    assert ws.manifest["model"]["dim"] == 384
    # Items the file lacks were embedded by the build from their documents.
    plain = Workspace.build(tmp_path / "plain", catalog=catalog, events=events, embedder=embedder)
    np.testing.assert_allclose(stored[20:], plain.item_index.get(ids[20:]), atol=1e-5)


def test_build_refuses_vectors_of_another_dimension(tiny_files, tiny_frames, embedder, tmp_path):
    catalog, events = tiny_files
    ids = tiny_frames[0]["item_id"].astype(str).tolist()
    path = write(tmp_path / "vectors.parquet", ids, unit_vectors(len(ids), 16))
    pattern = (
        "vectors.parquet: vectors have 16 dimensions, but this workspace's model .* makes "
        "384; item vectors must come from the workspace's model"
    )
    with pytest.raises(ValueError, match=pattern):
        Workspace.build(
            tmp_path / "ws", catalog=catalog, events=events, embedder=embedder, item_vectors=path
        )


def test_cli_build_with_a_vectors_file(tiny_files, tiny_frames, tmp_path, capsys):
    catalog, events = tiny_files
    ids = tiny_frames[0]["item_id"].astype(str).tolist()
    given = unit_vectors(len(ids), 384, seed=5)
    path = write(tmp_path / "vectors.parquet", ids, given)
    ws = tmp_path / "ws"
    argv = ["build", "--catalog", str(catalog), "--events", str(events), "--workspace", str(ws)]
    argv += ["--device", "cpu", "-q", "--item-vectors"]

    bad = write(tmp_path / "bad.parquet", [ids[0], ids[0]], given[:2])
    assert cli.main([*argv, str(bad)]) == 2
    assert f"{bad}: column 'item_id': duplicate id {ids[0]!r} at rows 1 and 2" in (
        capsys.readouterr().err
    )

    assert cli.main([*argv, str(path)]) == 0
    manifest = json.loads((Store(ws).current().dir / "manifest.json").read_text())
    assert manifest["model"]["dim"] == 384 and manifest["counts"]["items"] == len(ids)
    np.testing.assert_allclose(Workspace.open(ws).item_index.get(ids), given, atol=1e-6)
