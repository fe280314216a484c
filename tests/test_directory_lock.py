"""One run per directory: a second process stops at once naming the first, a stale lock is taken over."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
from child_runs import Child, run

from mtkd_tf.runtime import directory_lock
from mtkd_tf.runtime.directory_lock import DirectoryLock, LockError
from mtkd_tf.training import train as training

TINY = ["--flagfile=configs/tiny.cfg", "--suite_size=96", "--epochs=2", "--seed=7", "--checkpoint_every_steps=5"]


@pytest.fixture()
def holder(tmp_path):
    """Another process holding the lock of a directory the way mtkd_tf does (flock + what it writes)."""
    directory = tmp_path / "held"
    code = textwrap.dedent(f"""
        import fcntl, json, os, sys, time
        os.makedirs({str(directory)!r}, exist_ok=True)
        handle = os.open({str(directory / directory_lock.LOCK_FILE)!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(handle, fcntl.LOCK_EX)
        os.write(handle, json.dumps({{"pid": os.getpid(), "host": {socket.gethostname()!r},
                                     "started": "2026-12-03T08:00:00+00:00",
                                     "command": "bin/run --mode=train"}}).encode())
        print("held", flush=True)
        time.sleep(120)
    """)
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    yield directory, process.pid
    process.kill()
    process.wait()


def test_a_directory_held_by_another_process_is_refused_naming_it(holder, tmp_path):
    directory, pid = holder
    with pytest.raises(
        LockError,
        match=rf"model_dir {re.escape(str(directory))} is in use by pid {pid} on host "
        rf"{re.escape(socket.gethostname())}, started 2026-12-03T08:00:00\+00:00 \(bin/run --mode=train\); "
        rf"wait for it to end, or stop it \(kill -TERM {pid} saves a checkpoint and exits\)",
    ):
        DirectoryLock(str(directory), "model_dir").acquire()
    # training a model there (a stage directory in use) is refused the same way, before any step
    with pytest.raises(LockError, match=rf"model directory {re.escape(str(directory))} is in use by pid {pid}"):
        training.fit(None, None, None, str(directory))


def test_the_lock_is_reentrant_names_this_process_and_is_removed_on_release(tmp_path):
    directory = tmp_path / "made" / "mine"
    with DirectoryLock(str(directory)) as lock:
        with DirectoryLock(str(directory)):  # a stage inside the run locks it again
            assert DirectoryLock.held(str(directory))
        written = json.loads((directory / directory_lock.LOCK_FILE).read_text())
        assert written["pid"] == os.getpid() and written["host"] == socket.gethostname()
        assert written["started"] and written["command"]
        assert lock.holder() == written
    assert not (directory / directory_lock.LOCK_FILE).exists()
    assert not (tmp_path / "made").exists()  # made for the lock, nothing written: removed again
    with DirectoryLock(str(directory), create=False):  # a reader's lock makes nothing
        assert not directory.exists()


@pytest.fixture()
def dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_stale_lock_on_this_host_is_taken_over_with_a_warning(tmp_path, dead_pid, caplog):
    directory = tmp_path / "stale"
    directory.mkdir()
    record = {"pid": dead_pid, "host": socket.gethostname(), "started": "2026-12-01T10:00:00+00:00", "command": "x"}
    (directory / directory_lock.LOCK_FILE).write_text(json.dumps(record))
    with DirectoryLock(str(directory)):
        assert json.loads((directory / directory_lock.LOCK_FILE).read_text())["pid"] == os.getpid()
    assert (
        f"taking over the lock of {directory} left by pid {dead_pid} on host {socket.gethostname()}, started "
        "2026-12-01T10:00:00+00:00 (x): that process is gone"
    ) in caplog.text
    # a pid reused by another program (its start time differs) is gone too
    record.update(pid=os.getppid(), process_start="1")
    (directory / directory_lock.LOCK_FILE).write_text(json.dumps(record))
    with DirectoryLock(str(directory)):
        pass
    assert f"left by pid {os.getppid()}" in caplog.text


def test_a_lock_written_on_another_host_is_refused_with_what_to_do(tmp_path):
    directory = tmp_path / "remote"
    directory.mkdir()
    record = {"pid": 4242, "host": "other-machine", "started": "2026-12-01T10:00:00+00:00"}
    (directory / directory_lock.LOCK_FILE).write_text(json.dumps(record))
    with pytest.raises(
        LockError,
        match=rf"may be in use by pid 4242 on host other-machine, started .*another machine "
        rf"whose process cannot be checked from here; if that run is gone, delete "
        rf"{re.escape(str(directory / directory_lock.LOCK_FILE))} and run again",
    ):
        DirectoryLock(str(directory)).acquire()
    assert json.loads((directory / directory_lock.LOCK_FILE).read_text()) == record  # untouched


@pytest.mark.slow
def test_a_second_bin_run_on_a_model_dir_in_use_stops_at_once_naming_the_first(tmp_path):
    first = Child([*TINY, f"--model_dir={tmp_path}", "--progress_seconds=0.001"])
    first.wait_for(lambda: first.logged("MT-DNN: step 2/"))
    first.send(signal.SIGSTOP)  # paused mid-training (still holding the lock) while the second one starts
    try:
        status, err = run([*TINY, f"--model_dir={tmp_path}"])
        assert status == 2, err[-3000:]
        assert re.search(
            rf"error: model_dir {re.escape(str(tmp_path))} is in use by pid {first.pid} on host "
            rf"{re.escape(socket.gethostname())}, started \S+ \(\S*bin/run --flagfile=configs/tiny.cfg .*\); "
            rf"wait for it to end, or stop it \(kill -TERM {first.pid} saves a checkpoint and exits\)",
            err,
        ), err[-3000:]
        assert "Epoch 1/" not in err and "train: MT-DNN" not in err  # stopped before any work
        assert first.process.poll() is None  # the first run goes on
    finally:
        first.send(signal.SIGCONT)
        first.send(signal.SIGTERM)
        assert first.finish() == 143, first.stderr[-3000:]
    assert not (tmp_path / directory_lock.LOCK_FILE).exists()


@pytest.mark.slow
def test_bin_run_takes_over_a_stale_lock_with_a_warning(tmp_path, dead_pid):
    record = {"pid": dead_pid, "host": socket.gethostname(), "started": "2026-12-01T10:00:00+00:00"}
    (tmp_path / directory_lock.LOCK_FILE).write_text(json.dumps(record))
    status, err = run([*TINY, "--mode=evaluate", f"--model_dir={tmp_path}"])  # no model there: fails after the lock
    assert f"taking over the lock of {tmp_path} left by pid {dead_pid}" in err, err[-3000:]
    assert status == 2 and f"error: model directory {tmp_path}: missing model.keras" in err, err[-3000:]
    assert not (tmp_path / directory_lock.LOCK_FILE).exists()
