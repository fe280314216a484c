"""The paper's procedure end to end: teachers -> soft labels -> distilled student (+ the plain
MT-DNN baseline) -> evaluation -> report.

An experiment directory holds `teachers/member_<k>/`, `soft_labels/<task>.npz`, `student/`,
`baseline/`, `report.json` and `report.md`. Every stage is skipped when its outputs exist
and validate, so re-running the same command resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
from typing import Callable, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from mtkd_tf import evaluation, model_dir as model_dir_lib, plots
from mtkd_tf.data.readers import SplitData
from mtkd_tf.distill import ensemble, soft_labels
from mtkd_tf.distill.distiller import Distiller, distillation_targets, soft_width
from mtkd_tf.models.encoder import Encoder
from mtkd_tf.models.mtdnn import MTDNN, in_precision
from mtkd_tf.tasks import Task
from mtkd_tf.training import (
    TrainConfig, encoder_preprocessor, fit, make_optimizer, save_trained, static_shapes, train_mtdnn, training_data,
)

logger = logging.getLogger(__name__)

EncoderFactory = Callable[[str, float | None, int], Encoder]  # (spec, dropout, seed) -> Encoder


@dataclasses.dataclass
class DistillConfig:
    """How the student mixes hard and soft losses (paper: alpha 0.5, T 1, cross-entropy)."""

    alpha: float = 0.5
    task_alpha: dict[str, float] = dataclasses.field(default_factory=dict)
    temperature: float = 1.0
    soft_loss: str = "ce"
    teacher_tasks: tuple[str, ...] | None = None  # None: every trained task
    online: bool = False
    hidden_weight: float = 0.0


@dataclasses.dataclass
class Layout:
    """Where each stage of an experiment writes."""

    root: str
    teacher_dir: str = ""
    soft_labels_dir: str = ""
    student_dir: str = ""
    baseline_dir: str = ""

    def __post_init__(self):
        self.teacher_dir = self.teacher_dir or os.path.join(self.root, "teachers")
        self.soft_labels_dir = self.soft_labels_dir or os.path.join(self.root, "soft_labels")
        self.student_dir = self.student_dir or os.path.join(self.root, "student")
        self.baseline_dir = self.baseline_dir or os.path.join(self.root, "baseline")


def teacher_task_names(tasks: Sequence[Task], config: DistillConfig) -> list[str]:
    trained = [task.name for task in tasks if task.trainable]
    if config.teacher_tasks is None:
        return trained
    unknown = [name for name in config.teacher_tasks if name not in trained]
    if unknown:
        raise ValueError(f"teacher task(s) {', '.join(unknown)} are not among the trained tasks {', '.join(trained)}")
    return list(config.teacher_tasks)


def train_teachers(
    tasks: Sequence[Task],
    train: Mapping[str, SplitData],
    make_encoder: EncoderFactory,
    specs: Sequence[ensemble.MemberSpec],
    config: TrainConfig,
    teacher_dir: str,
    max_seq_length: int,
    strategy: tf.distribute.Strategy,
) -> list[str]:
    """Trains the ensemble's members (skipping finished ones); each is a normal model dir."""

    def train_member(spec: ensemble.MemberSpec, directory: str) -> None:
        member_config = dataclasses.replace(config, seed=spec.seed)
        with strategy.scope():
            encoder = make_encoder(spec.encoder, spec.dropout, spec.seed)
            train_mtdnn(tasks, train, encoder, member_config, directory, max_seq_length, strategy)

    return ensemble.train_teachers(specs, teacher_dir, train_member)


def make_soft_labels(
    member_dirs: Sequence[str],
    data: Mapping[str, Sequence[SplitData]],
    temperature: float,
    output_dir: str,
    batch_size: int = 128,
    checkpoint_every_steps: int = 0,
    policy: str = "float32",
) -> dict[str, str]:
    """Averages the members' predictions over each task's examples and writes one file per task.

    Predictions are saved every `checkpoint_every_steps` batches under
    `<output_dir>/.partial/<task>`, so a re-run after a crash resumes; the directory is
    removed once the task's file is written. `policy`: the teachers' encoder dtype policy
    (`distribute.inference_policy`); it is recorded in each file's metadata.
    """
    if not member_dirs:
        raise ValueError("no teacher models found: train them first (--mode=train_teachers) or pass --teacher_dirs")
    members = [model_dir_lib.load(directory) for directory in member_dirs]
    ensemble.check_compatible(members, [splits[0].task for splits in data.values()])
    members = [dataclasses.replace(m, model=in_precision(m.model, policy)) for m in members]  # once, not per split
    written = {}
    for task_name, splits in data.items():
        task = splits[0].task
        partial = os.path.join(output_dir, ".partial", task_name)
        targets = [
            ensemble.ensemble_targets(members, split, temperature, batch_size, partial, checkpoint_every_steps * batch_size,
                                      policy)
            for split in splits
        ]
        soft = soft_labels.build(task, splits, targets, member_dirs, temperature)
        soft.metadata["precision"] = policy
        path = soft_labels.path_for(output_dir, task_name)
        soft_labels.write(path, soft)
        shutil.rmtree(partial, ignore_errors=True)
        written[task_name] = path
        logger.info("soft labels of %s: %d examples from %d teachers -> %s", task_name, len(soft.ids), len(members), path)
    with contextlib.suppress(OSError):
        os.rmdir(os.path.join(output_dir, ".partial"))
    return written


def soft_labels_valid(output_dir: str, data: Mapping[str, Sequence[SplitData]], temperature: float) -> bool:
    """Whether every task's soft-label file exists and matches the data (a re-run skips it)."""
    try:
        for task_name, splits in data.items():
            soft = soft_labels.read(soft_labels.path_for(output_dir, task_name))
            for split in splits:
                soft_labels.align(soft, split.task, split, temperature)
    except soft_labels.SoftLabelError as error:
        logger.info("soft labels need (re)making: %s", error)
        return False
    return True


def distill(
    tasks: Sequence[Task],
    train: Mapping[str, SplitData],
    encoder: Encoder,
    config: TrainConfig,
    distill_config: DistillConfig,
    student_dir: str,
    max_seq_length: int,
    strategy: tf.distribute.Strategy,
    soft_labels_dir: str | None = None,
    teacher_dirs: Sequence[str] = (),
    unlabelled: Mapping[str, SplitData] | None = None,
) -> model_dir_lib.TrainedModel:
    """Trains the student MT-DNN with a Distiller: cached soft labels, or online teachers.

    `unlabelled[task]` is extra text of a task with a teacher: it joins that task's
    training data with the soft loss only (label_mask 0).
    """
    config.validate()
    keras.utils.set_random_seed(config.seed)
    teacher_tasks = teacher_task_names(tasks, distill_config)
    static = static_shapes(config, strategy)
    preprocessor = encoder_preprocessor(encoder, max_seq_length, static=static)
    with strategy.scope():
        student = MTDNN(encoder.backbone, tasks)
        width = soft_width(student.tasks)
        splits = []
        label_masks = {}
        for task in student.tasks:
            data = train[task.name]
            extra = (unlabelled or {}).get(task.name)
            if extra is not None and task.name in teacher_tasks:
                label_masks[task.name] = np.concatenate([np.ones(len(data)), np.zeros(len(extra))])
                data = data.concat(extra)
            splits.append(data)
        teachers = []
        targets = {}
        if distill_config.online:
            members = [model_dir_lib.load(directory) for directory in teacher_dirs]
            if not members:
                raise ValueError("online distillation needs teacher models (--teacher_dirs or trained teachers)")
            ensemble.check_compatible(members, [t for t in student.tasks if t.name in teacher_tasks], encoder.vocabulary)
            teachers = [member.model for member in members]
        for task, data in zip(student.tasks, splits):
            soft = None
            if task.name in teacher_tasks and not distill_config.online:
                stored = soft_labels.read(soft_labels.path_for(soft_labels_dir, task.name))
                parts = [train[task.name]] + ([unlabelled[task.name]] if task.name in label_masks else [])
                soft = np.concatenate([soft_labels.align(stored, task, part, distill_config.temperature) for part in parts])
            targets[task.name] = distillation_targets(task, len(data), width, soft, label_masks.get(task.name))
        data = training_data(splits, preprocessor, config, targets=targets, drop_remainder=static, strategy=strategy)
        distiller = Distiller(
            student,
            alpha=distill_config.alpha,
            task_alpha=distill_config.task_alpha,
            temperature=distill_config.temperature,
            soft_loss=distill_config.soft_loss,
            teachers=teachers,
            teacher_tasks=teacher_tasks,
            hidden_weight=distill_config.hidden_weight,
        )
        distiller.compile(optimizer=make_optimizer(config, data.steps_per_epoch * config.epochs), jit_compile=config.jit_compile)
    state = fit(distiller, data, config, student_dir)
    trained = save_trained(student_dir, student, encoder, preprocessor)
    state.remove()
    return trained


# --- the report -------------------------------------------------------------------------


def build_report(rows: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict:
    """`{task: {metric: {row: value, ..., "kept": fraction}}}` from `{row: eval_results}`.

    `kept` is the share of the ensemble's gain over the baseline that the student kept:
    (student - baseline) / (ensemble - baseline), when the ensemble gained.
    """
    report: dict = {}
    for row, results in rows.items():
        for task, metrics in results.items():
            for metric, value in metrics.items():
                report.setdefault(task, {}).setdefault(metric, {})[row] = value
    for metrics in report.values():
        for values in metrics.values():
            if {"ensemble", "baseline", "student"} <= set(values):
                gain = values["ensemble"] - values["baseline"]
                values["kept"] = (values["student"] - values["baseline"]) / gain if gain > 1e-9 else None
    return report


def report_table(report: Mapping, rows: Sequence[str]) -> str:
    """The report as a Markdown table, one line per task and metric."""
    header = ["task", "metric", *rows, "kept"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task, metrics in report.items():
        for metric, values in metrics.items():
            cells = [f"{100 * values[row]:.1f}" if values.get(row) is not None else "-" for row in rows]
            kept = values.get("kept")
            lines.append("| " + " | ".join([task, metric, *cells, f"{100 * kept:.0f}%" if kept is not None else "-"]) + " |")
    return "\n".join(lines)


def evaluate_all(
    layout: Layout, member_dirs: Sequence[str], dev: Mapping[str, Mapping[str, SplitData]], batch_size: int
) -> tuple[dict, list[str]]:
    """Evaluates every member, the ensemble, the baseline and the student on `dev`."""
    rows: dict[str, dict] = {}
    directories: dict[str, str] = {}
    members = [model_dir_lib.load(directory) for directory in member_dirs]
    for directory, member in zip(member_dirs, members):
        name = os.path.basename(os.path.normpath(directory))
        rows[name] = evaluation.evaluate(member.model, member.preprocessor, dev, batch_size)
        directories[name] = directory
    if members:
        rows["ensemble"] = ensemble.evaluate_ensemble(members, dev, batch_size)
    for name, directory in (("baseline", layout.baseline_dir), ("student", layout.student_dir)):
        if model_dir_lib.exists(directory):
            trained = model_dir_lib.load(directory)
            rows[name] = evaluation.evaluate(trained.model, trained.preprocessor, dev, batch_size)
            directories[name] = directory
    for name, directory in directories.items():
        model_dir_lib.write_json(os.path.join(directory, "eval_results.json"), rows[name])
    return rows, list(rows)


def write_report(layout: Layout, rows: Mapping, order: Sequence[str], settings: Mapping) -> tuple[dict, str]:
    report = build_report(rows)
    table = report_table(report, order)
    model_dir_lib.write_json(os.path.join(layout.root, "report.json"), {"results": report, "rows": list(order), "settings": dict(settings)})
    model_dir_lib.write_atomic(os.path.join(layout.root, "report.md"), table + "\n")
    plots.plot_scores(report, order, os.path.join(layout.root, "scores.png"))
    plots.plot_training_curves(os.path.join(layout.student_dir, "history.json"),
                               os.path.join(layout.baseline_dir, "history.json"), list(report),
                               os.path.join(layout.root, "training_curves.png"))
    return report, table
