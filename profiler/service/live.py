"""The workspace one server process answers from, kept on the newest published generation.

Several processes can serve one workspace (``profiler serve --workers N``): each opens it,
and each may take a write. A :class:`LiveWorkspace` keeps its process on what the others
publish:

- a follower thread watches ``CURRENT`` (a ``stat`` every ``poll`` seconds: writers
  replace the file, so its inode changes) and opens a newer generation beside the one
  being served (:meth:`Workspace.reopen`: the model is shared and only the files that
  changed are checksummed), then swaps it in; requests already running finish on the
  generation they started with, which is closed once the last of them is done;
- writes take turns across the processes (an exclusive ``flock`` on ``writer.lock`` in the
  server's shared folder, waited for), start from the newest generation, and answer only
  when every other live process has announced that it serves what the write published
  (``<pid>-<n>.generation`` files there). So a read that follows a write's answer sees it on
  any process: a forgotten shopper is gone from every answer, a new event counts
  everywhere. A process that has not caught up within ``wait`` seconds is logged and the
  write answers anyway.

Reads never wait for a reopen: they take the generation served when they start. A
process that cannot open the published generation (a damaged file) keeps answering from
the one it has, says why in :attr:`LiveWorkspace.behind` (``/readyz`` answers 503 with
it, so a load balancer stops sending it requests) and tries again every second.

With one process (no shared folder) the follower still picks up what another program
(``profiler add-events`` from a shell) publishes, and writes take turns within it.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from profiler.storage import write_text
from profiler.store import CURRENT
from profiler.workspace import Workspace

__all__ = ["LiveWorkspace"]

logger = logging.getLogger(__name__)

WRITER_LOCK = "writer.lock"
ANNOUNCED = ".generation"
_SERIAL = itertools.count()


class LiveWorkspace:
    """One server process's workspace: the newest published generation, followed.

    Parameters
    ----------
    workspace
        The opened workspace to start from (it is closed when a newer one replaces it).
    peers
        The folder the server's processes share (announcements and the writers' turn),
        or ``None`` when this process serves the workspace alone.
    poll
        Seconds between two looks at ``CURRENT``.
    wait
        Longest time a write waits for the other processes to serve its generation.
    """

    def __init__(
        self,
        workspace: Workspace,
        *,
        peers: Path | None = None,
        poll: float = 0.01,
        wait: float = 30.0,
    ) -> None:
        self._ws = workspace
        self.peers = peers
        self.poll = poll
        self.wait = wait
        self._state = threading.Lock()  # guards _ws, _in_use and _retired
        self._in_use: dict[int, int] = {}  # id(workspace) -> requests reading it
        self._retired: dict[int, Workspace] = {}
        self._following = threading.Lock()  # one reopen at a time, none during a write
        self._writes = threading.Lock()
        self._stop = threading.Event()
        self.behind: str | None = None  # why the published generation could not be opened
        self._seen = self._current_stamp()
        self._thread: threading.Thread | None = None
        # <pid>-<n>: the pid tells whether the process lives; n tells apart two of them
        # in one process (tests)
        self._name = f"{os.getpid()}-{next(_SERIAL)}"
        if peers is not None:
            peers.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._announce()

    def start(self) -> None:
        """Start following what other processes publish (the server's startup calls it)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._watch, name="follow-workspace", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop following (reads and writes go on; a write still starts from the newest
        generation)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    @property
    def workspace(self) -> Workspace:
        """The generation new requests are answered from."""
        return self._ws

    @contextlib.contextmanager
    def reading(self) -> Iterator[Workspace]:
        """The workspace to answer one request from, kept open until the block ends."""
        with self._state:
            ws = self._ws
            self._in_use[id(ws)] = self._in_use.get(id(ws), 0) + 1
        try:
            yield ws
        finally:
            self._release(ws)

    @contextlib.contextmanager
    def writing(self) -> Iterator[Workspace]:
        """The workspace to change, on the newest generation, this process's and the
        other processes' only writer until the block ends; when it has published, the
        block returns once every other process serves the new generation."""
        with self._writes, self._turn():
            with self._following:
                self._follow()
                with self.reading() as ws:
                    yield ws
            if self.peers is not None:
                self._announce()
                self._await_peers(ws.generation)

    def close(self) -> None:
        """Stop following and close every generation held."""
        self.stop()
        with self._state:
            held = [self._ws, *self._retired.values()]
            self._retired.clear()
        for ws in held:
            ws.close()
        if self.peers is not None:
            with contextlib.suppress(FileNotFoundError):
                self._announcement.unlink()

    # -- following ------------------------------------------------------------------------

    def _current_stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self._ws.path / CURRENT)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns

    def _watch(self) -> None:
        while not self._stop.wait(self.poll):
            stamp = self._current_stamp()
            if stamp == self._seen:
                continue
            try:
                with self._following:
                    self._follow()
            except Exception as exc:  # a bad generation must not end the follower
                self.behind = f"{type(exc).__name__}: {exc}"
                logger.exception("%s: could not open the published generation", self._ws.path)
                time.sleep(1.0)  # then retry: a writer may publish a good one
                continue
            self.behind = None
            self._seen = stamp

    def _follow(self) -> None:
        """Serve the published generation if it is newer than the one served (call with
        ``_following`` held)."""
        published = self._ws.published()
        if published is None or published == self._ws.generation:
            return
        started = time.perf_counter()
        newer = self._ws.reopen()
        with self._state:
            old, self._ws = self._ws, newer
            if self._in_use.get(id(old)):
                self._retired[id(old)] = old
                old = None
        if old is not None:
            old.close()
        logger.info(
            "%s: now serving generation %s (opened in %.0f ms)",
            newer.path,
            newer.generation,
            (time.perf_counter() - started) * 1000,
        )
        if self.peers is not None:
            self._announce()

    def _release(self, ws: Workspace) -> None:
        with self._state:
            left = self._in_use[id(ws)] - 1
            if left:
                self._in_use[id(ws)] = left
                return
            del self._in_use[id(ws)]
            done = self._retired.pop(id(ws), None)
        if done is not None:
            done.close()

    # -- the processes of one server ------------------------------------------------------

    @contextlib.contextmanager
    def _turn(self) -> Iterator[None]:
        if self.peers is None:
            yield
            return
        with open(self.peers / WRITER_LOCK, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # waits: writes queue, none is refused
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @property
    def _announcement(self) -> Path:
        """The file that names the generation this process serves."""
        return self.peers / f"{self._name}{ANNOUNCED}"

    def _announce(self) -> None:
        write_text(self._announcement, self._ws.generation or "")

    def _await_peers(self, generation: str | None) -> None:
        deadline = time.monotonic() + self.wait
        while True:
            behind = [name for name, served in self._peer_generations() if served != generation]
            if not behind:
                return
            if time.monotonic() > deadline:
                logger.warning(
                    "%s: processes %s still serve an older generation than %s after %.0f s",
                    self._ws.path,
                    behind,
                    generation,
                    self.wait,
                )
                return
            time.sleep(self.poll / 2)

    def _peer_generations(self) -> list[tuple[str, str]]:
        """(name, generation) of the other live processes of this server."""
        found = []
        for path in self.peers.glob(f"*{ANNOUNCED}"):
            name = path.name.removesuffix(ANNOUNCED)
            pid = name.split("-")[0]
            if name == self._name or not pid.isdigit():
                continue
            if not _alive(int(pid)):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            with contextlib.suppress(FileNotFoundError):
                found.append((name, path.read_text(encoding="utf-8")))
        return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
