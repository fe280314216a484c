"""CI runs every test: it installs the test extra and the transformers peer, and a test skipped
there because a module is missing fails (a skipped parity test is a test that cannot fail)."""

import os
import re
import subprocess
import sys

from conftest import ROOT

MISSING_PEER = """\
import sys
import pytest

def test_parity(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were not installed
    pytest.importorskip("transformers")

def test_skipped_for_another_reason():
    pytest.skip("not a missing module")
"""

MISSING_AT_MODULE_LEVEL = """\
import sys
import pytest

sys.modules["torch"] = None
torch = pytest.importorskip("torch")

def test_parity():
    pass
"""


def _pytest(tmp_path, ci):
    (tmp_path / "test_peer_runtime.py").write_text(MISSING_PEER)
    (tmp_path / "test_peer_module.py").write_text(MISSING_AT_MODULE_LEVEL)
    env = dict(os.environ, CI=ci, PYTHONPATH=os.path.join(ROOT, "tests"))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rA",
            "-n",
            "0",
            "-p",
            "no:cacheprovider",
            "-p",
            "conftest",
            "-c",
            os.devnull,
            "--continue-on-collection-errors",
            "--rootdir",
            str(tmp_path),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=tmp_path,
    )


def test_in_ci_a_test_skipped_for_a_missing_module_fails(tmp_path):
    result = _pytest(tmp_path, "true")
    assert result.returncode == 1, result.stdout[-3000:]
    assert "FAILED test_peer_runtime.py::test_parity - could not import 'transformers'" in result.stdout
    assert "ERROR test_peer_module.py - could not import 'torch'" in result.stdout, result.stdout[-3000:]
    assert "SKIPPED [1] test_peer_runtime.py:9: not a missing module" in result.stdout
    elsewhere = _pytest(tmp_path, "")
    assert elsewhere.returncode == 0 and "3 skipped" in elsewhere.stdout, elsewhere.stdout[-3000:]


def test_ci_installs_the_transformers_peer_and_says_it_is_ci():
    script = open(os.path.join(ROOT, ".ci", "run")).read()
    assert "-r benchmarks/requirements-peer.txt" in script and "CI=true" in script


def test_ci_lints_with_the_pinned_ruff_before_the_tests():
    script = open(os.path.join(ROOT, ".ci", "run")).read()
    lint = script.index("ruff check . && .venv/bin/ruff format --check .")
    assert lint < script.index("-m pytest")
    setup = open(os.path.join(ROOT, "setup.py")).read()
    assert re.search(r'"ruff==[0-9.]+"', setup), "the test extra pins ruff"
    config = open(os.path.join(ROOT, "pyproject.toml")).read()
    assert "[tool.ruff]" in config and "line-length = 120" in config
