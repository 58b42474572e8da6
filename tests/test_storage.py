from __future__ import annotations

import numpy as np
import pytest

from profiler.storage import NpyRows, atomic_path, read_json, replacing, save_npy, write_json


def test_failed_write_keeps_previous_version(tmp_path):
    target = tmp_path / "manifest.json"
    write_json(target, {"version": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("{half")
        raise RuntimeError("crash mid-write")
    assert read_json(target) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_npy_never_pickles(tmp_path):
    save_npy(tmp_path / "ids.npy", np.array(["a", "bb"]))
    assert list(np.load(tmp_path / "ids.npy", allow_pickle=False)) == ["a", "bb"]
    with pytest.raises(ValueError):
        save_npy(tmp_path / "objects.npy", np.array([{"x": 1}], dtype=object))


def test_read_json_names_the_file(tmp_path):
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match=r"bad\.json"):
        read_json(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        read_json(tmp_path / "missing.json")


def test_replacing_swaps_a_whole_directory_in_or_leaves_the_old_one(tmp_path):
    target = tmp_path / "models" / "tags"
    with replacing(target) as staging:  # the parent is created
        (staging / "a.json").write_text("1")
    assert (target / "a.json").read_text() == "1"
    with pytest.raises(RuntimeError, match="half-written"), replacing(target) as staging:
        (staging / "a.json").write_text("2")
        raise RuntimeError("half-written")
    assert (target / "a.json").read_text() == "1"  # untouched, and no staging left behind
    assert sorted(p.name for p in target.parent.iterdir()) == ["tags"]
    with replacing(target) as staging:
        (staging / "b.json").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["b.json"]


def test_read_frame_gives_one_chunk_per_text_column_and_the_same_frame(tmp_path):
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from profiler.storage import read_frame

    frame = pd.DataFrame({"user_id": [f"u{i}" for i in range(3000)], "rating": range(3000)})
    frame.loc[5, "user_id"] = None
    pq.write_table(pa.Table.from_pandas(frame), tmp_path / "e.parquet", row_group_size=500)

    def chunks(column: pd.Series) -> int:
        return getattr(pa.array(column.array), "num_chunks", 1)  # one chunk: a plain Array

    assert chunks(pd.read_parquet(tmp_path / "e.parquet")["user_id"]) == 6
    read = read_frame(tmp_path / "e.parquet")
    pd.testing.assert_frame_equal(read, pd.read_parquet(tmp_path / "e.parquet"))
    assert chunks(read["user_id"]) == 1


@pytest.mark.parametrize("shape", [(7, 5), (6,), (4, 3, 2)])
def test_npy_rows_reads_what_numpy_reads(tmp_path, shape):
    array = np.arange(np.prod(shape), dtype=np.float32).reshape(shape) * 0.5
    save_npy(tmp_path / "a.npy", array)
    rows = NpyRows(tmp_path / "a.npy")
    assert rows.shape == array.shape and rows.dtype == array.dtype and len(rows) == len(array)
    for key in (0, 2, -1, slice(1, 3), slice(None), slice(3, 3), slice(0, 4, 2)):
        np.testing.assert_array_equal(rows[key], array[key])
    picked = np.array([3, 0, 3, -2])
    np.testing.assert_array_equal(rows[picked], array[picked])
    np.testing.assert_array_equal(np.asarray(rows), array)
    np.testing.assert_array_equal(np.asarray(rows, dtype=np.float64), array.astype(np.float64))
    first = rows[0:1]
    first[...] = -1  # a copy: the file is not written through
    np.testing.assert_array_equal(rows[0:1], array[0:1])
    with pytest.raises(IndexError):
        rows[len(array)]
    with pytest.raises(IndexError):
        rows[np.array([0, len(array)])]


def test_npy_rows_refuses_what_it_cannot_read_by_rows(tmp_path):
    save_npy(tmp_path / "f.npy", np.asfortranarray(np.ones((3, 4))))
    with pytest.raises(ValueError, match=r"f\.npy"):
        NpyRows(tmp_path / "f.npy")
    save_npy(tmp_path / "s.npy", np.float64(1.0))
    with pytest.raises(ValueError, match=r"s\.npy"):
        NpyRows(tmp_path / "s.npy")


def test_npy_rows_reads_a_file_truncated_since_as_an_error(tmp_path):
    save_npy(tmp_path / "a.npy", np.ones((10, 4), np.float32))
    rows = NpyRows(tmp_path / "a.npy")
    with open(tmp_path / "a.npy", "r+b") as fh:
        fh.truncate(fh.seek(0, 2) - 8)
    np.testing.assert_array_equal(rows[3], np.ones(4))
    with pytest.raises(OSError, match=r"a\.npy: short read at row 9"):
        rows[9]
