"""`ExperimentLayout`: every path and row name of an experiment directory, in one place.

    <root>/teachers/member_<k>/                 the pool (selection.json: the members kept)
    <root>/teachers/finetuned/<task>/member_<k>/ a member fine-tuned on a teacher task
    <root>/gate.json, soft_labels/<task>.npz
    <root>/student/, student_s2/, ...           seed runs (report rows student, student_s2, ...)
    <root>/baseline/, baseline_s2/, ...
    <root>/student_anneal/, student_r1/ (+ soft_labels_r1/)   the variants beyond the paper
    <root>/student-finetuned/<task>/, ...       fine-tuned copies (rows student_ft, student_ft_s2, ...)
    <root>/report_inputs.json, report_outputs.npz, report.json, report.md

The stages write where it says and the report reads rows by asking it, so no name is built in
one module and parsed in another.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Callable, Sequence

SELECTION_FILE = "selection.json"  # the teacher pool's scores and the members kept
GATE_FILE = "gate.json"  # the ensemble against baseline run 0 on dev, before any student trains
SEEDED = ("student", "baseline", "student_ft", "baseline_ft")  # rows repeated with `seeds`
_RUN = re.compile(r"^(student|baseline|student_ft|baseline_ft)(?:_s(\d+))?$")
_VARIANT = re.compile(r"^student_(anneal|r(\d+))$")


def run_row(name: str, run: int) -> str:
    """The report row of seed run `run` (0-based) of `name`: `student`, `student_s2`, `student_s3`, ..."""
    return name if run == 0 else f"{name}_s{run + 1}"


def seed_runs(rows: Sequence[str]) -> dict[str, list[str]]:
    """`{"student": ["student", "student_s2", ...], ...}` for each of `SEEDED` in `rows`."""
    runs: dict[str, list[str]] = {}
    for row in rows:
        match = _RUN.match(row)
        if match:
            runs.setdefault(match.group(1), []).append(row)
    return runs


def members(rows: Sequence[str]) -> list[str]:
    """The teacher members among report rows."""
    return [row for row in rows if row.startswith("member_")]


def variant(row: str) -> str | None:
    """What a variant row is ("teacher annealing", "self-distillation round 1"), or None."""
    match = _VARIANT.match(row)
    if not match:
        return None
    return "teacher annealing" if match.group(1) == "anneal" else f"self-distillation round {match.group(2)}"


@dataclasses.dataclass
class ExperimentLayout:
    """The directories of one experiment (defaults under `root`) and the rows they make."""

    root: str
    teacher_dir: str = ""
    soft_labels_dir: str = ""
    student_dir: str = ""
    baseline_dir: str = ""
    seeds: int = 1
    train_baseline: bool = True
    compare_anneal: bool = False
    self_distill_rounds: int = 0

    def __post_init__(self):
        self.teacher_dir = self.teacher_dir or os.path.join(self.root, "teachers")
        self.soft_labels_dir = self.soft_labels_dir or os.path.join(self.root, "soft_labels")
        self.student_dir = self.student_dir or os.path.join(self.root, "student")
        self.baseline_dir = self.baseline_dir or os.path.join(self.root, "baseline")

    @classmethod
    def of(cls, config, where: Callable[[str], str] = lambda path: path) -> "ExperimentLayout":
        """The layout `config` (an `ExperimentConfig`) asks for; `where` maps each configured
        directory (a non-chief worker's scratch copy, in multi-worker runs)."""
        teachers, distillation = config.teachers, config.distillation
        chosen = lambda path: where(path) if path else ""  # noqa: E731
        return cls(
            chosen(config.runtime.model_dir),
            chosen(teachers.teacher_dir),
            chosen(distillation.soft_labels_dir),
            chosen(distillation.student_dir),
            seeds=distillation.seeds,
            train_baseline=distillation.train_baseline,
            compare_anneal=distillation.compare_anneal,
            self_distill_rounds=distillation.self_distill_rounds,
        )

    # --- teachers -------------------------------------------------------------------------------
    @property
    def selection_file(self) -> str:
        return os.path.join(self.teacher_dir, SELECTION_FILE)

    @property
    def gate_file(self) -> str:
        return os.path.join(self.root, GATE_FILE)

    def member_dir(self, name: str) -> str:
        return os.path.join(self.teacher_dir, name)

    @staticmethod
    def finetuned_member_dir(directory: str, task: str) -> str:
        """Where member `directory`'s copy fine-tuned on `task` goes: `<parent>/finetuned/<task>/<name>`."""
        parent, name = os.path.split(os.path.normpath(directory))
        return os.path.join(parent, "finetuned", task, name)

    # --- the student side -------------------------------------------------------------------------
    def run_dir(self, name: str, run: int) -> str:
        """Seed run `run` (0-based) of "student" or "baseline": its directory, then `<dir>_s2`, ..."""
        directory = os.path.normpath(self.student_dir if name == "student" else self.baseline_dir)
        return directory if run == 0 else f"{directory}_s{run + 1}"

    def seeded_dirs(self) -> dict[tuple[str, int], str]:
        """`{("student" | "baseline", run): directory}` for every seed run."""
        names = ["student"] + (["baseline"] if self.train_baseline else [])
        return {(name, run): self.run_dir(name, run) for run in range(self.seeds) for name in names}

    def variant_dirs(self) -> dict[str, str]:
        """The students beyond the paper by report row: `student_anneal`, `student_r1`, ..."""
        student = os.path.normpath(self.student_dir)
        rows = {"student_anneal": f"{student}_anneal"} if self.compare_anneal else {}
        rows.update({f"student_r{n}": f"{student}_r{n}" for n in range(1, self.self_distill_rounds + 1)})
        return rows

    def round_soft_labels_dir(self, number: int) -> str:
        """Soft labels of self-distillation round `number` (the previous round's student's)."""
        return os.path.join(self.root, f"soft_labels_r{number}")

    def model_dirs(self) -> dict[str, str]:
        """The student-side models by report row: student, baseline, their seed runs, the variants."""
        return {**{run_row(name, run): d for (name, run), d in self.seeded_dirs().items()}, **self.variant_dirs()}

    @staticmethod
    def finetuned_dirs(directory: str, tasks: Sequence[str]) -> dict[str, str]:
        """`{task: directory}` of a student's or baseline's per-task fine-tuned copies."""
        return {task: os.path.join(f"{os.path.normpath(directory)}-finetuned", task) for task in tasks}
