"""One writer per dataset folder: an ``flock`` on ``.facesynth/lock``, held for the whole run.

A lone ``generate``, ``card`` and ``merge`` hold it exclusively. The workers of one
run (torchrun ranks, a Slurm array) share it, and each also holds its own slot
(``.facesynth/workers/I-of-N.lock``) exclusively, plus a shared lock naming its run's
parameters, so workers of a run with other parameters are refused too. A holder
writes its pid into the file it holds alone, so a refused process can name it.
The kernel drops the locks when a process dies (``kill -9`` included), so a lock is
never stale. POSIX only (Linux, macOS); NFS needs ``flock`` support (Linux 2.6.12+).
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

from ..errors import OutputError, WriteError
from .files import NO_SPACE

logger = logging.getLogger(__name__)

WORK_DIR = ".facesynth"
LOCK_FILE = f"{WORK_DIR}/lock"
WORKERS_DIR = f"{WORK_DIR}/workers"


class FolderBusy(OutputError):
    """Another facesynth process is writing the folder."""


def _open_locked(path: Path, mode: int) -> int | None:
    """An fd holding ``flock(mode)`` on ``path``, or None if another process holds it.

    After locking, the path must still name the locked file: a holder that finished
    may have unlinked it, in which case the lock is taken again on the new file.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _write_pid(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def _read_pid(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _held(path: Path) -> bool:
    """Whether some process holds any lock on ``path``."""
    fd = _open_locked(path, fcntl.LOCK_EX) if path.exists() else None
    if fd is None:
        return path.exists()
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
    return False


class FolderLock:
    """Hold a dataset folder for one process (``worker=None``) or one worker of a run."""

    def __init__(self, root: Path, what: str = "--out", worker_index: int | None = None,
                 worker_count: int | None = None, run_key: str | None = None):
        self.root = Path(root)
        self.what = what
        self.worker = None if worker_count is None or worker_count == 1 else (worker_index, worker_count)
        self.run_key = run_key
        self._fds: list[int] = []
        self._made: list[Path] = []  # folders the lock created, removed again if left empty

    def _mkdir(self, folder: Path) -> None:
        for path in [*reversed(folder.relative_to(self.root).parents), folder.relative_to(self.root)]:
            path = self.root / path
            if path != self.root and not path.exists():
                try:
                    path.mkdir()
                except FileExistsError:  # another process of the run made it in between: theirs, not ours
                    continue
                self._made.append(path)

    def acquire(self) -> "FolderLock":
        """Take the folder's locks; a full disk is one line, and leaves no lock file or work folder behind."""
        try:
            return self._acquire()
        except OSError as exc:
            if exc.errno not in NO_SPACE:  # not a folder, no permission: the caller names those
                raise
            self.release()
            raise WriteError(f"{self.what}: cannot write to '{self.root}' ({exc.strerror or exc}); nothing was "
                             "changed") from None

    def _acquire(self) -> "FolderLock":
        work = self.root / WORK_DIR
        self.root.mkdir(parents=True, exist_ok=True)
        self._mkdir(work)
        main = self.root / LOCK_FILE
        if self.worker is None:
            fd = self._take(main, fcntl.LOCK_EX)
            _write_pid(fd)
            return self
        os.ftruncate(self._take(main, fcntl.LOCK_SH), 0)  # a pid there is a dead lone run's: no lone run holds it now
        index, count = self.worker
        folder = self.root / WORKERS_DIR
        self._mkdir(folder)
        run = work / f"run-{self.run_key}-{count}.lock"
        self._take(run, fcntl.LOCK_SH)
        others = [p for p in work.glob("run-*.lock") if p != run and _held(p)]
        if others:
            self.release()
            raise FolderBusy(f"{self.what}: '{self.root}' is being written by workers of a run with other "
                             f"parameters (pids {', '.join(self._holders()) or 'unknown'}); wait for them to "
                             "finish, or use another folder")
        fd = self._take(folder / f"{index:05d}-of-{count:05d}.lock", fcntl.LOCK_EX,
                        f"worker {index} of {count} is already running")
        _write_pid(fd)
        return self

    def _take(self, path: Path, mode: int, busy: str | None = None) -> int:
        fd = _open_locked(path, mode)
        if fd is None:
            self.release()
            pids = ", ".join(self._holders(path)) or "unknown"
            doing = busy or "is being written by another facesynth process"
            raise FolderBusy(f"{self.what}: '{self.root}' {doing} (pid {pids}); wait for it to finish, "
                             "or use another folder")
        self._fds.append(fd)
        return fd

    def _holders(self, path: Path | None = None) -> list[str]:
        """Pids of the processes holding the folder: the lone holder's, else the workers'."""
        if path is not None and path.name != "lock" and _read_pid(path):
            return [_read_pid(path)]
        pid = _read_pid(self.root / LOCK_FILE)
        if pid:
            return [pid]
        slots = sorted((self.root / WORKERS_DIR).glob("*.lock")) if (self.root / WORKERS_DIR).exists() else []
        return [_read_pid(p) for p in slots if _held(p) and _read_pid(p)]

    def release(self) -> None:
        """Drop every lock; whoever finds the folder free afterwards removes the lock files."""
        for fd in reversed(self._fds):
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        held = bool(self._fds)
        self._fds.clear()
        if held:
            remove_lock_files(self.root)
        for folder in reversed(self._made):
            try:
                folder.rmdir()  # only if empty
            except OSError:
                pass
        self._made.clear()

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def remove_lock_files(root: Path) -> None:
    """Remove the lock files if no process holds the folder (a process that opened one first re-locks anew)."""
    main = Path(root) / LOCK_FILE
    if not main.exists():
        return
    fd = _open_locked(main, fcntl.LOCK_EX)
    if fd is None:
        return
    try:
        work = Path(root) / WORK_DIR
        for path in [*work.glob("run-*.lock"), *(work / "workers").glob("*.lock")]:
            path.unlink(missing_ok=True)
        main.unlink(missing_ok=True)
        for folder in (work / "workers", work):  # empty work folders, whoever made them (a killed run, say)
            try:
                folder.rmdir()
            except OSError:
                pass
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def holders(root: Path) -> list[str]:
    """The pids of the processes that hold the folder (as their lock files name them)."""
    return FolderLock(root)._holders()


def folder_held(root: Path) -> bool:
    """Whether a facesynth process holds the folder (a lone run, or any worker); a reader that cannot open
    the lock file (read-only) takes the folder as free."""
    try:
        return _held(Path(root) / LOCK_FILE)
    except PermissionError:
        return False
