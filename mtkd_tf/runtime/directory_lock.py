"""One run per directory: a lock file that names the process using the directory.

`<directory>/.lock` holds the pid, host, start time and command of the process that writes the
directory, and that process holds an exclusive `flock` on it, which the kernel releases however
the process ends. `bin/run` locks its `model_dir` before anything else; training locks the model
directory it trains and soft labelling the directory it writes, so a second process started on
the same `model_dir`, or on a stage directory in use, stops at once with a `LockError` naming the
first (pid, host, start time). A lock file left by a process that is gone (same host: the pid no
longer runs, or runs another program) is taken over with a warning; one left on another host is
refused, since its process cannot be seen from here (delete the file if that run is gone).

Multi-worker runs share `model_dir` by design: each worker locks only the directory it writes,
the chief `model_dir`, every other worker its scratch directory `<model_dir>/.workers/<task>`.

>>> with DirectoryLock("runs/kd"):
...     ...   # a second process on runs/kd gets LockError naming this one
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import sys
import threading

from mtkd_tf.errors import MtkdError
from mtkd_tf.runtime.files import disk_full, no_room

logger = logging.getLogger("mtkd_tf")

LOCK_FILE = ".lock"


class LockError(MtkdError):
    """The directory is in use by another process (named in the message)."""


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot; Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(holder: dict) -> bool:
    """Whether the process a lock file names (on this host) still runs."""
    try:
        pid = int(holder.get("pid", 0))
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    recorded, now = holder.get("process_start"), _process_start(pid)
    return not (recorded and now and recorded != now)  # the pid was reused by another process


def describe(holder: dict) -> str:
    """`pid 4242 on host h1, started 2026-12-03 08:10:11 (bin/run --flagfile=...)`."""
    if not holder:
        return "another process (its lock file is being written or is unreadable)"
    command = holder.get("command")
    return f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}" + (
        f" ({command})" if command else ""
    )


def _missing_top(directory: str) -> str | None:
    """The outermost ancestor of `directory` (or itself) that does not exist yet, or None."""
    top = None
    while not os.path.isdir(directory):
        top = directory
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    return top


class DirectoryLock:
    """The exclusive lock of one directory for this process (re-entrant within the process)."""

    _held: dict[str, list] = {}  # path -> [file descriptor, count, created the directory]
    _guard = threading.Lock()

    def __init__(self, directory: str, what: str = "directory", create: bool = True):
        self.directory = os.path.abspath(directory)
        self.path = os.path.join(self.directory, LOCK_FILE)
        self.what = what
        self.create = create  # False: a directory that does not exist is not created, nor locked

    def __enter__(self) -> "DirectoryLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def holder(self) -> dict:
        """What the lock file says (empty when there is none or it is unreadable)."""
        try:
            with open(self.path, encoding="utf-8") as handle:
                return json.load(handle)
        except (OSError, ValueError):
            return {}

    def acquire(self) -> None:
        """Takes the lock, or raises `LockError` naming the process that has it."""
        import fcntl

        with self._guard:
            held = self._held.get(self.path)
            if held is not None:
                held[1] += 1
                return
            if not os.path.isdir(self.directory) and not self.create:
                return  # nothing there to protect (a reader then reports the missing directory)
            created = _missing_top(self.directory)
            os.makedirs(self.directory, exist_ok=True)
            for _ in range(10):
                handle = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(handle)
                    self._refuse(self.holder())
                try:  # a holder that ended meanwhile unlinked the file we opened: open it anew
                    same = os.fstat(handle).st_ino == os.stat(self.path).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(handle)
                    continue
                try:
                    self._take_over(handle)
                except BaseException:
                    os.close(handle)
                    raise
                self._held[self.path] = [handle, 1, created]
                return
            raise LockError(f"could not lock {self.directory}: its lock file {self.path} keeps changing")

    def _take_over(self, handle: int) -> None:
        """Checks what the lock file says (a process gone, or none) and writes this process into it."""
        previous = self.holder()
        host = socket.gethostname()
        if previous and previous.get("pid") != os.getpid():
            if previous.get("host") != host:
                raise LockError(
                    f"{self.what} {self.directory} may be in use by {describe(previous)}, another machine "
                    f"whose process cannot be checked from here; if that run is gone, delete {self.path} "
                    "and run again"
                )
            if _alive(previous):  # the flock is free but the process runs: locks do not work on this filesystem
                self._refuse(previous)
            logger.warning(
                "taking over the lock of %s left by %s: that process is gone", self.directory, describe(previous)
            )
        record = {
            "pid": os.getpid(),
            "host": host,
            "process_start": _process_start(os.getpid()),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
        }
        try:
            os.ftruncate(handle, 0)
            os.pwrite(handle, (json.dumps(record) + "\n").encode(), 0)
            os.fsync(handle)
        except OSError as error:
            if disk_full(error):
                raise no_room(self.path, error) from None
            raise

    def _refuse(self, holder: dict) -> None:
        pid = holder.get("pid")
        stop = f"; wait for it to end, or stop it (kill -TERM {pid} saves a checkpoint and exits)" if pid else ""
        raise LockError(
            f"{self.what} {self.directory} is in use by {describe(holder)}{stop}, then run again. "
            "One run per directory: a second run would overwrite the first's checkpoints and models"
        )

    def release(self) -> None:
        with self._guard:
            held = self._held.get(self.path)
            if held is None:
                return
            held[1] -= 1
            if held[1]:
                return
            handle, _, created = self._held.pop(self.path)
            try:
                os.unlink(self.path)  # while still locked: a waiting process then opens a new file
            except OSError:
                pass
            os.close(handle)
            if created:  # the directories made for the lock, if nothing was written in them
                directory = self.directory
                while True:
                    try:
                        os.rmdir(directory)
                    except OSError:
                        break
                    if directory == created:
                        break
                    directory = os.path.dirname(directory)

    @classmethod
    def held(cls, directory: str) -> bool:
        """Whether this process holds the lock of `directory`."""
        return os.path.join(os.path.abspath(directory), LOCK_FILE) in cls._held
