"""A polite stop: on SIGTERM or SIGINT a run finishes its current step, saves its state there and exits.

Pre-emptible machines (spot VMs, TPU VMs, Kubernetes pods) get SIGTERM and are killed a grace
period later; Ctrl-C sends SIGINT. While `stop_on_signals` is active (`bin/run` and every stage
of an `Experiment`), either signal only records the request. The work checks it where its state
can be saved: training after every step (`checkpointing.StopOnRequest` saves a checkpoint at that
step), soft labelling after every chunk, evaluation after every model's outputs on a split. There
it raises `Preempted`, which `bin/run` turns into exit status 128 + the signal's number (143 for
SIGTERM, 130 for SIGINT); running the same command again resumes from what was saved.

If no such point comes within `stop_grace_seconds`, the process exits by itself with the same
status (its earlier checkpoints are kept; every file is written atomically); 0 waits as long as
the step takes. A second signal stops at once, as it would without mtkd_tf. A signal the process
inherited as ignored (`nohup`) stays ignored.

>>> with stop_on_signals(grace_seconds=25):
...     experiment.run()      # SIGTERM -> checkpoint at the current step -> Preempted
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from typing import Iterator

from mtkd_tf.errors import MtkdError

logger = logging.getLogger("mtkd_tf")

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(MtkdError):
    """The run stopped on a signal after saving its state; the same command resumes it.

    `exit_status` is what `bin/run` exits with: 128 + the signal's number.
    """

    def __init__(self, message: str, signal_number: int = signal.SIGTERM):
        super().__init__(message)
        self.signal_number = int(signal_number)

    @property
    def exit_status(self) -> int:
        return 128 + self.signal_number


class _Requests:
    """The process's stop request: which signal, when, and the handlers it replaced."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.received = 0.0
        self.depth = 0
        self.grace = 0.0
        self.previous: dict[int, object] = {}
        self.timer: threading.Timer | None = None


_requests = _Requests()


def signal_name(number: int) -> str:
    return signal.Signals(number).name


def requested() -> int | None:
    """The signal that asked this process to stop (None: no request)."""
    return _requests.signal


def stopped(where: str, number: int | None = None) -> Preempted:
    """The `Preempted` of a stop `where` (what was saved there, e.g. "after soft-label chunk X")."""
    number = number or _requests.signal or signal.SIGTERM
    return Preempted(f"stopped by {signal_name(number)} {where}; run the same command again to resume", number)


def check(where: str) -> None:
    """Raises `Preempted` (see `stopped`) if a stop was requested."""
    if _requests.signal is not None:
        raise stopped(where)


_agreements: dict[int, object] = {}


def agree(strategy, local: int | None) -> int | None:
    """The stop decision all workers of a multi-worker run share: the sum of their requests,
    all-reduced after the same step on every worker, so all of them save that step and stop.
    Returns this worker's signal, SIGTERM when only another worker was asked, or None."""
    import tensorflow as tf

    reduce = _agreements.get(id(strategy))
    if reduce is None:

        @tf.function
        def reduce(flag):
            return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(tf.identity, args=(flag,)), axis=None)

        _agreements[id(strategy)] = reduce
    total = reduce(tf.constant([1 if local else 0], tf.int32))
    if int(total.numpy().reshape(-1)[0]) == 0:
        return None
    return local or signal.SIGTERM


def _handle(number: int, frame) -> None:
    if _requests.signal is not None:  # a second signal: stop at once, as without us
        previous = _requests.previous.get(number, signal.SIG_DFL)
        signal.signal(number, previous if previous is not None else signal.SIG_DFL)
        os.kill(os.getpid(), number)
        return
    _requests.signal, _requests.received = number, time.time()
    grace = _requests.grace
    print(
        f"{signal_name(number)} received: finishing the current step and saving a checkpoint there"
        + (f" (within {grace:g} s)" if grace else "")
        + "; send it again to stop at once",
        file=sys.stderr,
        flush=True,
    )
    if grace:
        _requests.timer = threading.Timer(grace, _deadline, args=(number, grace))
        _requests.timer.daemon = True
        _requests.timer.start()


def _deadline(number: int, grace: float) -> None:
    """The grace period is over before a save point: exit now (the earlier checkpoints stay)."""
    print(
        f"error: stopped by {signal_name(number)}: no step ended within stop_grace_seconds={grace:g}; exiting "
        "without a new checkpoint (the previous one is kept); run the same command again to resume from it",
        file=sys.stderr,
        flush=True,
    )
    os._exit(128 + number)


def reclaim() -> None:
    """Installs the handlers again if `stop_on_signals` is active. TensorFlow's multi-worker runtime
    (its coordination service's preemption notifier) replaces the SIGTERM handler when
    MultiWorkerMirroredStrategy starts, and then only records the signal for its own
    `PreemptionCheckpointHandler`: call this after creating a strategy."""
    if _requests.depth and threading.current_thread() is threading.main_thread():
        for number in _requests.previous:
            signal.signal(number, _handle)


@contextlib.contextmanager
def stop_on_signals(grace_seconds: float = 25.0) -> Iterator[None]:
    """While active, SIGTERM and SIGINT request a stop instead of ending the process (see the
    module docstring). Nested uses share the outer one; outside the main thread it does nothing."""
    if _requests.depth:
        _requests.depth += 1
        reclaim()
        try:
            yield
        finally:
            _requests.depth -= 1
        return
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    installed = {}
    for number in SIGNALS:
        current = signal.getsignal(number)
        if current == signal.SIG_IGN:
            continue
        installed[number] = current
        signal.signal(number, _handle)
    _requests.previous, _requests.grace, _requests.depth = installed, float(grace_seconds), 1
    try:
        yield
    finally:
        _requests.depth = 0
        if _requests.timer is not None:
            _requests.timer.cancel()
        for number, previous in installed.items():
            signal.signal(number, previous if previous is not None else signal.SIG_DFL)
        _requests.signal, _requests.timer, _requests.previous = None, None, {}
