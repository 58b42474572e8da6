"""The workspace directory: data generations published in one atomic step, checksummed.

Layout::

    <root>/
      CURRENT                 {"generation": id, "manifest_blake2b": ...}, renamed last
      generations/<id>/       manifest.json + every data file of one consistent state
      embeddings/             vector cache by text hash (content-addressed, shared)
      quarantine/             rejected input rows (scrubbed)
      privacy.key             the pseudonym key (0600)
      .lock                   held exclusively by the one writer

A writer (build, add_events, forget, training) stages a new generation beside the current
one: files it does not rewrite are hard-linked from the current generation (every write
replaces a file through a temporary name, so a link is never written through), files it
changes are written fresh. :meth:`Store.publish` then records each file's size, BLAKE2b
checksum and, for ``.npy`` arrays, dtype and shape in the manifest, renames the staged
directory into place and replaces ``CURRENT``. A kill at any point leaves ``CURRENT``
naming the old generation or the new one, never a mix.

Readers take a shared lock on their generation (:class:`Lease`) and keep it while open;
old generations are deleted by the next writer once no reader holds them. Opening checks
every file against the manifest (size, checksum, and NaN/inf in float arrays) and the
manifest against ``CURRENT``; a mismatch raises :class:`CorruptWorkspaceError` naming the
file and what to do. Files are 0600 and directories 0700.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from profiler.storage import read_json, write_text

__all__ = [
    "CorruptWorkspaceError",
    "Generation",
    "Lease",
    "Store",
    "WriteLockedError",
    "file_digest",
]

logger = logging.getLogger(__name__)

CURRENT = "CURRENT"
GENERATIONS = "generations"
MANIFEST = "manifest.json"
LEASE = ".lease"
_CHUNK = 1 << 22  # 4 MiB: hashing speed levels off beyond this


class CorruptWorkspaceError(ValueError):
    """A workspace file does not match its manifest (names the file and the fix)."""


class WriteLockedError(RuntimeError):
    """Another process is writing this workspace."""


def file_digest(path: Path) -> dict:
    """Size and BLAKE2b of a file; for ``.npy``, also dtype, shape and non-finite count
    (read in the same pass, without memory-mapping the array)."""
    h = hashlib.blake2b(digest_size=20)
    size = path.stat().st_size
    info: dict = {"size": size}
    with open(path, "rb") as fh:
        array = None
        if path.suffix == ".npy":
            try:
                fmt = np.lib.format
                version = fmt.read_magic(fh)
                read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                shape, _, dtype = read(fh)
                array = (tuple(int(n) for n in shape), dtype)
            except ValueError:
                array = None  # the checksum will tell; the header is unreadable
            header = fh.tell()
            fh.seek(0)
            h.update(fh.read(header))
        bad = 0
        floating = array is not None and array[1].kind == "f" and not array[1].hasobject
        itemsize = array[1].itemsize if array is not None else 1
        carry = b""
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
            if floating:
                block = carry + chunk
                cut = len(block) - len(block) % itemsize
                values = np.frombuffer(block[:cut], dtype=array[1])
                bad += int(values.size - np.count_nonzero(np.isfinite(values)))
                carry = block[cut:]
    info["blake2b"] = h.hexdigest()
    if array is not None:
        info["shape"] = list(array[0])
        info["dtype"] = array[1].str
        if floating:
            info["nonfinite"] = bad
    return info


def _secure(path: Path) -> None:
    """Owner-only permissions on a file or a whole tree (0600 files, 0700 directories)."""
    if path.is_dir():
        os.chmod(path, 0o700)
        for parent, dirs, files in os.walk(path):
            for name in dirs:
                os.chmod(os.path.join(parent, name), 0o700)
            for name in files:
                full = os.path.join(parent, name)
                if not os.path.islink(full):
                    os.chmod(full, 0o600)
    elif path.exists():
        os.chmod(path, 0o600)


@dataclass
class Generation:
    """One staged or published generation: its id and directory; ``linked`` holds the
    files a staged one took from its parent (relative path -> (inode, manifest entry)),
    so publishing does not hash them again."""

    id: str
    dir: Path
    linked: dict = field(default_factory=dict)


class Lease:
    """A shared lock on one generation, held while a reader uses it."""

    def __init__(self, generation: Generation, handle) -> None:
        self.generation = generation
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            with contextlib.suppress(OSError, ValueError):
                fcntl.flock(self._handle, fcntl.LOCK_UN)
                self._handle.close()
            self._handle = None

    def __del__(self) -> None:  # a forgotten workspace must not pin its generation forever
        self.release()


class Store:
    """Generations of one workspace directory (see the module docstring)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @property
    def generations(self) -> Path:
        return self.root / GENERATIONS

    def pointer(self) -> dict | None:
        """``CURRENT`` as a dict, or ``None`` before the first build."""
        path = self.root / CURRENT
        if not path.is_file():
            return None
        try:
            pointer = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CorruptWorkspaceError(
                f"{path}: unreadable ({exc}); it names the published generation: restore "
                f"it, or rebuild the workspace"
            ) from None
        if not isinstance(pointer, dict) or not isinstance(pointer.get("generation"), str):
            raise CorruptWorkspaceError(
                f"{path}: no 'generation' entry; restore it or rebuild the workspace"
            )
        return pointer

    def current(self) -> Generation | None:
        return self._current(self.pointer())

    def _current(self, pointer: dict | None) -> Generation | None:
        if pointer is None:
            return None
        gen = pointer["generation"]
        if "/" in gen or gen.startswith("."):
            raise CorruptWorkspaceError(f"{self.root / CURRENT}: bad generation name {gen!r}")
        return Generation(gen, self.generations / gen)

    # -- writers ------------------------------------------------------------------------

    @contextlib.contextmanager
    def write_lock(self) -> Iterator[None]:
        """Hold the workspace's exclusive writer lock (non-blocking: a second writer gets
        :class:`WriteLockedError`). Stale temporary files are removed on entry."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        with os.fdopen(os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600), "r+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise WriteLockedError(
                    f"{self.root}: another process is writing this workspace"
                ) from None
            try:
                self.clean()
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def stage(self, carry: Iterable[str] | None = None, *, drop: Iterable[str] = ()) -> Generation:
        """A new staging directory; files of the current generation are hard-linked into
        it: all of them (``carry=None``) less those under ``drop``, or only those under
        the relative paths in ``carry``. Call while holding :meth:`write_lock`."""
        gen_id = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"
        staged = self.generations / f".{gen_id}.tmp"
        staged.mkdir(parents=True, mode=0o700)
        os.chmod(self.generations, 0o700)
        current = self.current()
        linked = {}
        if current is not None and current.dir.is_dir():
            try:
                known = read_json(current.dir / MANIFEST).get("files", {})
            except (FileNotFoundError, ValueError):
                known = {}
            wanted = None if carry is None else [Path(c) for c in carry]
            dropped = [Path(d) for d in drop]
            for source in current.dir.rglob("*"):
                if not source.is_file() or source.name in (MANIFEST, LEASE):
                    continue
                rel = source.relative_to(current.dir)
                if wanted is not None and not any(_under(rel, w) for w in wanted):
                    continue
                if any(_under(rel, d) for d in dropped):
                    continue
                target = staged / rel
                target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                os.link(source, target)
                if rel.as_posix() in known:
                    linked[rel.as_posix()] = (target.stat().st_ino, known[rel.as_posix()])
        (staged / LEASE).touch(mode=0o600)
        return Generation(gen_id, staged, linked)

    @contextlib.contextmanager
    def staging(
        self, carry: Iterable[str] | None = None, *, drop: Iterable[str] = ()
    ) -> Iterator[Generation]:
        """:meth:`stage` for a block that publishes it: if the block raises, the staged
        directory is discarded; after it, generations no reader holds are removed."""
        staged = self.stage(carry, drop=drop)
        try:
            yield staged
        except BaseException:
            self.discard(staged)
            raise
        self.clean()

    def publish(self, staged: Generation, manifest: dict) -> tuple[Generation, dict]:
        """Checksum every staged file into ``manifest["files"]``, write the manifest,
        rename the staged directory into place and point ``CURRENT`` at it (the one step
        that makes it visible). Returns the published generation and its manifest."""
        files = {}
        for path in sorted(staged.dir.rglob("*")):
            if path.is_file() and path.name not in (MANIFEST, LEASE):
                rel = path.relative_to(staged.dir).as_posix()
                inode, info = staged.linked.get(rel, (None, None))
                stat = path.stat()
                if inode == stat.st_ino and info.get("size") == stat.st_size:
                    files[rel] = info  # the parent's file, unchanged: its digest stands
                else:
                    files[rel] = file_digest(path)
                nonfinite = files[rel].get("nonfinite", 0)
                if nonfinite:
                    raise ValueError(
                        f"{rel}: {nonfinite} NaN or infinite values; refusing to publish it"
                    )
        manifest = dict(manifest, generation=staged.id, files=files)
        text = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        write_text(staged.dir / MANIFEST, text)
        _secure(staged.dir)
        final = self.generations / staged.id
        _fsync_tree(staged.dir)
        os.rename(staged.dir, final)
        _fsync_dir(self.generations)
        pointer = {
            "generation": staged.id,
            "manifest_blake2b": hashlib.blake2b(text.encode("utf-8"), digest_size=20).hexdigest(),
        }
        write_text(self.root / CURRENT, json.dumps(pointer) + "\n")
        _fsync_dir(self.root)
        logger.debug("published generation %s (%d files)", staged.id, len(files))
        return Generation(staged.id, final), manifest

    def hold(self, generation: Generation) -> Lease:
        """A shared lock on a generation this process just published."""
        handle = open(generation.dir / LEASE, "a")  # noqa: SIM115 (held by the Lease)
        fcntl.flock(handle, fcntl.LOCK_SH)
        return Lease(generation, handle)

    def discard(self, staged: Generation) -> None:
        shutil.rmtree(staged.dir, ignore_errors=True)

    def clean(self) -> list[str]:
        """Remove staged leftovers of killed writers, stale ``.tmp`` files and the old
        generations no reader holds. Returns what was removed."""
        removed: list[str] = []
        current = self.current() if (self.root / CURRENT).is_file() else None
        if self.generations.is_dir():
            for entry in self.generations.iterdir():
                if current is not None and entry.name == current.id:
                    continue
                if entry.name.endswith(".tmp"):
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry.name)
                elif entry.is_dir():
                    handle = self._unheld(entry)
                    if handle is None:
                        continue  # a reader still has it open: the next writer retries
                    # deleted while we hold its exclusive lock: a reader that opened the
                    # lease just before blocks on it, then finds no manifest and re-reads
                    # CURRENT
                    shutil.rmtree(entry, ignore_errors=True)
                    handle.close()
                    removed.append(entry.name)
        for parent, _, names in os.walk(self.root):
            if Path(parent).is_relative_to(self.generations):
                continue
            for name in names:
                if name.startswith(".") and name.endswith(".tmp"):
                    os.unlink(os.path.join(parent, name))
                    removed.append(name)
        if removed:
            logger.info("%s: removed %s", self.root, ", ".join(sorted(removed)))
        return removed

    @staticmethod
    def _unheld(directory: Path):
        """An exclusive lock on ``directory``'s lease (an open handle) when no reader
        holds it, else ``None``."""
        handle = open(directory / LEASE, "a")  # noqa: SIM115 (returned)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        return handle

    # -- readers ------------------------------------------------------------------------

    def lease(
        self, *, verify: bool = True, verified: dict | None = None, attempts: int = 20
    ) -> tuple[Lease, dict]:
        """Take a shared lock on the current generation and read its manifest, checked
        against ``CURRENT`` and (``verify=True``) every file against the manifest.

        ``verified`` is the file table of a generation this process already verified:
        a file whose entry (size, checksum, shape) is the same there (a hard link of the
        same file, as writers carry it) has only its size checked, so following a writer
        costs the files it changed, not the whole workspace.

        Raises
        ------
        FileNotFoundError
            No workspace at the root.
        CorruptWorkspaceError
            A file, the manifest or ``CURRENT`` does not match (message names the file).
        """
        for _ in range(attempts):
            # one read of CURRENT names the generation and its manifest's checksum: read
            # again later, it may already name a newer one (a reader once took that
            # newer checksum for its own generation's and called the workspace corrupt)
            pointer = self.pointer()
            current = self._current(pointer)
            if current is None:
                raise FileNotFoundError(
                    f"{self.root}: no workspace here (no {CURRENT}); create one with "
                    "`profiler build`"
                )
            try:
                handle = open(current.dir / LEASE, "a")  # noqa: SIM115 (held by the Lease)
            except FileNotFoundError:
                again = self.current()
                if again is not None and again.id == current.id:
                    raise CorruptWorkspaceError(
                        f"{current.dir}: the published generation is missing or damaged; "
                        "restore it from a backup or rebuild the workspace"
                    ) from None
                continue  # replaced and removed while we looked: read CURRENT again
            fcntl.flock(handle, fcntl.LOCK_SH)
            manifest_path = current.dir / MANIFEST
            if not manifest_path.is_file():  # deleted by a writer while we waited
                handle.close()
                time.sleep(0.01)
                continue
            lease = Lease(current, handle)
            try:
                manifest = self._check(current, pointer, verify=verify, verified=verified)
            except BaseException:
                lease.release()
                raise
            return lease, manifest
        raise RuntimeError(f"{self.root}: the workspace kept changing while opening it; retry")

    def _check(
        self, generation: Generation, pointer: dict, *, verify: bool, verified: dict | None
    ) -> dict:
        path = generation.dir / MANIFEST
        raw = path.read_bytes()
        expected = pointer.get("manifest_blake2b")
        if expected and hashlib.blake2b(raw, digest_size=20).hexdigest() != expected:
            raise CorruptWorkspaceError(
                f"{path}: the manifest was changed after it was published (its checksum "
                f"differs from {self.root / CURRENT}); restore it or rebuild the workspace"
            )
        try:
            manifest = read_json(path)
        except ValueError as exc:
            raise CorruptWorkspaceError(f"{exc}; restore it or rebuild the workspace") from None
        files = manifest.get("files")
        if not isinstance(files, dict):
            raise CorruptWorkspaceError(f"{path}: no file table; rebuild the workspace")
        if verify:
            known = verified or {}
            for rel, want in files.items():
                self._check_file(generation.dir / rel, want, content=known.get(rel) != want)
        return manifest

    @staticmethod
    def _check_file(path: Path, want: dict, *, content: bool = True) -> None:
        fix = "rebuild the workspace (`profiler build`) or restore the file from a backup"
        if not path.is_file():
            raise CorruptWorkspaceError(f"{path}: missing; {fix}")
        size = path.stat().st_size
        if size != want.get("size"):
            raise CorruptWorkspaceError(
                f"{path}: {size} bytes, the manifest says {want.get('size')} "
                f"(truncated or replaced); {fix}"
            )
        if not content:
            return
        got = file_digest(path)
        if "shape" in want and got.get("shape") != want["shape"]:
            raise CorruptWorkspaceError(
                f"{path}: array shape {got.get('shape')}, the manifest says {want['shape']}; {fix}"
            )
        if got.get("nonfinite"):
            raise CorruptWorkspaceError(f"{path}: {got['nonfinite']} NaN or infinite values; {fix}")
        if got["blake2b"] != want.get("blake2b"):
            raise CorruptWorkspaceError(
                f"{path}: checksum mismatch (the file changed after it was written: disk "
                f"error or an edit); {fix}"
            )


def _under(rel: Path, prefix: Path) -> bool:
    return rel == prefix or prefix in rel.parents


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_tree(path: Path) -> None:
    """Flush a staged generation to disk before it is published: a power cut after the
    rename must not leave a published manifest over empty files."""
    for parent, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                fd = os.open(os.path.join(parent, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        _fsync_dir(Path(parent))
