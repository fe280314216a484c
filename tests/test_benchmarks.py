"""benchmarks/run keeps working: a tiny smoke run prints the table and writes the JSON.

Speed targets are not asserted here (they live in benchmarks/, measured by `benchmarks/run`).
"""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_benchmark_smoke_run_prints_every_overhead_figure(tmp_path):
    output = tmp_path / "bench.json"
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "run"),
            "--size=tiny",
            "--steps=2",
            "--rounds=1",
            "--figures=overhead,input_pipeline",
            f"--output={output}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| kd_overhead (c/b step time) |" in result.stdout
    report = json.loads(output.read_text())
    names = [figure["name"] for figure in report["figures"]]
    for name in (
        "matmul_peak_fp32",
        "mtdnn_overhead (b/a step time)",
        "flops_efficiency (b, fp32)",
        "input_pipeline / train step rate",
    ):
        assert name in names
    raw = report["raw"]
    assert raw["b_mtdnn"] > 0 and raw["flops_per_step"] > 0 and raw["d_distiller_online"] > raw["teacher_forward"] > 0


@pytest.mark.slow
def test_benchmark_runs_each_figure_with_onednn_on_and_off_and_prints_the_ratio(tmp_path):
    output = tmp_path / "bench.json"
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "run"),
            "--size=tiny",
            "--figures=input_pipeline",
            "--onednn=both",
            f"--output={output}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    # Each child ran with the setting it was given, as TensorFlow itself reports it.
    assert report["on"]["setup"]["onednn"].startswith("on: TF_ENABLE_ONEDNN_OPTS=1")
    assert report["off"]["setup"]["onednn"].startswith("off: TF_ENABLE_ONEDNN_OPTS=0")
    assert "| raw figure | oneDNN on | oneDNN off | on / off |" in result.stdout
    peak = next(row for row in report["table"] if row.startswith("| matmul_peak_fp32 |"))
    on, off, ratio = (float(cell) for cell in peak.strip("| ").split(" | ")[1:])
    assert ratio == pytest.approx(on / off, rel=0.01)
