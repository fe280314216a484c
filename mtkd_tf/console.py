"""A quiet start on machines without a GPU: TensorFlow's C++ start-up lines filtered from stderr.

TensorFlow's CPU-and-GPU wheel logs, at every start on a machine without a GPU,
`failed call to cuInit: ... UNKNOWN ERROR (303)` and a few notes about oneDNN and CPU
instructions. They are harmless and alarm a newcomer. `bin/run` calls
`filter_startup_noise()` before TensorFlow loads: stderr then goes through a pipe that
drops exactly those lines (listed in `NOISE`) and passes everything else through.
Set `MTKD_RAW_STDERR=1` to see them; on a machine with an NVIDIA device nothing is filtered.
"""

from __future__ import annotations

import atexit
import glob
import os
import re
import sys
import threading

NOISE = re.compile(
    r"cuda_platform\.cc:\d+\] failed call to cuInit"
    r"|cudart_stub\.cc:\d+\] Could not find cuda drivers"
    r"|port\.cc:\d+\] oneDNN custom operations are on"
    r"|cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized"
    r"|^To enable the following instructions:"
    r"|^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|util\.cc:\d+\] oneDNN supports DT_INT64 only on platforms with AVX-512"
)


def has_gpu() -> bool:
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def filter_startup_noise() -> bool:
    """Routes fd 2 through a filter that drops `NOISE` lines; returns whether it did."""
    if os.environ.get("MTKD_RAW_STDERR") or has_gpu():
        return False
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward() -> None:
        with os.fdopen(read_end, "rb") as lines, os.fdopen(original, "wb", buffering=0) as out:
            for line in lines:
                if not NOISE.search(line.decode("utf-8", "replace")):
                    out.write(line)

    thread = threading.Thread(target=forward, name="stderr-filter", daemon=True)
    thread.start()

    def finish() -> None:
        sys.stderr.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)  # closes the pipe's last write end: the thread drains and ends
        os.close(devnull)
        thread.join(timeout=5)

    atexit.register(finish)
    return True
