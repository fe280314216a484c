"""The pipeline's stages, one short class each, in the order `Experiment.stages` lists them:

    teachers -> selection -> teacher fine-tuning -> [baseline run 0 -> gate] -> soft labels
    -> student and baseline seed runs -> variants -> fine-tuning -> evaluate -> report

A stage knows what it reads (`inputs`), what it writes (`outputs`), when it is done (`done`:
its outputs exist and validate, so a re-run skips it) and how to run (`run`); `steps` is the
training it has left, which the run's time estimate adds up over the same list `run()` walks.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np

from mtkd_tf.distill import ensemble
from mtkd_tf.experiment.layout import run_row
from mtkd_tf.models import evaluation, inference
from mtkd_tf.models import model_dir as model_dir_lib
from mtkd_tf.models.mtdnn import MTDNN, in_precision
from mtkd_tf.runtime.environment import environment
from mtkd_tf.runtime.files import read_json, write_atomic, write_json
from mtkd_tf.training import distribute, preemption
from mtkd_tf.training.finetune import finetune_seed
from mtkd_tf.training.train import train_model

logger = logging.getLogger("mtkd_tf")


class Stage:
    """One step of the pipeline (see the module docstring); `experiment` gives data and settings."""

    name = ""

    def __init__(self, experiment):
        self.experiment = experiment
        self.config = experiment.config
        self.layout = experiment.layout

    def inputs(self) -> list[str]:
        return []

    def outputs(self) -> list[str]:
        return []

    def done(self) -> bool:
        return all(model_dir_lib.complete(path) for path in self.outputs())

    def steps(self) -> int:
        return 0

    def run(self):
        raise NotImplementedError

    def __call__(self):
        """Runs the stage inside the experiment's strategy scope, after its checks, with the
        experiment directory locked and SIGTERM/SIGINT stopping it at its next save point."""
        with preemption.stop_on_signals(self.config.runtime.stop_grace_seconds), self.experiment.lock():
            preemption.check(f"before stage {self.name} started")
            self.experiment.validate()
            with self.experiment.strategy.scope():
                return self.run()

    def announce(self, text: str) -> None:
        self.experiment.announce(self.name, text)


# --- teachers ------------------------------------------------------------------------------------
class Teachers(Stage):
    """Trains every candidate member of the teacher pool (skipping finished ones)."""

    name = "teachers"

    def outputs(self) -> list[str]:
        if self.config.teachers.teacher_dirs:
            return list(self.config.teachers.teacher_dirs)
        return [self.layout.member_dir(spec.name) for spec in self.experiment.member_specs()]

    def steps(self) -> int:
        epochs = self.config.teachers.teacher_epochs or self.config.training.epochs
        return sum(self.experiment.steps(epochs) for path in self.outputs() if not model_dir_lib.exists(path))

    def run(self) -> list[str]:
        if self.config.teachers.teacher_dirs:
            self.announce(f"using {len(self.outputs())} given model(s)")
            return self.outputs()
        experiment, specs = self.experiment, self.experiment.member_specs()
        epochs = self.config.teachers.teacher_epochs or self.config.training.epochs
        self.announce(f"training {len(specs)} MT-DNN members -> {self.layout.teacher_dir}")
        for spec, directory in zip(specs, self.outputs()):
            if model_dir_lib.complete(directory):
                logger.info("teacher %s exists, skipping", directory)
                continue
            logger.info(
                "training teacher %s (seed %d, dropout %.2f, encoder %s)",
                spec.name,
                spec.seed,
                spec.dropout,
                spec.encoder,
            )
            encoder = experiment.encoder(spec.encoder, spec.dropout, spec.seed)
            actual = self.config.replace(
                seed=spec.seed, epochs=epochs, encoder=spec.encoder, encoder_dropout=spec.dropout
            )
            experiment.train_one(actual, directory, f"teacher {spec.name}", encoder=encoder)
        return self.outputs()


class Selection(Stage):
    """Keeps the best `num_teachers` of the pool by mean dev score (each selection task's first
    metric); every candidate's scores and the choice go to `teachers/selection.json`."""

    name = "selection"

    def inputs(self) -> list[str]:
        return Teachers(self.experiment).outputs()

    def outputs(self) -> list[str]:
        return [self.layout.selection_file]

    def done(self) -> bool:
        path = self.layout.selection_file
        names = {os.path.basename(c) for c in self.inputs()}
        return os.path.isfile(path) and read_json(path)["candidates"].keys() == names

    def run(self) -> list[str]:
        experiment = self.experiment
        if not self.done():
            dev = {name: experiment.dev_data[name] for name in experiment.selection_tasks}
            scores = {}
            for directory in self.inputs():
                results = evaluation.evaluate(model_dir_lib.load(directory), dev, self.config.runtime.eval_batch_size)
                per_task = {task: next(iter(metrics.values())) for task, metrics in results.items()}
                scores[os.path.basename(directory)] = {
                    "scores": per_task,
                    "mean": float(np.mean(list(per_task.values()))),
                }
            ranked = sorted(scores, key=lambda name: -scores[name]["mean"])
            chosen = sorted(ranked[: self.config.teachers.num_teachers], key=lambda name: int(name.split("_")[1]))
            write_json(
                self.layout.selection_file,
                {"selection_tasks": experiment.selection_tasks, "candidates": scores, "chosen": chosen},
            )
            logger.info(
                "teacher selection on %s: kept %s of %s",
                ", ".join(experiment.selection_tasks),
                ", ".join(chosen),
                ", ".join(f"{name} {100 * scores[name]['mean']:.1f}" for name in ranked),
            )
        return experiment.teacher_dirs()


class TeacherFinetune(Stage):
    """Fine-tunes each kept member on each teacher task, with a seed of its own (`finetune_seed`)."""

    name = "teacher_finetune"

    def outputs(self) -> list[str]:
        return [d for dirs in self.experiment.teacher_dirs_by_task().values() for d in dirs]

    def steps(self) -> int:
        experiment = self.experiment
        return sum(
            experiment.steps(self.config.finetune.finetune_epochs, tasks=[task])
            for task, dirs in experiment.teacher_dirs_by_task().items()
            for d in dirs
            if not model_dir_lib.exists(d)
        )

    def run(self) -> dict[str, list[str]]:
        seeds = {spec.name: spec.seed for spec in self.experiment.member_specs()}
        by_task = self.experiment.teacher_dirs_by_task()
        for task, copies in by_task.items():
            for directory in copies:
                name = os.path.basename(directory)
                finetune_copy(
                    self.experiment, self.layout.member_dir(name), task, directory, f"teacher {name}", seeds[name]
                )
        return by_task


class Gate(Stage):
    """The paper's claims need an ensemble better than one model: the selected ensemble against
    baseline run 0 on dev (each teacher task's first metric, x100, averaged) must exceed
    `gate_margin`. Written to gate.json; a closed gate stops the pipeline (`Experiment.run`)."""

    name = "gate"

    def inputs(self) -> list[str]:
        return [self.layout.run_dir("baseline", 0)] + TeacherFinetune(self.experiment).outputs()

    def outputs(self) -> list[str]:
        return [self.layout.gate_file]

    def done(self) -> bool:
        saved = read_json(self.layout.gate_file) if os.path.isfile(self.layout.gate_file) else None
        return (
            bool(saved)
            and saved["margin"] == self.config.teachers.gate_margin
            and saved["members"] == self.experiment.teacher_dirs_by_task()
        )

    def run(self) -> dict:
        if self.done():
            return read_json(self.layout.gate_file)
        margin, by_task = self.config.teachers.gate_margin, self.experiment.teacher_dirs_by_task()
        self.announce(f"the ensemble against the baseline on dev (margin {margin} points)")
        batch, dev = self.config.runtime.eval_batch_size, self.experiment.dev_data
        baseline = model_dir_lib.load(self.layout.run_dir("baseline", 0))
        scores = {}
        for task, directories in by_task.items():
            split = {task: dev[task]}
            _, averaged = ensemble.member_outputs([model_dir_lib.load(d) for d in directories], split, batch)
            first = lambda outputs: 100 * next(iter(evaluation.score_outputs(split, outputs)[task].values()))  # noqa: E731
            scores[task] = {
                "ensemble": first(averaged),
                "baseline": first(inference.dev_outputs(baseline, split, batch)),
            }
        gain = float(np.mean([entry["ensemble"] - entry["baseline"] for entry in scores.values()]))
        opened = gain > margin
        result = {
            "margin": margin,
            "gain": gain,
            "open": opened,
            "scores": scores,
            "members": by_task,
            "verdict": "testable"
            if opened
            else "untestable: the ensemble does not beat one MT-DNN by the "
            f"pre-set margin on dev (gain {gain:+.2f} <= {margin} points)",
        }
        write_json(self.layout.gate_file, result)
        logger.info("gate: ensemble - baseline on dev %+.2f points (margin %s): %s", gain, margin, result["verdict"])
        return result

    def untestable(self, gate: dict) -> dict:
        """report.json / report.md of a pipeline stopped by a closed gate."""
        lines = [
            f"| {task} | {s['ensemble']:.2f} | {s['baseline']:.2f} | {s['ensemble'] - s['baseline']:+.2f} |"
            for task, s in gate["scores"].items()
        ]
        text = (
            "The paper's claims are untestable here: " + gate["verdict"] + ".\n\n| task (dev, first metric x100) "
            "| ensemble | baseline | gain |\n|---|---|---|---|\n"
            + "\n".join(lines)
            + "\n\nNo student was trained; change the teachers (a new pre-registration) and run again."
        )
        report = {
            "gate": gate,
            "claims": [],
            "verdict": "untestable",
            "config": self.config.to_dict(),
            "environment": environment(self.experiment.precision),
        }
        write_json(os.path.join(self.layout.root, "report.json"), report)
        write_atomic(os.path.join(self.layout.root, "report.md"), text + "\n")
        print(text)
        return report


# --- soft labels and the student side ---------------------------------------------------------------
class SoftLabels(Stage):
    """Writes the ensemble's soft labels of every task with a teacher (skipped if valid)."""

    name = "soft_labels"

    def outputs(self) -> list[str]:
        return [self.layout.soft_labels_dir]

    def done(self) -> bool:
        directory = self.layout.soft_labels_dir
        done = ensemble.soft_labels_valid(
            directory, self.experiment.soft_label_data(), self.config.distillation.temperature
        )
        if done:
            logger.info("soft labels in %s are valid, skipping", directory)
        return done

    def run(self) -> str:
        experiment, directory = self.experiment, self.layout.soft_labels_dir
        self.announce(f"averaging the teachers' predictions on {', '.join(experiment.teacher_tasks)} -> {directory}")
        if not self.done():
            write_soft_labels(experiment, experiment.teacher_dirs_by_task(), directory)
        return directory


class Run(Stage):
    """One seed run of the distilled student or of the plain MT-DNN baseline (same settings, seed
    `seed + run`); loaded instead when already trained."""

    def __init__(self, experiment, kind: str, run: int = 0):
        super().__init__(experiment)
        self.name, self.run_number = kind, run
        self.seed = self.config.training.seed + run

    def outputs(self) -> list[str]:
        return [self.layout.run_dir(self.name, self.run_number)]

    def steps(self) -> int:
        if model_dir_lib.exists(self.outputs()[0]):
            return 0
        return self.experiment.steps(self.config.training.epochs, extra=self.name == "student")

    def run(self) -> MTDNN:
        directory, distillation = self.outputs()[0], self.config.distillation
        if self.name == "student":
            source = "online teachers" if distillation.online_teachers else "cached soft labels"
            self.announce(
                f"distilling ({source}, alpha {distillation.alpha}, T {distillation.temperature}, "
                f"seed {self.seed}) -> {directory}"
            )
            return self.experiment.train_student(directory, self.seed)
        self.announce(f"training the MT-DNN baseline (seed {self.seed}) -> {directory}")
        if model_dir_lib.complete(directory):
            logger.info("baseline exists, skipping")
            return model_dir_lib.load(directory)
        config = self.config.replace(seed=self.seed)
        trained = self.experiment.train_one(
            config, directory, "baseline", encoder=self.experiment.student_encoder(self.seed)
        )
        return in_precision(trained, "float32")


class Variants(Stage):
    """Beyond the paper, on the same teachers: a student with teacher annealing (`compare_anneal`)
    and self-distillation rounds (round r's student learns from round r-1's alone, through its
    own soft labels in `soft_labels_r<r>/`)."""

    name = "variants"

    def outputs(self) -> list[str]:
        return list(self.layout.variant_dirs().values())

    def steps(self) -> int:
        epochs = self.config.training.epochs
        return sum(self.experiment.steps(epochs, extra=True) for d in self.outputs() if not model_dir_lib.exists(d))

    def run(self) -> dict[str, str]:
        experiment, distillation, rows = self.experiment, self.config.distillation, self.layout.variant_dirs()
        self.announce(", ".join(f"{row} -> {d}" for row, d in rows.items()))
        seed = self.config.training.seed
        if "student_anneal" in rows:
            annealed = dataclasses.replace(distillation, alpha_schedule="anneal", compare_anneal=False)
            experiment.train_student(rows["student_anneal"], seed, settings=annealed)
        teacher = self.layout.student_dir
        for number in range(1, distillation.self_distill_rounds + 1):
            labels = self.layout.round_soft_labels_dir(number)
            if not ensemble.soft_labels_valid(labels, experiment.soft_label_data(), distillation.temperature):
                logger.info("self-distillation round %d: soft labels of %s -> %s", number, teacher, labels)
                write_soft_labels(experiment, {task: [teacher] for task in experiment.teacher_tasks}, labels)
            else:
                logger.info("soft labels in %s are valid, skipping", labels)
            experiment.train_student(rows[f"student_r{number}"], seed, soft_labels_dir=labels, teacher_dirs=[teacher])
            teacher = rows[f"student_r{number}"]
        return rows


class Finetune(Stage):
    """MT-DNN's second stage for the student and the baseline: a copy of each fine-tuned on each
    `finetune_tasks` task (`<dir>-finetuned/<task>`); the multi-task student stays the model that
    export serves."""

    name = "finetune"

    def _copies(self) -> dict[str, tuple[str, int, dict[str, str]]]:
        """`{row: (directory, seed, {task: copy})}` of every seed run."""
        tasks, seed = self.experiment.finetune_tasks, self.config.training.seed
        return {
            run_row(name, run): (d, seed + run, self.layout.finetuned_dirs(d, tasks))
            for (name, run), d in self.layout.seeded_dirs().items()
        }

    def outputs(self) -> list[str]:
        return [copy for _, _, copies in self._copies().values() for copy in copies.values()]

    def steps(self) -> int:
        return sum(
            self.experiment.steps(self.config.finetune.finetune_epochs, tasks=[task])
            for _, _, copies in self._copies().values()
            for task, d in copies.items()
            if not model_dir_lib.exists(d)
        )

    def run(self) -> dict[str, dict[str, str]]:
        models = {row: entry for row, entry in self._copies().items() if model_dir_lib.exists(entry[0])}
        self.announce(
            f"{', '.join(models)} on {', '.join(self.experiment.finetune_tasks)} "
            f"({self.config.finetune.finetune_epochs} epoch(s) each)"
        )
        return {
            row: {
                task: finetune_copy(self.experiment, directory, task, target, row, seed)
                for task, target in copies.items()
            }
            for row, (directory, seed, copies) in models.items()
        }


def finetune_copy(experiment, source: str, task: str, directory: str, label: str, model_seed: int) -> str:
    """Fine-tunes the multi-task model in `source` (trained with `model_seed`) on `task` into
    `directory` (skipped if done), with a seed of its own (`finetune_seed`)."""
    if model_dir_lib.complete(directory):
        logger.info("fine-tuned model %s exists, skipping", directory)
        return directory
    config = experiment.config
    settings = config.finetune
    actual = config.replace(
        seed=finetune_seed(model_seed, task),
        epochs=settings.finetune_epochs,
        learning_rate=settings.finetune_learning_rate or config.training.learning_rate,
    )
    logger.info("fine-tuning %s on %s (seed %d) -> %s", label, task, actual.training.seed, directory)
    train_model(
        actual,
        directory,
        {task: experiment.train_data[task]},
        source_dir=source,
        label=f"fine-tune {task}",
        callbacks=experiment.callbacks,
        clock=experiment.clock,
    )
    return directory


def write_soft_labels(experiment, teachers: dict[str, list[str]], directory: str) -> None:
    """The soft labels of `teachers` (`{task: member dirs}`) on the teacher tasks' data."""
    config = experiment.config
    distillation = config.distillation
    ensemble.make_soft_labels(
        teachers,
        experiment.soft_label_data(),
        distillation.temperature,
        directory,
        config.runtime.eval_batch_size,
        config.training.checkpoint_every_steps,
        distribute.inference_policy(distillation.soft_labels_precision),
    )
