"""The gate of a pre-registered experiment, and the report of a run that it stopped.

The paper's claims need an ensemble better than one model. Before any student trains, the
selected ensemble is compared with baseline run 0 on dev (each teacher task's first metric, x100,
averaged); it must beat it by more than `gate_margin`. The comparison goes to gate.json with what
the report needs (the run's settings and environment), so a closed gate's report is rebuilt from
that file alone (`untestable_report`), as `--mode=report` rebuilds every other report.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from mtkd_tf.distill import ensemble
from mtkd_tf.experiment.layout import ExperimentLayout
from mtkd_tf.experiment.stages import Stage
from mtkd_tf.models import evaluation, inference
from mtkd_tf.models import model_dir as model_dir_lib
from mtkd_tf.runtime.environment import environment
from mtkd_tf.runtime.files import read_json, write_atomic, write_json

logger = logging.getLogger("mtkd_tf")

EVIDENCE = "evidence"  # gate.json's field with the run's settings and environment


class Gate(Stage):
    """The ensemble against baseline run 0 on dev (see the module docstring); a closed gate
    stops the pipeline with `untestable_report`."""

    name = "gate"

    def inputs(self) -> list[str]:
        return [self.layout.run_dir("baseline", 0)] + [d for dirs in self.ctx.teachers.by_task().values() for d in dirs]

    def outputs(self) -> list[str]:
        return [self.layout.gate_file]

    def done(self) -> bool:
        saved = read_json(self.layout.gate_file) if os.path.isfile(self.layout.gate_file) else None
        return (
            bool(saved)
            and saved["margin"] == self.config.teachers.gate_margin
            and saved["members"] == self.ctx.teachers.by_task()
        )

    def result(self) -> dict:
        return read_json(self.layout.gate_file)

    def run(self) -> dict:
        margin, by_task = self.config.teachers.gate_margin, self.ctx.teachers.by_task()
        self.announce(f"the ensemble against the baseline on dev (margin {margin} points)")
        batch, dev = self.config.runtime.eval_batch_size, self.ctx.data.dev
        baseline = model_dir_lib.load(self.layout.run_dir("baseline", 0))
        scores = {}
        for task, directories in by_task.items():
            split = {task: dev[task]}
            _, averaged = ensemble.member_outputs([model_dir_lib.load(d) for d in directories], split, batch)
            scores[task] = {
                "ensemble": _first_metric(split, task, averaged),
                "baseline": _first_metric(split, task, inference.dev_outputs(baseline, split, batch)),
            }
        gain = float(np.mean([entry["ensemble"] - entry["baseline"] for entry in scores.values()]))
        opened = gain > margin
        verdict = (
            "testable"
            if opened
            else f"untestable: the ensemble does not beat one MT-DNN by the pre-set margin on dev (gain {gain:+.2f} "
            f"<= {margin} points)"
        )
        result = {
            "margin": margin,
            "gain": gain,
            "open": opened,
            "scores": scores,
            "members": by_task,
            "verdict": verdict,
        }
        evidence = {"config": self.config.to_dict(), "environment": environment(self.ctx.precision)}
        write_json(self.layout.gate_file, {**result, EVIDENCE: evidence})
        logger.info("gate: ensemble - baseline on dev %+.2f points (margin %s): %s", gain, margin, verdict)
        return result

    def stop_report(self, result: dict) -> dict | None:
        if result["open"]:
            return None
        report, text = untestable_report(self.layout.root)
        print(text)
        return report


def _first_metric(split: dict, task: str, outputs) -> float:
    """`task`'s first metric x100 of `outputs` on `split`."""
    return 100 * next(iter(evaluation.score_outputs(split, outputs)[task].values()))


def closed(root: str) -> bool:
    """Whether the experiment in `root` was stopped by a closed gate."""
    path = ExperimentLayout(root).gate_file
    return os.path.isfile(path) and not read_json(path)["open"]


def untestable_report(root: str) -> tuple[dict, str]:
    """report.json and report.md of a pipeline stopped by its closed gate, from gate.json alone."""
    saved = read_json(ExperimentLayout(root).gate_file)
    evidence = saved.pop(EVIDENCE, {})
    lines = [
        f"| {task} | {s['ensemble']:.2f} | {s['baseline']:.2f} | {s['ensemble'] - s['baseline']:+.2f} |"
        for task, s in saved["scores"].items()
    ]
    text = (
        "The paper's claims are untestable here: " + saved["verdict"] + ".\n\n| task (dev, first metric x100) "
        "| ensemble | baseline | gain |\n|---|---|---|---|\n"
        + "\n".join(lines)
        + "\n\nNo student was trained; change the teachers (a new pre-registration) and run again."
    )
    report = {
        "gate": saved,
        "claims": [],
        "verdict": "untestable",
        "config": evidence.get("config", {}),
        "environment": evidence.get("environment", {}),
    }
    write_json(os.path.join(root, "report.json"), report)
    write_atomic(os.path.join(root, "report.md"), text + "\n")
    return report, text
