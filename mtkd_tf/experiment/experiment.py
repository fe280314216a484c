"""`Experiment`: the paper's procedure end to end from one `ExperimentConfig`, as a list of stages.

    teachers -> soft labels -> distilled student (+ the plain MT-DNN baseline) -> evaluation -> report

>>> import mtkd_tf as mt
>>> config = mt.ExperimentConfig.from_flagfile("configs/tiny.cfg", model_dir="runs/kd", epochs=3)
>>> report = mt.Experiment(config).run()          # or stage by stage:
>>> experiment = mt.Experiment(config)
>>> experiment.teachers(); experiment.soft_labels(); student = experiment.student()
>>> student.predict_texts("sst2", ["a gripping film"])["label"]

`run()` walks `stages()` (mtkd_tf/experiment/stages.py: what each reads and writes, when it
is done, how it runs); every stage is skipped when its outputs exist and validate, so running
the same experiment again resumes where it stopped, and a stage interrupted mid-way resumes
from its last checkpoint. Where each stage writes is `ExperimentLayout`'s. The experiment owns
the data (`ExperimentData`) and the `tf.distribute` strategy, whose scope each stage enters.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from typing import Sequence

import keras

from mtkd_tf.config import ExperimentConfig
from mtkd_tf.data import batching
from mtkd_tf.data.split import SplitData
from mtkd_tf.distill import ensemble
from mtkd_tf.distill.student import Distillation
from mtkd_tf.errors import ConfigError
from mtkd_tf.experiment import stages as stages_lib
from mtkd_tf.experiment.data import ExperimentData
from mtkd_tf.experiment.evaluate import Evaluate, Report
from mtkd_tf.experiment.layout import ExperimentLayout
from mtkd_tf.models import model_dir as model_dir_lib
from mtkd_tf.models.encoder import Encoder, check_spec, load_encoder, read_vocabulary
from mtkd_tf.models.mtdnn import MTDNN, in_precision
from mtkd_tf.runtime.directory_lock import DirectoryLock
from mtkd_tf.runtime.files import read_json
from mtkd_tf.runtime.progress import RunClock, duration
from mtkd_tf.training import distribute, preemption
from mtkd_tf.training.train import train_model

logger = logging.getLogger("mtkd_tf")


class Experiment:
    """One run of the method, configured by an `ExperimentConfig` (see the module docstring).

    Args:
        config: every setting; `config.runtime.model_dir` is the experiment directory.
        strategy: a `tf.distribute.Strategy` (default: the one `config.runtime.strategy` names,
            created before any other TF op, as MultiWorkerMirroredStrategy requires).
        callbacks: Keras callbacks added to every training run (teachers, student, baseline).
    """

    def __init__(self, config: ExperimentConfig, strategy=None, callbacks: Sequence[keras.callbacks.Callback] = ()):
        self.config = config.validate()
        runtime = config.runtime
        if not runtime.model_dir:
            raise ConfigError("model_dir is required", "model_dir")
        self.strategy = strategy or distribute.get_strategy(runtime.strategy, runtime.num_gpus, runtime.tpu)
        preemption.reclaim()  # multi-worker: TensorFlow took SIGTERM over (see there)
        if runtime.deterministic:
            import tensorflow as tf

            tf.config.experimental.enable_op_determinism()
        self.precision = distribute.set_precision(runtime.mixed_precision)  # what `auto` resolved to
        self.callbacks = list(callbacks)
        self.clock = RunClock()
        self.data = ExperimentData(config)
        self.layout = ExperimentLayout.of(config, lambda path: distribute.worker_dir(path, self.strategy))
        # What earlier runs wrote: differs from `layout` only on non-chief workers, which read the
        # chief's teachers and soft labels unless they made their own.
        self.shared = ExperimentLayout.of(config)
        self._validated = False
        self._position: tuple[int, int] | None = None

    # --- the data (ExperimentData) --------------------------------------------------------------
    tasks = property(lambda self: self.data.tasks)
    train_data = property(lambda self: self.data.train)
    heldout_data = property(lambda self: self.data.heldout)
    unlabelled_data = property(lambda self: self.data.unlabelled)
    dev_data = property(lambda self: self.data.dev)
    teacher_tasks = property(lambda self: self.data.teacher_tasks)

    def validate(self) -> None:
        """Settings that need the tasks, checked (and the data read) before any stage trains."""
        if self._validated:
            return
        config, data = self.config, self.data
        trained = set(data.train)  # reads and checks every training file
        data.unlabelled, data.teacher_tasks
        unknown = sorted(set(config.distillation.task_alpha) - trained)
        if unknown:
            raise ConfigError(
                f"task_alpha names task(s) {', '.join(unknown)} that are not trained ({', '.join(sorted(trained))})",
                "task_alpha",
            )
        unknown = sorted(set(config.finetune.finetune_tasks) - trained)
        if unknown:
            raise ConfigError(
                f"finetune_tasks: task(s) {', '.join(unknown)} are not trained ({', '.join(sorted(trained))})",
                "finetune_tasks",
            )
        model = config.model
        for spec in {
            model.encoder,
            config.distillation.student_encoder or model.encoder,
            *config.teachers.teacher_encoders,
        }:
            check_spec(spec)
        if model.vocab_file:
            read_vocabulary(model.vocab_file)
        self.member_specs()
        if config.teachers.teacher_pool > config.teachers.num_teachers:
            lacking = [
                name
                for name in self.selection_tasks
                if not any(d.labels is not None for d in data.dev.get(name, {}).values())
            ]
            if lacking:
                raise ConfigError(
                    f"teacher_selection_tasks: {', '.join(lacking)} has no labelled dev data to rank the "
                    "teacher pool by",
                    "teacher_selection_tasks",
                )
        missing = [directory for directory in config.teachers.teacher_dirs if not model_dir_lib.exists(directory)]
        if missing:
            raise ConfigError(f"teacher_dirs: no trained model in {', '.join(missing)}", "teacher_dirs")
        self._validated = True

    # --- the stages ------------------------------------------------------------------------------
    def stages(self) -> list[stages_lib.Stage]:
        """The pipeline, in order: what `run()` walks and what its time estimate adds up."""
        config, layout = self.config, self.layout
        gated = config.teachers.gate_margin is not None
        found: list[stages_lib.Stage] = [stages_lib.Teachers(self)]
        if not config.teachers.teacher_dirs and config.teachers.teacher_pool > config.teachers.num_teachers:
            found.append(stages_lib.Selection(self))
        if not config.teachers.teacher_dirs and config.finetune.finetune_epochs:
            found.append(stages_lib.TeacherFinetune(self))
        if gated:
            found += [stages_lib.Run(self, "baseline", 0), stages_lib.Gate(self)]
        found.append(stages_lib.SoftLabels(self))
        found += [
            stages_lib.Run(self, name, run)
            for (name, run) in layout.seeded_dirs()
            if not (gated and (name, run) == ("baseline", 0))
        ]
        if layout.variant_dirs():
            found.append(stages_lib.Variants(self))
        if config.finetune.finetune_epochs and config.finetune.finetune_student:
            found.append(stages_lib.Finetune(self))
        return found + [Evaluate(self), Report(self)]

    def lock(self) -> DirectoryLock:
        """The lock of this process's experiment directory (`with experiment.lock(): ...`): a second
        process on it stops with an error naming this one (multi-worker: each worker locks the
        directory it writes, the chief `model_dir`, the others their scratch directory)."""
        reads = self.config.runtime.mode in ("evaluate", "predict")  # of a model that must exist: not made
        return DirectoryLock(self.layout.root, "model_dir", create=not reads)

    def run(self) -> dict:
        """The whole pipeline: every stage in order, each skipped when already done; returns the report."""
        with preemption.stop_on_signals(self.config.runtime.stop_grace_seconds), self.lock():
            return self._run()

    def _run(self) -> dict:
        self.validate()
        started, stages = time.time(), self.stages()
        for stage in stages:
            self.clock.plan(stage.steps())
        result = None
        for number, stage in enumerate(stages, start=1):
            self._position = (number, len(stages))
            result = stage()
            if isinstance(stage, stages_lib.Gate) and not result["open"]:
                self._position = None
                return stage.untestable(result)
        self._position = None
        logger.info("experiment finished in %s: %s", duration(time.time() - started), self.layout.root)
        return result

    def teachers(self) -> list[str]:
        """Trains the ensemble's members, keeps the best of a pool and fine-tunes them (each skipped
        when done); returns the kept multi-task members' directories."""
        if self.config.teachers.teacher_dirs:
            self.announce("teachers", f"using {len(self.config.teachers.teacher_dirs)} given model(s)")
            return list(self.config.teachers.teacher_dirs)
        for stage in self.stages():
            if isinstance(stage, (stages_lib.Teachers, stages_lib.Selection, stages_lib.TeacherFinetune)):
                stage()
        return self.teacher_dirs()

    def soft_labels(self) -> str:
        return stages_lib.SoftLabels(self)()

    def student(self, run: int = 0) -> MTDNN:
        """The distilled student of seed run `run` (seed `seed + run`), trained or loaded."""
        return stages_lib.Run(self, "student", run)()

    def baseline(self, run: int = 0) -> MTDNN:
        """The plain MT-DNN with the student's settings, trained or loaded."""
        return stages_lib.Run(self, "baseline", run)()

    def gate(self) -> dict:
        return stages_lib.Gate(self)()

    def variants(self) -> dict[str, str]:
        return stages_lib.Variants(self)()

    def finetune(self) -> dict[str, dict[str, str]]:
        return stages_lib.Finetune(self)()

    def evaluate(self) -> dict[str, dict]:
        return Evaluate(self)()

    def report(self, rows: dict[str, dict] | None = None) -> dict:
        """The report from the saved evidence (evaluating first if `rows` is None)."""
        if rows is None:
            self.evaluate()
        return Report(self)()

    # --- what the stages share ------------------------------------------------------------------
    def announce(self, stage: str, text: str) -> None:
        where = f"[{self._position[0]}/{self._position[1]}] " if self._position else ""
        print(f"{where}{stage}: {text}", file=sys.stderr, flush=True)

    def encoder(self, spec: str, dropout: float | None, seed: int) -> Encoder:
        """A fresh encoder (call inside the strategy scope)."""
        model = self.config.model
        return load_encoder(
            spec,
            dropout=dropout,
            vocab_file=model.vocab_file,
            training_texts=self.data.texts,
            vocabulary_size=model.vocab_size,
            seed=seed,
        )

    def student_encoder(self, seed: int) -> Encoder:
        """The encoder of the student and of the baseline."""
        model = self.config.model
        return self.encoder(self.config.distillation.student_encoder or model.encoder, model.encoder_dropout, seed)

    def member_specs(self) -> list[ensemble.MemberSpec]:
        """Every candidate member to train: `teacher_pool` of them, or `num_teachers`."""
        teachers = self.config.teachers
        return ensemble.member_specs(
            max(teachers.teacher_pool, teachers.num_teachers),
            self.config.training.seed,
            teachers.teacher_dropouts,
            teachers.teacher_encoders or [self.config.model.encoder],
        )

    @property
    def selection_tasks(self) -> list[str]:
        return list(self.config.teachers.teacher_selection_tasks) or self.data.teacher_tasks

    @property
    def finetune_tasks(self) -> list[str]:
        return list(self.config.finetune.finetune_tasks) or list(self.data.train)

    def readable(self, name: str) -> str:
        """Where to read stage output `name` from: this process's directory if it wrote one, else
        the chief's (non-chief workers read the chief's teachers and soft labels)."""
        own = getattr(self.layout, name)
        return own if os.path.exists(own) else getattr(self.shared, name)

    def teacher_dirs(self) -> list[str]:
        """The ensemble's multi-task members: `teacher_dirs`, the pool's chosen members
        (`teachers/selection.json`), or every finished member."""
        explicit = self.config.teachers.teacher_dirs
        if explicit:
            return list(explicit)
        root = self.readable("teacher_dir")
        selection = os.path.join(root, os.path.basename(self.layout.selection_file))
        if os.path.isfile(selection):
            return [os.path.join(root, name) for name in read_json(selection)["chosen"]]
        return ensemble.member_dirs(root)

    def teacher_dirs_by_task(self, tasks: Sequence[str] | None = None) -> dict[str, list[str]]:
        """Each task's ensemble: the members fine-tuned on it (`finetune_epochs`, teacher tasks),
        else the multi-task members."""
        members, teacher_tasks = self.teacher_dirs(), self.data.teacher_tasks
        finetuned = self.config.finetune.finetune_epochs and not self.config.teachers.teacher_dirs
        return {
            name: [self.layout.finetuned_member_dir(d, name) for d in members]
            if finetuned and name in teacher_tasks
            else members
            for name in (tasks if tasks is not None else teacher_tasks)
        }

    def soft_label_data(self) -> dict[str, list[SplitData]]:
        return self.data.soft_label_data()

    def steps(self, epochs: int, extra: bool = False, tasks: Sequence[str] | None = None) -> int:
        """Training steps of one model over `tasks` (default: all; `extra`: with the teacher
        tasks' unlabelled text), for the run's time estimate."""
        batch, unlabelled, teacher_tasks = (
            self.config.training.batch_size,
            self.data.unlabelled,
            self.data.teacher_tasks,
        )
        sizes = [
            len(data) + (len(unlabelled.get(name, ())) if extra and name in teacher_tasks else 0)
            for name, data in self.data.train.items()
            if tasks is None or name in tasks
        ]
        return epochs * sum(batching.num_batches(size, batch) for size in sizes)

    def train_one(self, config: ExperimentConfig, directory: str, label: str, **how) -> MTDNN:
        """`training.train_model` on this experiment's training data, callbacks and clock."""
        return train_model(
            config,
            directory,
            self.data.train,
            tasks=self.data.tasks,
            label=label,
            callbacks=self.callbacks,
            clock=self.clock,
            **how,
        )

    def train_student(
        self,
        directory: str,
        seed: int,
        settings=None,
        soft_labels_dir: str | None = None,
        teacher_dirs: Sequence[str] | None = None,
    ) -> MTDNN:
        """Trains one student (seed `seed`; `settings`: other distillation settings) into
        `directory`, or loads it if done; returned in float32, as mt.load_model gives it."""
        if model_dir_lib.complete(directory):
            logger.info("student exists, skipping")
            return model_dir_lib.load(directory)
        config = dataclasses.replace(self.config.replace(seed=seed), distillation=settings or self.config.distillation)
        data = self.data
        objective = Distillation(
            config.distillation,
            data.teacher_tasks,
            soft_labels_dir or self.readable("soft_labels_dir"),
            self.teacher_dirs() if teacher_dirs is None else teacher_dirs,
            data.unlabelled,
        )
        student = self.train_one(config, directory, "student", encoder=self.student_encoder(seed), objective=objective)
        return in_precision(student, "float32")

    def close(self) -> None:
        """Removes a non-chief worker's scratch directory (multi-worker runs)."""
        distribute.remove_worker_dir(self.config.runtime.model_dir, self.strategy)
