"""The pipeline's stages, one short class each, in the order `Experiment.stages` lists them:

    teachers -> selection -> teacher fine-tuning -> [baseline run 0 -> gate] -> soft labels
    -> student and baseline seed runs -> variants -> fine-tuning -> evaluate -> report

A stage says what it reads (`inputs`), what it writes (`outputs`), when it is done (`done`: its
outputs exist and validate) and how to run (`run`); `steps` is the training it has left, which
the run's time estimate adds up. Calling a stage is the runner: it skips a done stage with one
log line, refuses one whose inputs are missing (naming them), and runs the rest in the strategy
scope with the experiment directory locked. A stage that makes several models (the teachers,
the fine-tuned copies, the variants) is a `StageGroup` of one stage per model, called the same
way, so a half-finished group resumes model by model. A stage gets everything from its `Context`
and its own arguments; what a model is made of is in `mtkd_tf.experiment.recipes`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable, Sequence

import numpy as np

from mtkd_tf.distill import ensemble, teacher_check
from mtkd_tf.errors import MtkdError
from mtkd_tf.experiment import recipes
from mtkd_tf.experiment.context import Context
from mtkd_tf.experiment.layout import finetuned_row, member_index, member_name, run_row
from mtkd_tf.models import evaluation
from mtkd_tf.models import model_dir as model_dir_lib
from mtkd_tf.runtime.files import read_json, write_json
from mtkd_tf.training import preemption

logger = logging.getLogger("mtkd_tf")


class StageInputError(MtkdError):
    """A stage was asked to run before the stages that make its inputs."""


class Stage:
    """One step of the pipeline (see the module docstring)."""

    name = ""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.config = ctx.config
        self.layout = ctx.layout

    def inputs(self) -> list[str]:
        """Paths that must exist before the stage runs."""
        return []

    def outputs(self) -> list[str]:
        return []

    def done(self) -> bool:
        """Whether the outputs exist and validate (default: every output is a finished model dir)."""
        return all(model_dir_lib.complete(path) for path in self.outputs())

    def steps(self) -> int:
        return 0

    def run(self) -> Any:
        raise NotImplementedError

    def result(self) -> Any:
        """What a finished stage gives (its outputs by default), when it is skipped."""
        return self.outputs()

    def stop_report(self, result: Any) -> dict | None:
        """A report to stop the pipeline with after this stage (a closed gate), or None."""
        return None

    def __call__(self) -> Any:
        """Runs the stage unless it is done, with the experiment directory locked and SIGTERM /
        SIGINT stopping it at its next save point; inside the experiment's strategy scope."""
        ctx = self.ctx
        with preemption.stop_on_signals(self.config.runtime.stop_grace_seconds), ctx.lock():
            preemption.check(f"before stage {self.name} started")
            ctx.validate()
            if self.done():
                logger.info("%s is done, skipping (%s)", self.name, ", ".join(self.outputs()))
                return self.result()
            missing = [path for path in self.inputs() if not os.path.exists(path)]
            if missing:
                raise StageInputError(
                    f"stage {self.name} cannot run: its input(s) {', '.join(missing)} are missing "
                    "(run the stages before it first, e.g. --mode=pipeline)"
                )
            with ctx.strategy.scope():
                return self.run()

    def announce(self, text: str) -> None:
        self.ctx.announce(self.name, text)


class StageGroup(Stage):
    """Several stages of one kind (one per model), done when each is; each is called in turn."""

    def children(self) -> list[Stage]:
        raise NotImplementedError

    def outputs(self) -> list[str]:
        return [path for child in self.children() for path in child.outputs()]

    def done(self) -> bool:
        return all(child.done() for child in self.children())

    def steps(self) -> int:
        return sum(child.steps() for child in self.children() if not child.done())

    def run(self) -> Any:
        self.announce(self.describe())
        for child in self.children():
            child()
        return self.result()

    def describe(self) -> str:
        return ", ".join(child.name for child in self.children())


class ModelStage(Stage):
    """A stage that trains one model into `directory` with `recipe` (no arguments)."""

    def __init__(
        self,
        ctx: Context,
        name: str,
        directory: str,
        recipe: Callable[[], Any],
        steps: Callable[[], int],
        inputs: Sequence[str] = (),
    ):
        super().__init__(ctx)
        self.name, self.directory, self._recipe, self._steps, self._inputs = name, directory, recipe, steps, inputs

    def inputs(self) -> list[str]:
        return list(self._inputs)

    def outputs(self) -> list[str]:
        return [self.directory]

    def steps(self) -> int:
        return 0 if model_dir_lib.exists(self.directory) else self._steps()

    def run(self) -> str:
        self._recipe()
        return self.directory

    def result(self) -> str:
        return self.directory


# --- teachers ------------------------------------------------------------------------------------
class Teachers(StageGroup):
    """Trains every candidate member of the teacher pool (one stage each)."""

    name = "teachers"

    def children(self) -> list[Stage]:
        ctx = self.ctx
        if ctx.teachers.given:
            return []
        epochs = self.config.teachers.teacher_epochs or self.config.training.epochs
        return [
            ModelStage(
                ctx,
                f"teacher {member_name(spec.index)}",
                self.layout.member_dir(spec.index),
                lambda spec=spec: recipes.train_member(
                    ctx, spec, self.layout.member_dir(spec.index), f"teacher {member_name(spec.index)}"
                ),
                lambda: ctx.steps(epochs),
            )
            for spec in ctx.teachers.specs()
        ]

    def outputs(self) -> list[str]:
        return self.ctx.teachers.given or super().outputs()

    def describe(self) -> str:
        return f"training {len(self.children())} MT-DNN members -> {self.layout.teacher_dir}"


class Selection(Stage):
    """Keeps the best `num_teachers` of the pool by mean dev score (each selection task's first
    metric); every candidate's scores and the choice go to `teachers/selection.json`."""

    name = "selection"

    def inputs(self) -> list[str]:
        return Teachers(self.ctx).outputs()

    def outputs(self) -> list[str]:
        return [self.layout.selection_file]

    def done(self) -> bool:
        path = self.layout.selection_file
        names = {os.path.basename(c) for c in self.inputs()}
        return os.path.isfile(path) and read_json(path)["candidates"].keys() == names

    def result(self) -> list[str]:
        return self.ctx.teachers.dirs()

    def run(self) -> list[str]:
        ctx, tasks = self.ctx, self.ctx.teachers.selection_tasks
        dev = {name: ctx.data.dev[name] for name in tasks}
        scores = {}
        for directory in self.inputs():
            results = evaluation.evaluate(model_dir_lib.load(directory), dev, self.config.runtime.eval_batch_size)
            per_task = {task: next(iter(metrics.values())) for task, metrics in results.items()}
            scores[os.path.basename(directory)] = {"scores": per_task, "mean": float(np.mean(list(per_task.values())))}
        ranked = sorted(scores, key=lambda name: -scores[name]["mean"])
        chosen = sorted(ranked[: self.config.teachers.num_teachers], key=member_index)
        write_json(self.layout.selection_file, {"selection_tasks": tasks, "candidates": scores, "chosen": chosen})
        logger.info(
            "teacher selection on %s: kept %s of %s",
            ", ".join(tasks),
            ", ".join(chosen),
            ", ".join(f"{name} {100 * scores[name]['mean']:.1f}" for name in ranked),
        )
        return self.result()


def finetune_stage(ctx: Context, source: str, task: str, directory: str, label: str, model_seed: int) -> ModelStage:
    """The stage of one fine-tuned copy: `source` fine-tuned on `task` into `directory`."""
    return ModelStage(
        ctx,
        f"fine-tune {label} on {task}",
        directory,
        lambda: recipes.finetune_copy(ctx, source, task, directory, label, model_seed),
        lambda: ctx.steps(ctx.config.finetune.finetune_epochs, tasks=[task]),
        inputs=[source],
    )


class TeacherFinetune(StageGroup):
    """Fine-tunes each kept member on each teacher task, with a seed of its own (`finetune_seed`)."""

    name = "teacher_finetune"

    def children(self) -> list[Stage]:
        ctx = self.ctx
        seeds = {member_name(spec.index): spec.seed for spec in ctx.teachers.specs()}
        found = []
        for task, copies in ctx.teachers.by_task().items():
            for directory in copies:
                name = os.path.basename(directory)
                source = self.layout.member_dir(member_index(name))
                found.append(finetune_stage(ctx, source, task, directory, f"teacher {name}", seeds[name]))
        return found

    def describe(self) -> str:
        by_task = self.ctx.teachers.by_task()
        copies = sum(len(dirs) for dirs in by_task.values())
        return f"{copies} copies of the kept members, each fine-tuned on one of {', '.join(by_task)}"

    def result(self) -> dict[str, list[str]]:
        return self.ctx.teachers.by_task()


# --- soft labels and the student side -------------------------------------------------------------
class SoftLabels(Stage):
    """Writes the soft labels of every task with a teacher (the ensemble's, or `teachers`'s)."""

    name = "soft_labels"

    def __init__(
        self,
        ctx: Context,
        directory: str | None = None,
        teachers: Callable[[], dict] | None = None,
        name: str = "soft_labels",
    ):
        super().__init__(ctx)
        self.name = name
        self.directory = directory or self.layout.soft_labels_dir
        self._teachers = teachers or ctx.teachers.by_task
        self.files = ctx.teachers.from_files if teachers is None else {}  # tasks whose targets are in a file

    def outputs(self) -> list[str]:
        return [self.directory]

    def done(self) -> bool:
        data, mode = self.ctx.data.soft_label_data(), self.config.teachers.teacher_check
        if not recipes.file_soft_labels_current(self.directory, self.files):
            return False
        if mode != "off":  # done when checked in this mode, of these teachers, and every distilled task written
            checks = teacher_check.read_checks(self.layout.teacher_check_file(self.directory))
            teachers = self._teachers()
            if (
                checks is None
                or set(checks) != set(data)
                or any(
                    found.mode != mode
                    or _paths([m["model_dir"] for m in found.members]) != _paths(teachers.get(name, []))
                    for name, found in checks.items()
                )
            ):
                return False
            data = {name: splits for name, splits in data.items() if checks[name].distilled}
        return ensemble.soft_labels_valid(self.directory, data, self.config.distillation.temperature)

    def result(self) -> str:
        return self.directory

    def run(self) -> str:
        self.announce(
            f"averaging the teachers' predictions on {', '.join(self.ctx.data.teacher_tasks)} -> {self.directory}"
        )
        recipes.write_file_soft_labels(self.ctx, self.files, self.directory)
        if self.config.teachers.teacher_check == "off":
            recipes.write_soft_labels(self.ctx, self._teachers(), self.directory)
        else:
            recipes.check_teachers(self.ctx, self._teachers(), self.directory, self.files)
        return self.directory


def _paths(directories: Sequence[str]) -> list[str]:
    return sorted(os.path.abspath(directory) for directory in directories)


def student_stage(ctx: Context, run: int = 0) -> ModelStage:
    """Seed run `run` of the distilled student (seed `seed + run`)."""
    seed, directory, distillation = (
        ctx.config.training.seed + run,
        ctx.layout.run_dir("student", run),
        ctx.config.distillation,
    )

    def recipe():
        source = "online teachers" if distillation.online_teachers else "cached soft labels"
        ctx.announce(
            "student",
            f"distilling ({source}, alpha {distillation.alpha}, T {distillation.temperature}, "
            f"seed {seed}) -> {directory}",
        )
        return recipes.train_student(ctx, directory, seed)

    return ModelStage(
        ctx,
        "student",
        directory,
        recipe,
        lambda: ctx.steps(ctx.config.training.epochs, extra=True),
        inputs=_distillation_inputs(ctx),
    )


def baseline_stage(ctx: Context, run: int = 0) -> ModelStage:
    """Seed run `run` of the plain MT-DNN baseline: the student's settings, hard labels only."""
    seed, directory = ctx.config.training.seed + run, ctx.layout.run_dir("baseline", run)

    def recipe():
        ctx.announce("baseline", f"training the MT-DNN baseline (seed {seed}) -> {directory}")
        return recipes.train_baseline(ctx, directory, seed)

    return ModelStage(ctx, "baseline", directory, recipe, lambda: ctx.steps(ctx.config.training.epochs))


def _distillation_inputs(ctx: Context) -> list[str]:
    """What a student reads: the teachers when they run online, else the soft labels (if any task has a teacher)."""
    if not ctx.data.teacher_tasks:
        return []
    return ctx.teachers.dirs() if ctx.config.distillation.online_teachers else [ctx.readable("soft_labels_dir")]


class Variants(StageGroup):
    """Beyond the paper, on the same teachers: a student with teacher annealing (`compare_anneal`)
    and self-distillation rounds (round r's student learns from round r-1's alone, through its
    own soft labels in `soft_labels_r<r>/`)."""

    name = "variants"

    def children(self) -> list[Stage]:
        ctx, distillation, rows = self.ctx, self.config.distillation, self.layout.variant_dirs()
        seed, steps = self.config.training.seed, lambda: ctx.steps(self.config.training.epochs, extra=True)
        found: list[Stage] = []
        if "student_anneal" in rows:
            annealed = dataclasses.replace(distillation, alpha_schedule="anneal", compare_anneal=False)
            found.append(
                ModelStage(
                    ctx,
                    "student_anneal",
                    rows["student_anneal"],
                    lambda: recipes.train_student(ctx, rows["student_anneal"], seed, settings=annealed),
                    steps,
                )
            )
        teacher = self.layout.student_dir
        for number in range(1, distillation.self_distill_rounds + 1):
            labels, row = self.layout.round_soft_labels_dir(number), self.layout.round_row(number)
            round_teacher = lambda teacher=teacher: {t: [teacher] for t in ctx.data.teacher_tasks}  # noqa: E731
            found.append(SoftLabels(ctx, labels, round_teacher, name=f"soft_labels of round {number}"))
            found.append(
                ModelStage(
                    ctx,
                    row,
                    rows[row],
                    lambda row=row, labels=labels, teacher=teacher: recipes.train_student(
                        ctx, rows[row], seed, soft_labels_dir=labels, teacher_dirs=[teacher]
                    ),
                    steps,
                    inputs=[teacher],
                )
            )
            teacher = rows[row]
        return found

    def outputs(self) -> list[str]:
        return list(self.layout.variant_dirs().values())

    def describe(self) -> str:
        return ", ".join(f"{row} -> {d}" for row, d in self.layout.variant_dirs().items())

    def result(self) -> dict[str, str]:
        return self.layout.variant_dirs()


class Finetune(StageGroup):
    """MT-DNN's second stage for the student and the baseline: a copy of each fine-tuned on each
    `finetune_tasks` task (`<dir>-finetuned/<task>`); the multi-task student stays the model that
    export serves."""

    name = "finetune"

    def _copies(self) -> dict[str, tuple[str, int, dict[str, str]]]:
        """`{row: (directory, seed, {task: copy})}` of every seed run."""
        tasks, seed = self.ctx.finetune_tasks, self.config.training.seed
        return {
            run_row(name, run): (d, seed + run, self.layout.finetuned_dirs(d, tasks))
            for (name, run), d in self.layout.seeded_dirs().items()
        }

    def children(self) -> list[Stage]:
        return [
            finetune_stage(self.ctx, directory, task, target, row, seed)
            for row, (directory, seed, copies) in self._copies().items()
            for task, target in copies.items()
        ]

    def describe(self) -> str:
        return (
            f"{', '.join(self._copies())} on {', '.join(self.ctx.finetune_tasks)} "
            f"({self.config.finetune.finetune_epochs} epoch(s) each)"
        )

    def result(self) -> dict[str, dict[str, str]]:
        return {row: copies for row, (_, _, copies) in self._copies().items()}


def finetuned_rows(ctx: Context) -> dict[str, dict[str, str]]:
    """`{row: {task: directory}}` of the fine-tuned copies of every seed run (rows `student_ft`, ...)."""
    return {
        finetuned_row(name, run): ctx.layout.finetuned_dirs(directory, ctx.finetune_tasks)
        for (name, run), directory in ctx.layout.seeded_dirs().items()
    }


class MakeExamples(Stage):
    """A stage that makes examples (e.g. augmented or transfer text), one JSON Lines file per task
    at `layout.made_examples(task, kind)`. Later stages read them through `ExperimentData`, as the
    task's unlabelled text: the teachers label them and the student learns from them with the
    soft loss. A subclass names its `kind` and its `tasks`, and makes each task's examples."""

    kind = ""

    def tasks(self) -> list[str]:
        return list(self.ctx.data.teacher_tasks)

    def make(self, task: str):
        """The examples of `task` (a `SplitData`; its labels are not written)."""
        raise NotImplementedError

    def outputs(self) -> list[str]:
        return [self.layout.made_examples(task, self.kind) for task in self.tasks()]

    def done(self) -> bool:
        return all(os.path.isfile(path) for path in self.outputs())

    def run(self) -> list[str]:
        from mtkd_tf.data.examples_file import write_examples

        self.announce(f"{self.kind} examples of {', '.join(self.tasks())} -> {self.layout.data_dir}")
        for task, path in zip(self.tasks(), self.outputs(), strict=True):
            if not os.path.isfile(path):
                write_examples(path, self.make(task))
        return self.outputs()
