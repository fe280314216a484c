"""Every committed experiment report rebuilds identically from its committed evidence."""

import glob
import os
import shutil

import pytest

from mtkd_tf.experiment import report as report_lib

ROOT = os.path.join(os.path.dirname(__file__), "..", "docs", "results")
RUNS = sorted(os.path.dirname(path) for path in glob.glob(os.path.join(ROOT, "*", report_lib.INPUTS)))


def test_there_are_committed_runs():
    assert RUNS, f"no committed run with {report_lib.INPUTS} under {ROOT}"


@pytest.mark.parametrize("run", RUNS, ids=os.path.basename)
def test_committed_report_rebuilds_byte_identically(run, tmp_path):
    copy = tmp_path / "run"
    os.makedirs(copy)
    for name in (report_lib.INPUTS, report_lib.OUTPUTS):
        shutil.copy(os.path.join(run, name), copy / name)
    report_lib.rebuild(str(copy))
    for name in ("report.json", "report.md"):
        with open(os.path.join(run, name), "rb") as committed, open(copy / name, "rb") as rebuilt:
            assert rebuilt.read() == committed.read(), f"{name} of {run} does not rebuild identically"
