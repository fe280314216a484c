"""`ExperimentLayout`: every path and row name of an experiment directory, in one place.

    <root>/teachers/member_<k>/                 the pool (selection.json: the members kept)
    <root>/teachers/finetuned/<task>/member_<k>/ a member fine-tuned on a teacher task
    <root>/gate.json, soft_labels/<task>.npz
    <root>/data/<task>.<kind>.jsonl             examples a stage made (e.g. augmented text)
    <root>/student/, student_s2/, ...           seed runs (report rows student, student_s2, ...)
    <root>/baseline/, baseline_s2/, ...
    <root>/student_anneal/, student_r1/ (+ soft_labels_r1/)   the variants beyond the paper
    <root>/student-finetuned/<task>/, ...       fine-tuned copies (rows student_ft, student_ft_s2, ...)
    <root>/.partial/<stage>/                    a stage's work in progress (removed when it finishes)
    <root>/report_inputs.json, report_outputs.npz, report.json, report.md

Every name pattern (`member_<k>`, `_s<n>`, `_ft`, `-finetuned`, `.partial/`) is built and parsed
here alone: the stages write where it says and the report reads rows by asking it. The two shapes
of fine-tuned copies (members under `finetuned/<task>/`, the student side beside the model as
`-finetuned/<task>`) are kept so that runs started before either was chosen resume; one method,
`finetuned_dir`, picks between them.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Callable, Sequence

from mtkd_tf.runtime.files import PARTIAL  # work in progress, which a re-run resumes from

SELECTION_FILE = "selection.json"  # the teacher pool's scores and the members kept
GATE_FILE = "gate.json"  # the ensemble against baseline run 0 on dev, before any student trains
SEEDED = ("student", "baseline", "student_ft", "baseline_ft")  # rows repeated with `seeds`
_MEMBER = re.compile(r"^member_(\d+)$")
_RUN = re.compile(r"^(student|baseline|student_ft|baseline_ft)(?:_s(\d+))?$")
_VARIANT = re.compile(r"^student_(anneal|r(\d+))$")


def member_name(index: int) -> str:
    """The name (directory and report row) of teacher member `index`: `member_<index>`."""
    return f"member_{index}"


def member_index(name: str) -> int | None:
    """The index of member `name` (`member_3` -> 3), or None when `name` is not a member."""
    match = _MEMBER.match(name)
    return int(match.group(1)) if match else None


def member_dirs(teacher_dir: str) -> list[str]:
    """Every finished member directory under `teacher_dir`, in index order (none if it is missing)."""
    from mtkd_tf.models import model_dir as model_dir_lib

    if not os.path.isdir(teacher_dir):
        return []
    found = sorted((name for name in os.listdir(teacher_dir) if member_index(name) is not None), key=member_index)
    return [os.path.join(teacher_dir, name) for name in found if model_dir_lib.exists(os.path.join(teacher_dir, name))]


def run_row(name: str, run: int) -> str:
    """The report row of seed run `run` (0-based) of `name`: `student`, `student_s2`, `student_s3`, ..."""
    return name if run == 0 else f"{name}_s{run + 1}"


def finetuned_row(name: str, run: int) -> str:
    """The report row of seed run `run` of `name` ("student" or "baseline") fine-tuned per task."""
    return run_row(f"{name}_ft", run)


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
    return [row for row in rows if member_index(row) is not None]


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
    def of(cls, config, where: Callable[[str], str] = lambda path: path) -> ExperimentLayout:
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

    def member_dir(self, index: int) -> str:
        """Where teacher member `index` is trained."""
        return os.path.join(self.teacher_dir, member_name(index))

    def finetuned_dir(self, directory: str, task: str) -> str:
        """Where the copy of the model in `directory` fine-tuned on `task` goes: a member's under
        `<teacher_dir>/finetuned/<task>/member_<k>`, any other model's at `<directory>-finetuned/<task>`."""
        parent, name = os.path.split(os.path.normpath(directory))
        if member_index(name) is not None:
            return os.path.join(parent, "finetuned", task, name)
        return os.path.join(f"{os.path.normpath(directory)}-finetuned", task)

    def finetuned_dirs(self, directory: str, tasks: Sequence[str]) -> dict[str, str]:
        """`{task: directory}` of the model in `directory`'s per-task fine-tuned copies."""
        return {task: self.finetuned_dir(directory, task) for task in tasks}

    # --- data made by stages, and work in progress ----------------------------------------------
    @property
    def data_dir(self) -> str:
        return os.path.join(self.root, "data")

    def made_examples(self, task: str, kind: str) -> str:
        """The file of examples of `task` that a stage made (`kind`: e.g. "augmented")."""
        return os.path.join(self.data_dir, f"{task}.{kind}.jsonl")

    def made_example_files(self) -> dict[str, list[str]]:
        """`{task: [files]}` of every examples file a stage made, in name order."""
        found: dict[str, list[str]] = {}
        if os.path.isdir(self.data_dir):
            for name in sorted(os.listdir(self.data_dir)):
                parts = name.split(".")
                if len(parts) == 3 and parts[2] == "jsonl":
                    found.setdefault(parts[0], []).append(os.path.join(self.data_dir, name))
        return found

    @property
    def partial_root(self) -> str:
        return os.path.join(self.root, PARTIAL)

    def partial_dir(self, stage: str) -> str:
        """Where stage `stage` keeps its work in progress (e.g. the evaluation's outputs so far)."""
        return os.path.join(self.partial_root, stage)

    @staticmethod
    def soft_labels_partial(directory: str) -> str:
        """Where the soft labels being made in `directory` are kept until each task's file is written."""
        return os.path.join(directory, PARTIAL)

    @staticmethod
    def teacher_check_file(directory: str) -> str:
        """The teacher check of the soft labels in `directory` (`distill.teacher_check`)."""
        return os.path.join(directory, "teacher_check.json")

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
        rows.update({self.round_row(n): f"{student}_r{n}" for n in range(1, self.self_distill_rounds + 1)})
        return rows

    @staticmethod
    def round_row(number: int) -> str:
        """The report row of self-distillation round `number`'s student."""
        return f"student_r{number}"

    def round_soft_labels_dir(self, number: int) -> str:
        """Soft labels of self-distillation round `number` (the previous round's student's)."""
        return os.path.join(self.root, f"soft_labels_r{number}")

    def model_dirs(self) -> dict[str, str]:
        """The student-side models by report row: student, baseline, their seed runs, the variants."""
        return {**{run_row(name, run): d for (name, run), d in self.seeded_dirs().items()}, **self.variant_dirs()}
