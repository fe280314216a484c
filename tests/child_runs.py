"""`bin/run` as a child process that a test can signal, limit and watch (the fault tests' helper)."""

import os
import resource
import signal
import subprocess
import sys
import threading
import time

from conftest import ROOT

BIN = os.path.join(ROOT, "bin", "run")


def _child_setup():
    """In the child, before exec: signals as an interactive shell leaves them, and SIGXFSZ ignored so
    that a write past RLIMIT_FSIZE fails with EFBIG instead of killing the process."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


class Child:
    """A running `bin/run` whose stderr is collected line by line (a pipe: a file-size limit on the
    child must not hit its log)."""

    def __init__(self, args, env=None):
        environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
        self.process = subprocess.Popen(
            [sys.executable, BIN, *map(str, args)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
            cwd=ROOT,
            preexec_fn=_child_setup,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.process.stderr:
            self.lines.append(line)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def wait_for(self, condition, timeout: float = 300) -> None:
        """Waits until `condition()` holds (checked every 20 ms) while the child runs."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if condition():
                return
            if self.process.poll() is not None:
                raise AssertionError(
                    f"the run ended (status {self.process.returncode}) before the awaited point:\n"
                    + self.stderr[-3000:]
                )
            time.sleep(0.02)
        raise AssertionError("timed out waiting:\n" + self.stderr[-3000:])

    def logged(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def send(self, number: int) -> None:
        self.process.send_signal(number)

    def limit_file_size(self, size: int) -> None:
        """RLIMIT_FSIZE of the running child: its next write past `size` bytes fails (EFBIG), as on a full disk."""
        resource.prlimit(self.pid, resource.RLIMIT_FSIZE, (size, size))

    def finish(self, timeout: float = 300) -> int:
        """Waits for the end; returns the exit status."""
        try:
            self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=10)
        return self.process.returncode


def run(args, env=None, timeout: float = 600) -> tuple[int, str]:
    """Runs `bin/run` to its end: (exit status, stderr)."""
    child = Child(args, env)
    return child.finish(timeout), child.stderr
