"""How each model of an experiment is made, one function a model, side by side: a teacher member,
the distilled student and the plain MT-DNN baseline it is compared with (same settings, same
encoder, same data: only the objective differs), a fine-tuned copy, and an ensemble's soft labels.

A recipe trains; whether it needs to (the model is already there) is the stage runner's call."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Sequence

from mtkd_tf.distill import ensemble, soft_label_file, soft_labels, teacher_check
from mtkd_tf.distill.student import Distillation
from mtkd_tf.experiment.context import Context
from mtkd_tf.models.mtdnn import MTDNN, in_precision
from mtkd_tf.training import distribute
from mtkd_tf.training.finetune import finetune, finetune_seed
from mtkd_tf.training.selection import selection_splits

logger = logging.getLogger("mtkd_tf")


def train_member(ctx: Context, spec: ensemble.MemberSpec, directory: str, label: str) -> MTDNN:
    """Teacher member `spec` (its seed, dropout and encoder), for `teacher_epochs` (default `epochs`)."""
    epochs = ctx.config.teachers.teacher_epochs or ctx.config.training.epochs
    logger.info("training %s (seed %d, dropout %.2f, encoder %s)", label, spec.seed, spec.dropout, spec.encoder)
    encoder = ctx.encoder(spec.encoder, spec.dropout, spec.seed)
    config = ctx.config.replace(seed=spec.seed, epochs=epochs, encoder=spec.encoder, encoder_dropout=spec.dropout)
    return ctx.train(config, directory, label, encoder=encoder)


def train_student(
    ctx: Context,
    directory: str,
    seed: int,
    settings=None,
    soft_labels_dir: str | None = None,
    teacher_dirs: Sequence[str] | None = None,
) -> MTDNN:
    """The distilled student of seed `seed` (`settings`: other distillation settings; by default
    it learns from the experiment's soft labels and teachers); returned in float32."""
    config = dataclasses.replace(ctx.config.replace(seed=seed), distillation=settings or ctx.config.distillation)
    soft_labels_dir = soft_labels_dir or ctx.readable("soft_labels_dir")
    teacher_dirs = ctx.teachers.dirs() if teacher_dirs is None else teacher_dirs
    tasks, check = ctx.data.teacher_tasks, ctx.layout.teacher_check_file(soft_labels_dir)
    if ctx.config.teachers.teacher_check != "off":  # the tasks the check skipped train on hard labels
        tasks, teacher_dirs = teacher_check.distilled_tasks(check, tasks), teacher_check.kept_dirs(check, teacher_dirs)
    objective = Distillation(config.distillation, tasks, soft_labels_dir, teacher_dirs, ctx.data.unlabelled)
    student = ctx.train(config, directory, "student", encoder=ctx.student_encoder(seed), objective=objective)
    return in_precision(student, "float32")


def train_baseline(ctx: Context, directory: str, seed: int) -> MTDNN:
    """The plain MT-DNN of seed `seed` with the student's settings and encoder, on hard labels alone."""
    trained = ctx.train(ctx.config.replace(seed=seed), directory, "baseline", encoder=ctx.student_encoder(seed))
    return in_precision(trained, "float32")


def finetune_copy(ctx: Context, source: str, task: str, directory: str, label: str, model_seed: int) -> MTDNN:
    """The multi-task model in `source` (trained with `model_seed`) fine-tuned on `task` into
    `directory`, with a seed of its own (`finetune_seed`)."""
    config, settings = ctx.config, ctx.config.finetune
    actual = config.replace(
        seed=finetune_seed(model_seed, task),
        epochs=settings.finetune_epochs,
        learning_rate=settings.finetune_learning_rate or config.training.learning_rate,
    )
    logger.info("fine-tuning %s on %s (seed %d) -> %s", label, task, actual.training.seed, directory)
    return finetune(
        source,
        task,
        ctx.data.train[task],
        actual,
        directory,
        callbacks=ctx.callbacks,
        clock=ctx.clock,
        dev=ctx.data.dev,
    )


def write_soft_labels(ctx: Context, teachers: dict[str, list[str]], directory: str) -> None:
    """The soft labels of `teachers` (`{task: member dirs}`) on those teacher tasks' data."""
    config = ctx.config
    distillation = config.distillation
    ensemble.make_soft_labels(
        teachers,
        {name: data for name, data in ctx.data.soft_label_data().items() if name in teachers},
        distillation.temperature,
        directory,
        config.runtime.eval_batch_size,
        config.training.checkpoint_every_steps,
        distribute.inference_policy(distillation.soft_labels_precision),
        partial_dir=ctx.layout.soft_labels_partial(directory),
    )


def check_teachers(
    ctx: Context, teachers: dict[str, list[str]], directory: str, files: dict[str, str] | None = None
) -> dict[str, str]:
    """The teacher check (`distill.teacher_check`) of `teachers` (`{task: member dirs}`) around
    making their soft labels in `directory`; records it there (tasks whose targets are `files` are
    recorded as not checked) and returns the teachers each distilled task's targets came from."""
    config, data = ctx.config, ctx.data
    mode, selection = config.teachers.teacher_check, config.training.selection_examples
    batch = config.runtime.eval_batch_size
    checks = {name: teacher_check.from_file(data.train[name], mode, path) for name, path in (files or {}).items()}
    for name, dirs in teachers.items():
        dev = next(iter(selection_splits(data.dev, [name], selection).get(name, {}).values()), None)
        train = data.train[name]
        checks[name] = teacher_check.check_task(train.task, dirs, dev, train.labels, mode, batch)
    made = {name: found.teachers() for name, found in checks.items() if found.distilled and name not in (files or {})}
    write_soft_labels(ctx, made, directory)
    for name in made:
        train = data.train[name]
        teacher_check.check_soft_targets(checks[name], train.task, directory, train, config.distillation.temperature)
    for found in checks.values():
        teacher_check.report(found)
    teacher_check.write_checks(ctx.layout.teacher_check_file(directory), mode, checks)
    return made


def write_file_soft_labels(ctx: Context, files: dict[str, str], directory: str) -> None:
    """The soft labels of the tasks whose targets are in a file (`soft_labels_file`), written as
    the ensemble's would be, with the file's sha256 (a changed file makes them again)."""
    data, temperature = ctx.data.soft_label_data(), ctx.config.distillation.temperature
    for name, path in files.items():
        splits = data[name]
        task = splits[0].task
        targets = soft_label_file.read_targets(path, task, splits, temperature)
        soft = soft_labels.build(task, splits, targets, [path], temperature)
        soft.metadata["source_sha256"] = soft_label_file.file_digest(path)
        os.makedirs(directory, exist_ok=True)
        soft_labels.write(soft_labels.path_for(directory, name), soft)
        logger.info("soft labels of %s: %d examples from the file %s", name, len(soft.ids), path)


def file_soft_labels_current(directory: str, files: dict[str, str]) -> bool:
    """Whether each file task's soft labels in `directory` were made from its file as it is now."""
    for name, path in files.items():
        target = soft_labels.path_for(directory, name)
        if not os.path.isfile(target):
            return False
        try:
            metadata = soft_labels.read(target).metadata
        except soft_labels.SoftLabelError:
            return False
        if metadata.get("source_sha256") != soft_label_file.file_digest(path):
            logger.info("soft labels of %s: %s changed since they were made; making them again", name, path)
            return False
    return True
