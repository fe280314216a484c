"""The teacher check: before a task's soft labels are made, can its teachers teach it?

An ensemble can beat one model on dev and still teach nothing: issue #40's trec ensemble mixed a
member stuck at the majority class with two good ones, and its targets on the training examples
were near uniform (mean p(gold) 0.273 for 6 classes). The check looks at three things per task,
with the rules and thresholds pre-registered in docs/protocol.md ("The teacher check"):

1. **members**: a member that did not converge (`did_not_converge`) is left out of the ensemble;
2. **the ensemble** of the kept members must not be more than `ENSEMBLE_MARGIN` points below
   their mean member, on dev;
3. **the soft targets** on the task's labelled training examples must carry information:
   classification mean p(gold) >= chance + `INFORMATION_SHARE` x (ensemble dev accuracy - chance);
   regression corr(teachers' mean score, gold) >= `INFORMATION_SHARE` x ensemble dev Pearson.

Scores are a task's first metric x100 on its dev selection subset (`selection_examples`).

>>> did_not_converge(23.0, trivial=21.0, best=72.0)
'23.0 is within 2 points of the trivial predictor (21.0) or below it'
>>> did_not_converge(70.0, trivial=21.0, best=72.0) is None
True
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Mapping, Sequence

import numpy as np

from mtkd_tf.data.split import SplitData
from mtkd_tf.data.tasks import CLASSIFICATION, REGRESSION, Task
from mtkd_tf.distill import ensemble, soft_labels
from mtkd_tf.models import evaluation
from mtkd_tf.models import model_dir as model_dir_lib
from mtkd_tf.runtime.files import read_json, write_json

logger = logging.getLogger("mtkd_tf")

TRIVIAL_MARGIN = 2.0  # points: a member within this of the trivial predictor did not converge
BEHIND_BEST = 15.0  # points: nor did one more than this below the task's best member
TRIVIAL_CORRELATION = 5.0  # the trivial predictor's score for regression and ranking metrics
ENSEMBLE_MARGIN = 1.0  # points the ensemble may fall below its mean member
INFORMATION_SHARE = 0.5  # of the ensemble's dev skill above chance that the targets must carry

PASSED, WARNED, SKIPPED = "passed", "failed: distilled anyway (warn)", "failed: hard labels only (skip)"


def trivial_score(task: Task, metric: str, train_labels: np.ndarray | None) -> float:
    """What a model that learnt nothing scores (x100): the most frequent training class's share
    (accuracy), 0 (F1, Matthews), or `TRIVIAL_CORRELATION` (regression, ranking)."""
    if task.type != CLASSIFICATION:
        return TRIVIAL_CORRELATION
    if metric != "accuracy" or train_labels is None or not len(train_labels):
        return 0.0
    counts = np.bincount(np.asarray(train_labels, int), minlength=task.num_classes)
    return float(100 * counts.max() / counts.sum())


def did_not_converge(score: float, trivial: float | None, best: float) -> str | None:
    """Why a member scoring `score` (x100) did not converge, or None: within `TRIVIAL_MARGIN` of
    the `trivial` predictor (None: unknown), or more than `BEHIND_BEST` below the `best` member.
    The one definition the check, the report's warnings and the tests use."""
    if trivial is not None and score <= trivial + TRIVIAL_MARGIN:
        return f"{score:.1f} is within {TRIVIAL_MARGIN:g} points of the trivial predictor ({trivial:.1f}) or below it"
    if best - score > BEHIND_BEST:
        return f"{score:.1f} is {best - score:.1f} points below the best member ({best:.1f}; at most {BEHIND_BEST:g})"
    return None


def target_information(task: Task, targets: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """What soft targets carry about the gold labels of the same examples: classification,
    `soft_labels.statistics` plus the chance level; regression, their Pearson correlation (x100)."""
    if task.type == CLASSIFICATION:
        return {**soft_labels.statistics(targets, labels), "chance": 1.0 / task.num_classes}
    if task.type == REGRESSION:
        return {"examples": int(len(labels)), "correlation": 100 * evaluation.pearson(labels, targets)}
    return {}


@dataclasses.dataclass
class TaskCheck:
    """One task's check: its members' scores and fates, the ensemble, the targets and the decision."""

    task: str
    metric: str
    mode: str
    trivial: float
    members: list[dict]  # {"name", "model_dir", "score", "kept", "reason"}
    ensemble: float | None = None  # first metric x100 of the kept members' ensemble on dev
    reference: dict = dataclasses.field(default_factory=dict)  # {"name": "mean member", "score": ...}
    skill: dict = dataclasses.field(default_factory=dict)  # the ensemble's dev accuracy or Pearson (x100)
    targets: dict = dataclasses.field(default_factory=dict)  # target_information on training examples
    thresholds: dict = dataclasses.field(default_factory=dict)
    failures: list[str] = dataclasses.field(default_factory=list)
    note: str = ""  # why a rule was not applied

    @property
    def kept(self) -> list[str]:
        return [member["model_dir"] for member in self.members if member["kept"]]

    @property
    def decision(self) -> str:
        if self.note and not self.failures:
            return f"not checked: {self.note}"
        if not self.failures:
            return PASSED
        return SKIPPED if self.mode == "skip" else WARNED

    @property
    def distilled(self) -> bool:
        """Whether the student learns this task from its soft targets."""
        return self.decision != SKIPPED

    def teachers(self) -> list[str]:
        """The members whose targets the task gets: the kept ones (all of them if none is kept)."""
        return self.kept or [member["model_dir"] for member in self.members]

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "kept": self.kept, "decision": self.decision}

    @classmethod
    def from_json(cls, found: Mapping) -> TaskCheck:
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in found.items() if key in names})


def check_members(task: str, metric: str, mode: str, scores: Mapping[str, float], trivial: float) -> TaskCheck:
    """Rule 1: each member (`{model_dir: score x100}`) kept, or dropped with the rule it broke."""
    best = max(scores.values())
    root = os.path.commonpath(list(scores)) if len(scores) > 1 else os.path.dirname(next(iter(scores)))
    members = []
    for directory, score in scores.items():
        reason = did_not_converge(score, trivial, best)
        name = os.path.relpath(directory, root) if root else directory
        members.append({"name": name, "model_dir": directory, "score": score, "kept": reason is None, "reason": reason})
    found = TaskCheck(task, metric, mode, trivial, members)
    found.thresholds = {
        "trivial_margin": TRIVIAL_MARGIN,
        "behind_best": BEHIND_BEST,
        "ensemble_margin": ENSEMBLE_MARGIN,
        "information_share": INFORMATION_SHARE,
    }
    if not found.kept:
        found.failures.append("no member converged: the task has no ensemble")
    return found


def check_ensemble(found: TaskCheck, ensemble_score: float, skill: dict) -> None:
    """Rule 2: the kept members' ensemble (`ensemble_score`, x100) against their mean member."""
    kept = [member["score"] for member in found.members if member["kept"]]
    found.ensemble, found.skill = ensemble_score, skill
    found.reference = {"name": "mean kept member", "score": float(np.mean(kept))}
    if ensemble_score < found.reference["score"] - ENSEMBLE_MARGIN:
        found.failures.append(
            f"the ensemble's {ensemble_score:.1f} is more than {ENSEMBLE_MARGIN:g} point(s) below its mean member's "
            f"{found.reference['score']:.1f}"
        )


def check_targets(found: TaskCheck, task: Task, information: dict) -> None:
    """Rule 3: what the kept members' targets carry on the training examples (none for ranking)."""
    found.targets = information
    if task.type == CLASSIFICATION:
        chance = information["chance"]
        needed = chance + INFORMATION_SHARE * (found.skill["accuracy"] / 100 - chance)
        found.thresholds["gold_probability"] = needed
        if information["gold_probability"] < needed:
            found.failures.append(
                f"the soft targets' mean p(gold) on the training examples is {information['gold_probability']:.3f}, "
                f"below {needed:.3f} (chance {chance:.3f} + {INFORMATION_SHARE:g} x (ensemble dev accuracy "
                f"{found.skill['accuracy'] / 100:.3f} - chance))"
            )
    elif task.type == REGRESSION:
        needed = INFORMATION_SHARE * found.skill["pearson"]
        found.thresholds["correlation"] = needed
        if information["correlation"] < needed:
            found.failures.append(
                f"the teachers' mean score correlates {information['correlation']:.1f} (x100) with gold on the "
                f"training examples, below {needed:.1f} ({INFORMATION_SHARE:g} x the ensemble's dev Pearson)"
            )


def score_members(task: Task, dirs: Sequence[str], dev: SplitData, batch_size: int = 128) -> tuple:
    """Each member's outputs on `dev` and first-metric score (x100): `({dir: score}, {dir: outputs})`."""
    splits = {task.name: {dev.split: dev}}
    members = [model_dir_lib.load(directory) for directory in dirs]
    outputs, _ = ensemble.member_outputs(members, splits, batch_size)
    key = (task.name, dev.split)
    found = {directory: predictions[key] for directory, predictions in zip(dirs, outputs, strict=True)}
    scores = {d: 100 * _first(evaluation.score_outputs(splits, {key: o})[task.name]) for d, o in found.items()}
    return scores, found


def ensemble_on_dev(task: Task, dev: SplitData, outputs: Sequence[np.ndarray]) -> tuple[float, dict]:
    """The ensemble of members' `outputs` on `dev`: its first metric (x100) and its skill, the
    accuracy (classification) or Pearson (regression) that rule 3 scales (x100)."""
    splits, key = {task.name: {dev.split: dev}}, (task.name, dev.split)
    averaged = ensemble.average_outputs(splits, [{key: o} for o in outputs])[key]
    score = 100 * _first(evaluation.score_outputs(splits, {key: averaged})[task.name])
    predictions = evaluation.decide(task, averaged, dev.groups)
    if task.type == CLASSIFICATION:
        return score, {"accuracy": 100 * evaluation.accuracy(dev.labels, predictions)}
    if task.type == REGRESSION:
        return score, {"pearson": 100 * evaluation.pearson(dev.labels, predictions)}
    return score, {}


def _first(metrics: Mapping[str, float]) -> float:
    return float(next(iter(metrics.values())))


# --- running the check -------------------------------------------------------------------------------


def check_task(
    task: Task, dirs: Sequence[str], dev: SplitData | None, train_labels, mode: str, batch_size: int = 128
) -> TaskCheck:
    """Rules 1 and 2 for `task`'s members `dirs` on its labelled `dev` selection split (None: the
    task has none, and is distilled unchecked)."""
    metric = task.metrics[0]
    trivial = trivial_score(task, metric, train_labels)
    if dev is None:
        members = [{"name": d, "model_dir": d, "score": None, "kept": True, "reason": None} for d in dirs]
        return TaskCheck(task.name, metric, mode, trivial, members, note="the task has no labelled dev split")
    scores, outputs = score_members(task, dirs, dev, batch_size)
    found = check_members(task.name, metric, mode, scores, trivial)
    if found.kept:
        check_ensemble(found, *ensemble_on_dev(task, dev, [outputs[d] for d in found.kept]))
    for member in found.members:
        if not member["kept"]:
            name, reason = member["name"], member["reason"]
            logger.warning("teacher check, %s: %s is left out of the ensemble: %s", task.name, name, reason)
    return found


def from_file(train: SplitData, mode: str, path: str) -> TaskCheck:
    """The record of a task whose soft targets come from a file: no members to check."""
    task = train.task
    trivial = trivial_score(task, task.metrics[0], train.labels)
    return TaskCheck(task.name, task.metrics[0], mode, trivial, [], note=f"soft targets from the file {path}")


def check_soft_targets(found: TaskCheck, task: Task, directory: str, train: SplitData, temperature: float) -> None:
    """Rule 3 on the soft labels written in `directory` for `train`'s labelled examples (where the
    kept members made them and rule 3 applies to the task's type)."""
    if not found.skill or train.labels is None:
        return
    stored = soft_labels.read(soft_labels.path_for(directory, task.name))
    targets = soft_labels.align(stored, task, train, temperature)
    check_targets(found, task, target_information(task, targets, train.labels))


def report(found: TaskCheck) -> None:
    """One log line per task: passed, or the failures and what follows from them."""
    if found.decision == PASSED or found.note:
        logger.info("teacher check, %s: %s", found.task, found.decision)
        return
    logger.warning("teacher check, %s %s: %s", found.task, found.decision, "; ".join(found.failures))


def write_checks(path: str, mode: str, checks: Mapping[str, TaskCheck]) -> None:
    """`teacher_check.json`: the check's mode and every task's check (`TaskCheck.to_json`)."""
    write_json(path, {"mode": mode, "tasks": {name: found.to_json() for name, found in checks.items()}})


def read_checks(path: str) -> dict[str, TaskCheck] | None:
    """The checks recorded at `path`, or None when there are none (or the file is unreadable)."""
    try:
        found = read_json(path)
        return {name: TaskCheck.from_json(item) for name, item in found["tasks"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def distilled_tasks(path: str, teacher_tasks: Sequence[str]) -> list[str]:
    """The teacher tasks the student learns from soft targets: all but those the check recorded
    at `path` skipped (all of them when nothing is recorded there)."""
    checks = read_checks(path) or {}
    return [name for name in teacher_tasks if name not in checks or checks[name].distilled]


def kept_dirs(path: str, teacher_dirs: Sequence[str]) -> list[str]:
    """`teacher_dirs` (online teachers: one ensemble for every task) without the members the check
    recorded at `path` dropped on a task the student learns from soft targets."""
    checks = read_checks(path) or {}
    dropped = {
        os.path.abspath(member["model_dir"])
        for found in checks.values()
        if found.distilled and found.kept
        for member in found.members
        if not member["kept"]
    }
    return [directory for directory in teacher_dirs if os.path.abspath(directory) not in dropped]


def markdown(checks: Mapping[str, Mapping]) -> str:
    """report.md's section on the check (`checks`: `{task: TaskCheck.to_json()}`): per task its
    decision, the members kept and dropped with their scores and rules, and the failures."""
    lines = [
        "| task | decision | members kept (dev) | members dropped | ensemble (reference) | soft targets |",
        "|---|---|---|---|---|---|",
    ]
    details = []
    for task, found in checks.items():
        kept = ", ".join(
            f"{m['name']} {m['score']:.1f}" for m in found["members"] if m["kept"] and m["score"] is not None
        )
        dropped = ", ".join(f"{m['name']} {m['score']:.1f}" for m in found["members"] if not m["kept"])
        reference = found.get("reference") or {}
        ensemble = (
            f"{found['ensemble']:.1f} ({reference['name']} {reference['score']:.1f})"
            if found.get("ensemble") is not None
            else "-"
        )
        lines.append(
            f"| {task} | {found['decision']} | {kept or '-'} | {dropped or '-'} | {ensemble} | "
            f"{_targets_cell(found.get('targets') or {}, found.get('thresholds') or {})} |"
        )
        details += [f"- {task}: {m['name']} left out: {m['reason']}" for m in found["members"] if not m["kept"]]
        details += [f"- {task}: {failure}" for failure in found.get("failures", [])]
    return "\n".join(lines + ([""] + details if details else []))


def _targets_cell(targets: Mapping, thresholds: Mapping) -> str:
    if "gold_probability" in targets:
        return f"mean p(gold) {targets['gold_probability']:.3f} (needs {thresholds['gold_probability']:.3f})"
    if "correlation" in targets:
        return f"correlation {targets['correlation']:.1f} (needs {thresholds['correlation']:.1f})"
    return "-"
