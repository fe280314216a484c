"""The polite stop itself: a signal becomes a request, the grace period ends a stuck process, a second
signal stops at once, an inherited ignore is kept. (bin/run end to end: test_resume.py, test_faults.py.)"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import ROOT

from mtkd_tf.training import preemption

# The child loads mtkd_tf.training.preemption without the package's __init__ (TensorFlow): a bare package module.
CHILD = textwrap.dedent(f"""
    import sys, time, types
    package = types.ModuleType("mtkd_tf")
    package.__path__ = [{os.path.join(ROOT, "mtkd_tf")!r}]
    sys.modules["mtkd_tf"] = package
    from mtkd_tf.training import preemption
    with preemption.stop_on_signals(float(sys.argv[1])):
        print("ready", flush=True)
        time.sleep(60)  # a step that does not end
""")


def _child(grace):
    process = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(grace)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert process.stdout.readline().strip() == "ready"
    return process


def test_a_step_that_does_not_end_within_the_grace_period_exits_with_the_signal_status():
    process = _child(0.5)
    sent = time.time()
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 143, err
    assert time.time() - sent < 20
    assert "SIGTERM received: finishing the current step and saving a checkpoint there (within 0.5 s)" in err
    assert (
        "error: stopped by SIGTERM: no step ended within stop_grace_seconds=0.5; exiting without a new checkpoint "
        "(the previous one is kept); run the same command again to resume from it"
    ) in err


def test_a_second_signal_stops_at_once():
    process = _child(0)  # no deadline: only the second signal ends it
    process.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert process.poll() is None  # the first one is only a request
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode != 0 and "KeyboardInterrupt" in err  # Python's own SIGINT behaviour
    assert "SIGINT received" in err and "send it again to stop at once" in err


def test_a_signal_is_a_request_that_work_checks_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with preemption.stop_on_signals(0):
        assert preemption.requested() is None
        preemption.check("here")  # nothing requested: no-op
        os.kill(os.getpid(), signal.SIGTERM)
        assert preemption.requested() == signal.SIGTERM
        with pytest.raises(
            preemption.Preempted, match="stopped by SIGTERM after step 3; run the same command again to resume"
        ) as stopped:
            preemption.check("after step 3")
        assert stopped.value.exit_status == 143
    assert signal.getsignal(signal.SIGTERM) == before and preemption.requested() is None


def test_an_inherited_ignore_is_kept(monkeypatch):
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as under nohup
    try:
        with preemption.stop_on_signals(0):
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_IGN, signal.SIG_DFL)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert preemption.Preempted("x", signal.SIGINT).exit_status == 130
