"""The README's Python example runs as written, and its report holds the claims of that run."""

import json
import os
import re

import numpy as np
import pytest
from conftest import ROOT

# The README's run: one seed, both tasks get teachers, no held-out split. Per task, in this order:
TEACHER_TASK_CLAIMS = [
    "ensemble_vs_mean_member",
    "ensemble_vs_picked_member",
    "ensemble_vs_baseline",
    "student_vs_baseline",
    "kept_share",
]


def _expected_estimate(key: str, scores: dict) -> float | None:
    """A claim's estimate from the dev scores of the rows it compares (one run per row)."""
    members = [value for row, value in scores.items() if re.fullmatch(r"member_\d+", row)]
    return {
        "ensemble_vs_mean_member": scores["ensemble"] - np.mean(members),
        "ensemble_vs_picked_member": scores["ensemble"] - max(members),  # picked on dev: the best member
        "ensemble_vs_baseline": scores["ensemble"] - scores["baseline"],
        "student_vs_baseline": scores["student"] - scores["baseline"],
        "kept_share": None,  # asked only where the ensemble's gain is significant: never with one seed
    }[key]


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = readme.split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme_example"}
    exec(compile(code, "README.md:Python API", "exec"), namespace)
    report = namespace["report"]
    assert f"{report['results']['stsb']['pearson']}" in capsys.readouterr().out
    claims = report["claims"]
    assert {claim["task"] for claim in claims} == {"sst2", "stsb"}
    for task in ("sst2", "stsb"):
        assert [claim["key"] for claim in claims if claim["task"] == task] == TEACHER_TASK_CLAIMS
    for claim in claims:
        assert claim["split"] == "dev", claim
        expected = _expected_estimate(claim["key"], report["results"][claim["task"]][claim["metric"]])
        if expected is None:
            assert claim["estimate"] is None and claim["verdict"] == "untested", claim
        else:
            assert claim["estimate"] == pytest.approx(expected, abs=1e-9), claim
            assert claim["low"] <= claim["estimate"] <= claim["high"], claim
        if claim["key"] != "ensemble_vs_mean_member":  # the members are 2 runs; every other side is one
            assert claim["verdict"] == "untested" and claim["p_adjusted"] is None, claim
    assert os.path.isfile(tmp_path / "runs/api/serving/1/saved_model.pb")
    checks = json.load(open(tmp_path / "runs/api/soft_labels/teacher_check.json"))  # the default: skip
    distilled = [
        f"{task}.npz"
        for task, check in checks["tasks"].items()
        if check["decision"] != "failed: hard labels only (skip)"
    ]
    assert set(distilled) <= set(os.listdir(tmp_path / "runs/api/soft_labels")), checks
