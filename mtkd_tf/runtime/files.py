"""File helpers every module shares: atomic writes (text, bytes, JSON, .npz, whole directories), SHA-256,
and what a full disk means.

Every output is written under a temporary name in its directory and renamed, so a crash
never leaves a half-written file that a later stage would accept. A write that fails for want
of room (ENOSPC, EDQUOT, or EFBIG past a file-size limit) raises `DiskFullError` naming the
file: the run stops, everything written before stays, and the same command resumes once there
is room.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import tempfile
import uuid
from typing import Any, Iterator, Mapping

import numpy as np

from mtkd_tf.errors import MtkdError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class DiskFullError(MtkdError):
    """A write failed for want of room; the message names the file and what was kept."""


def disk_full(error: BaseException) -> bool:
    """Whether `error` is a write that failed for want of room (h5py and TensorFlow report
    the errno only in their message)."""
    if isinstance(error, OSError) and error.errno in DISK_FULL:
        return True
    text = str(error)
    return any(marker in text for marker in ("No space left on device", "File too large", "Disk quota exceeded"))


def no_room(path: str, error: BaseException, kept: str = "") -> DiskFullError:
    """The `DiskFullError` of a failed write of `path` (`kept`: what stays, e.g. the last checkpoint)."""
    reason = os.strerror(error.errno) if isinstance(error, OSError) and error.errno in DISK_FULL else str(error)[:200]
    return DiskFullError(
        f"no room to write {path} ({reason}); the run stopped{'; ' + kept if kept else ''}. "
        "Everything written before is intact: free some space (or raise the quota or file-size "
        "limit) and run the same command again to resume"
    )


def fsync_directory(directory: str) -> None:
    """Makes a rename in `directory` durable (a crash after it cannot undo it)."""
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


PARTIAL = ".partial"  # the folder of work in progress that a re-run resumes from


def write_atomic(path: str, text: str | bytes) -> None:
    """Writes `text` to `path` via a temporary file in the same directory and a rename."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        binary = isinstance(text, bytes)
        with os.fdopen(handle, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        if os.path.exists(temporary):
            os.remove(temporary)
        if disk_full(error) and not isinstance(error, DiskFullError):
            raise no_room(path, error) from None
        raise


def write_npz(path: str, arrays: Mapping[str, Any], compressed: bool = False) -> None:
    """NumPy arrays as one `.npz` archive (`np.savez`, or `np.savez_compressed`), written atomically."""
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    write_atomic(path, buffer.getvalue())


def write_json(path: str, value: Any) -> None:
    """`value` as indented JSON, written atomically."""
    write_atomic(path, json.dumps(value, indent=2, sort_keys=False) + "\n")


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def sha256(path: str) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_empty_target(path: str) -> bool:
    """Whether `path` can receive a new directory: it does not exist, or is an empty directory."""
    return not os.path.exists(path) or (os.path.isdir(path) and not os.listdir(path))


@contextlib.contextmanager
def new_directory(target: str) -> Iterator[str]:
    """Writes a whole directory at once: yields a temporary sibling of `target` to fill, renamed
    to `target` when the block ends without error (removed otherwise), so a crash never leaves a
    half-written `target`. `target` must not exist or be empty: nothing already written is replaced.

    >>> with new_directory("exports/preset") as staging:
    ...     write_json(os.path.join(staging, "config.json"), {})
    """
    if not is_empty_target(target):
        raise FileExistsError(f"{target} exists and is not empty")
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    staging = os.path.join(
        parent, f".tmp-{os.path.basename(os.path.abspath(target))}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    )
    os.mkdir(staging)  # (not mkdtemp: the directory gets the user's usual permissions)
    try:
        yield staging
        if os.path.isdir(target):
            os.rmdir(target)  # empty (checked above)
        os.replace(staging, target)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging)


def not_utf8(data: bytes, error: UnicodeDecodeError) -> str:
    """`<line>: bytes that are not UTF-8 (...); re-encode ...`: where a text file stops decoding, for messages."""
    line = data[: error.start].count(b"\n") + 1
    return f"{line}: bytes that are not UTF-8 ({error.reason} at byte {error.start}); re-encode the file as UTF-8"
