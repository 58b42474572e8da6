"""Workspace generations: atomic publishing, leases, cleanup, and corruption detected at open."""

from __future__ import annotations

import json
import shutil
import stat

import numpy as np
import pytest

from profiler import cli
from profiler.store import CorruptWorkspaceError, Store, WriteLockedError, file_digest
from profiler.workspace import Workspace

# -- the store on its own -------------------------------------------------------------


def publish(store: Store, files: dict[str, bytes], **manifest):
    with store.write_lock():
        staged = store.stage()
        for name, data in files.items():
            target = staged.dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.unlink(missing_ok=True)  # never write through a link: replace it
            target.write_bytes(data)
        return store.publish(staged, {"format_version": 3, **manifest})


def test_publish_records_every_file_and_readers_keep_their_generation(tmp_path):
    store = Store(tmp_path / "ws")
    first, manifest = publish(store, {"a.bin": b"one", "sub/b.bin": b"two"})
    assert manifest["files"]["a.bin"]["size"] == 3 and "sub/b.bin" in manifest["files"]
    lease, read = store.lease()
    assert read["generation"] == first.id == store.current().id
    second, _ = publish(store, {"a.bin": b"three"})  # a.bin rewritten, sub/b.bin linked
    assert (second.dir / "sub" / "b.bin").stat().st_ino == (first.dir / "sub/b.bin").stat().st_ino
    assert (first.dir / "a.bin").read_bytes() == b"one"  # the old one is intact
    assert first.dir.is_dir(), "held by a reader: not removed"
    lease.release()
    with store.write_lock():
        pass  # a writer's entry cleans what no reader holds
    assert not first.dir.exists() and second.dir.is_dir()
    for path in (tmp_path / "ws").rglob("*"):
        want = 0o700 if path.is_dir() else 0o600
        assert stat.S_IMODE(path.stat().st_mode) == want, path


def test_a_killed_writer_leaves_the_old_generation_and_its_leftovers_are_removed(tmp_path):
    store = Store(tmp_path / "ws")
    first, _ = publish(store, {"a.bin": b"one"})
    with store.write_lock():
        staged = store.stage()
        (staged.dir / "a.bin").unlink()
        (staged.dir / "a.bin").write_bytes(b"half")  # then the process dies: no publish
    (tmp_path / "ws" / "quarantine").mkdir()
    (tmp_path / "ws" / "quarantine" / ".events.jsonl.abc.tmp").write_text("partial")
    assert store.current().id == first.id and staged.dir.exists()
    with store.write_lock():
        assert not staged.dir.exists()
    assert not (tmp_path / "ws" / "quarantine" / ".events.jsonl.abc.tmp").exists()
    _, manifest = store.lease()
    assert manifest["generation"] == first.id


def test_one_writer_at_a_time(tmp_path):
    store = Store(tmp_path / "ws")
    with (
        store.write_lock(),
        pytest.raises(WriteLockedError, match="another process is writing"),
        Store(tmp_path / "ws").write_lock(),
    ):
        pass


def test_digest_counts_non_finite_values_in_arrays(tmp_path):
    values = np.ones((4, 3), dtype=np.float32)
    np.save(tmp_path / "ok.npy", values)
    values[2, 1] = np.nan
    values[3, 0] = np.inf
    np.save(tmp_path / "bad.npy", values)
    assert file_digest(tmp_path / "ok.npy")["nonfinite"] == 0
    info = file_digest(tmp_path / "bad.npy")
    assert info["nonfinite"] == 2 and info["shape"] == [4, 3] and info["dtype"] == "<f4"
    store = Store(tmp_path / "ws")
    with pytest.raises(ValueError, match="2 NaN or infinite values; refusing to publish"):
        publish(store, {"v.npy": (tmp_path / "bad.npy").read_bytes()})
    assert store.current() is None


# -- corruption of a real workspace ---------------------------------------------------


@pytest.fixture(scope="module")
def pristine(tiny_workspace_template):
    """The session's tiny workspace: tests copy it before they damage it."""
    return tiny_workspace_template


def _flip(path, offset=None):
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if offset is None else offset
    data[at] ^= 0x40
    path.write_bytes(bytes(data))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _nan(path):
    array = np.load(path)
    array.reshape(-1)[len(array.reshape(-1)) // 2] = np.nan
    np.save(path, array)


def _reshape(path):  # same bytes, another shape in the header
    array = np.load(path)
    np.save(path, array.reshape(-1, array.shape[-1] // 2))


def _shuffle(path):
    array = np.load(path)
    np.save(path, np.roll(array, 1))


def _edit_json(path):
    data = json.loads(path.read_text())
    data[next(iter(data))] = "edited"
    path.write_text(json.dumps(data))


CORRUPTIONS = {
    "items.faiss bit flip": ("items.faiss", _flip, "checksum mismatch"),
    "users.faiss truncated": ("users.faiss", _truncate, "truncated or replaced"),
    "event vectors NaN": ("event_vectors.npy", _nan, "NaN or infinite"),
    "event vectors truncated": ("event_vectors.npy", _truncate, "truncated or replaced"),
    "event vectors reshaped": ("event_vectors.npy", _reshape, "array shape"),
    "profile sums NaN": ("profiles.pos_sum.npy", _nan, "NaN or infinite"),
    "profile centres bit flip": ("profiles.centres.npy", _flip, "checksum mismatch"),
    "item ids shuffled": ("items.ids.npy", _shuffle, "checksum mismatch"),
    "user ids shuffled": ("users.ids.npy", _shuffle, "checksum mismatch"),
    "events.parquet bit flip": ("events.parquet", _flip, "checksum mismatch"),
    "items.parquet truncated": ("items.parquet", _truncate, "truncated or replaced"),
    "profiles.parquet bit flip": ("profiles.parquet", _flip, "checksum mismatch"),
    "co-occurrence bit flip": ("interactions.cooccurrence.npz", _flip, "checksum mismatch"),
    "BM25 postings bit flip": ("lexical/data.csc.index.npy", _flip, "checksum mismatch"),
    "index manifest edited": ("items.json", _edit_json, "truncated or replaced|checksum"),
    "ranker settings edited": ("models/recommender.json", _edit_json, "truncated|checksum"),
    "profiles deleted": ("profiles.parquet", lambda p: p.unlink(), "missing"),
    "manifest counts edited": ("manifest.json", _edit_json, "changed after it was published"),
    "manifest truncated": ("manifest.json", _truncate, "changed after it was published"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corruption_is_detected_at_open_naming_the_file(pristine, tmp_path, case, capsys):
    name, corrupt, message = CORRUPTIONS[case]
    path = tmp_path / "ws"
    shutil.copytree(pristine, path)
    target = Store(path).current().dir / name
    corrupt(target)
    with pytest.raises(CorruptWorkspaceError, match=message) as caught:
        Workspace.open(path)
    assert str(target) in str(caught.value)
    assert "rebuild" in str(caught.value) or "restore" in str(caught.value)
    assert cli.main(["search", "--workspace", str(path), "jeans"]) == 2
    assert str(target) in capsys.readouterr().err


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda p: p.write_text("{not json"), "unreadable"),
        (lambda p: p.write_text(json.dumps({"generation": "nope"})), "missing or damaged"),
        (lambda p: p.write_text(json.dumps({"other": 1})), "no 'generation' entry"),
    ],
)
def test_a_damaged_pointer_is_named(pristine, tmp_path, write, message):
    path = tmp_path / "ws"
    shutil.copytree(pristine, path)
    write(path / "CURRENT")
    with pytest.raises(CorruptWorkspaceError, match=message) as caught:
        Workspace.open(path)
    assert str(path) in str(caught.value)


def test_a_lost_pseudonym_key_is_named(pristine, tmp_path):
    path = tmp_path / "ws"
    shutil.copytree(pristine, path)
    (path / "privacy.key").unlink()
    with pytest.raises(FileNotFoundError, match=r"privacy\.key: the workspace's pseudonym key"):
        Workspace.open(path)


def test_writers_never_change_a_published_generation(pristine, tmp_path, tiny_frames, embedder):
    """Every kind of write leaves the generations before it byte-identical (files are
    hard-linked between generations: an in-place write would corrupt the old one)."""
    path = tmp_path / "ws"
    shutil.copytree(pristine, path)
    _, events = tiny_frames
    ws = Workspace.open(path, embedder=embedder)
    held = []
    user = events["user_id"].iloc[0]
    item = events["item_id"].iloc[1]
    writes = [
        lambda: ws.feedback(user, item, liked=True, timestamp=float(events["timestamp"].max())),
        lambda: ws.forget(events["user_id"].iloc[3], retrain=False),
        lambda: ws.forget(events["user_id"].iloc[4]),
        lambda: ws.export_aggregates(0.1),
    ]
    for write in writes:
        held.append(Workspace.open(path, embedder=embedder))  # holds this generation
        write()
    for reader in held:
        manifest = json.loads((reader.data / "manifest.json").read_text())
        for name, want in manifest["files"].items():
            assert file_digest(reader.data / name)["blake2b"] == want["blake2b"], name
        reader.close()
