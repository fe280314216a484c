"""The README's Python example runs as written."""

import os
import re

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = readme.split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md:Python API", "exec"), {"__name__": "readme_example"})
    printed = capsys.readouterr().out
    assert "sst2" in printed and "pearson" in printed
    assert os.path.isfile(tmp_path / "runs/api/serving/1/saved_model.pb")
    assert sorted(os.listdir(tmp_path / "runs/api/soft_labels")) == ["sst2.npz", "stsb.npz"]
