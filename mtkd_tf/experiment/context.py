"""`Context`: what every stage of an experiment may use, handed to each stage as its argument:
the settings, the data, where to write and read, and the run's services (strategy, callbacks,
clock, lock). The teachers' directories are resolved by `TeacherSet`, the recipes that train a
model are in `mtkd_tf.experiment.recipes`, and the stages in `mtkd_tf.experiment.stages`."""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from typing import Any, Sequence

import keras

from mtkd_tf.config import ExperimentConfig
from mtkd_tf.data import batching
from mtkd_tf.distill import ensemble
from mtkd_tf.errors import ConfigError
from mtkd_tf.experiment import layout as layout_lib
from mtkd_tf.experiment.data import ExperimentData
from mtkd_tf.experiment.layout import ExperimentLayout
from mtkd_tf.models import model_dir as model_dir_lib
from mtkd_tf.models.encoder import Encoder, check_spec, load_encoder, read_vocabulary
from mtkd_tf.models.mtdnn import MTDNN
from mtkd_tf.runtime.directory_lock import DirectoryLock
from mtkd_tf.runtime.files import read_json
from mtkd_tf.runtime.progress import RunClock
from mtkd_tf.training.train import train_model


class TeacherSet:
    """The ensemble's members: every candidate to train, the ones kept, and each task's ensemble."""

    def __init__(self, config: ExperimentConfig, data: ExperimentData, layout: ExperimentLayout, readable):
        self.config, self.data, self.layout, self._readable = config, data, layout, readable

    @property
    def given(self) -> list[str]:
        """`teacher_dirs`: trained models the user gave (then nothing is trained)."""
        return list(self.config.teachers.teacher_dirs)

    def specs(self) -> list[ensemble.MemberSpec]:
        """Every candidate member to train: `teacher_pool` of them, or `num_teachers`."""
        teachers = self.config.teachers
        return ensemble.member_specs(
            max(teachers.teacher_pool, teachers.num_teachers),
            self.config.training.seed,
            teachers.teacher_dropouts,
            teachers.teacher_encoders or [self.config.model.encoder],
        )

    @property
    def from_files(self) -> dict[str, str]:
        """`{task: path}`: teacher tasks whose soft targets come from a file (`soft_labels_file`)."""
        return dict(self.config.teachers.soft_labels_file)

    @property
    def needed(self) -> bool:
        """Whether any teacher task needs members trained (every task may have a file instead)."""
        return not self.given and any(name not in self.from_files for name in self.data.teacher_tasks)

    @property
    def pooled(self) -> bool:
        """Whether the best `num_teachers` are chosen from a larger pool."""
        teachers = self.config.teachers
        return not teachers.teacher_dirs and teachers.teacher_pool > teachers.num_teachers

    @property
    def finetuned(self) -> bool:
        """Whether each kept member is fine-tuned on each teacher task (MT-DNN's second stage)."""
        return bool(self.config.finetune.finetune_epochs) and not self.config.teachers.teacher_dirs

    @property
    def selection_tasks(self) -> list[str]:
        return list(self.config.teachers.teacher_selection_tasks) or self.data.teacher_tasks

    def dirs(self) -> list[str]:
        """The ensemble's multi-task members: `teacher_dirs`, the pool's chosen members
        (`teachers/selection.json`), or every finished member."""
        if self.given:
            return self.given
        root = self._readable("teacher_dir")
        selection = os.path.join(root, os.path.basename(self.layout.selection_file))
        if os.path.isfile(selection):
            return [os.path.join(root, name) for name in read_json(selection)["chosen"]]
        return layout_lib.member_dirs(root)

    def by_task(self, tasks: Sequence[str] | None = None) -> dict[str, list[str]]:
        """Each task's ensemble: the members fine-tuned on it (`finetune_epochs`, teacher tasks),
        else the multi-task members."""
        members, teacher_tasks = self.dirs(), self.data.teacher_tasks
        return {
            name: [self.layout.finetuned_dir(d, name) for d in members]
            if self.finetuned and name in teacher_tasks
            else members
            for name in (tasks if tasks is not None else teacher_tasks)
            if name not in self.from_files
        }


@dataclasses.dataclass
class Context:
    """The settings, data, directories and services of one experiment (see the module docstring).

    `layout` is where this process writes; `shared` where earlier runs wrote, which differs only on
    non-chief workers of a multi-worker run (they read the chief's teachers and soft labels)."""

    config: ExperimentConfig
    data: ExperimentData
    layout: ExperimentLayout
    shared: ExperimentLayout
    strategy: Any
    precision: str
    callbacks: list[keras.callbacks.Callback] = dataclasses.field(default_factory=list)
    clock: RunClock = dataclasses.field(default_factory=RunClock)
    position: tuple[int, int] | None = None
    validated: bool = False

    @functools.cached_property
    def teachers(self) -> TeacherSet:
        return TeacherSet(self.config, self.data, self.layout, self.readable)

    def announce(self, stage: str, text: str) -> None:
        """One line on stderr for the user: `[k/n] stage: text` inside a pipeline."""
        where = f"[{self.position[0]}/{self.position[1]}] " if self.position else ""
        print(f"{where}{stage}: {text}", file=sys.stderr, flush=True)

    def lock(self) -> DirectoryLock:
        """The lock of this process's experiment directory: a second process on it stops with an
        error naming this one (multi-worker: each worker locks the directory it writes)."""
        reads = self.config.runtime.mode in ("evaluate", "predict")  # of a model that must exist: not made
        return DirectoryLock(self.layout.root, "model_dir", create=not reads)

    def readable(self, name: str) -> str:
        """Where to read directory `name` of the layout from: this process's if it wrote one, else
        the chief's."""
        own = getattr(self.layout, name)
        return own if os.path.exists(own) else getattr(self.shared, name)

    def validate(self) -> None:
        """Settings that need the tasks, checked (and the data read) before any stage trains."""
        if self.validated:
            return
        config, data = self.config, self.data
        trained = set(data.train)  # reads and checks every training file
        _ = data.unlabelled, data.teacher_tasks  # read and check them too
        known = ", ".join(sorted(trained))
        unknown = sorted(set(config.distillation.task_alpha) - trained)
        if unknown:
            raise ConfigError(
                f"task_alpha names task(s) {', '.join(unknown)} that are not trained ({known})", "task_alpha"
            )
        unknown = sorted(set(config.finetune.finetune_tasks) - trained)
        if unknown:
            raise ConfigError(
                f"finetune_tasks: task(s) {', '.join(unknown)} are not trained ({known})", "finetune_tasks"
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
        self.teachers.specs()
        if config.teachers.teacher_pool > config.teachers.num_teachers:
            lacking = [
                name
                for name in self.teachers.selection_tasks
                if not any(d.labels is not None for d in data.dev.get(name, {}).values())
            ]
            if lacking:
                raise ConfigError(
                    f"teacher_selection_tasks: {', '.join(lacking)} has no labelled dev data to rank the "
                    "teacher pool by",
                    "teacher_selection_tasks",
                )
        self._check_files()
        missing = [directory for directory in config.teachers.teacher_dirs if not model_dir_lib.exists(directory)]
        if missing:
            raise ConfigError(f"teacher_dirs: no trained model in {', '.join(missing)}", "teacher_dirs")
        self.validated = True

    def _check_files(self) -> None:
        """`soft_labels_file`: each names a teacher task and a file that exists; the soft targets are
        cached soft labels (online teachers and the gate need trained teachers)."""
        files, teacher_tasks = self.teachers.from_files, self.data.teacher_tasks
        if not files:
            return
        unknown = sorted(set(files) - set(teacher_tasks))
        if unknown:
            raise ConfigError(
                f"soft_labels_file names {', '.join(unknown)}, not among the teacher tasks {', '.join(teacher_tasks)}",
                "soft_labels_file",
            )
        missing = [f"{task}:{path}" for task, path in files.items() if not os.path.isfile(path)]
        if missing:
            raise ConfigError(f"soft_labels_file: no such file: {', '.join(missing)}", "soft_labels_file")
        if self.config.distillation.online_teachers or self.config.teachers.gate_margin is not None:
            raise ConfigError(
                "soft_labels_file gives cached soft targets: it cannot be combined with online_teachers or "
                "gate_margin, which need trained teachers",
                ("soft_labels_file", "online_teachers" if self.config.distillation.online_teachers else "gate_margin"),
            )

    # --- what the recipes share ------------------------------------------------------------------
    @property
    def finetune_tasks(self) -> list[str]:
        return list(self.config.finetune.finetune_tasks) or list(self.data.train)

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

    def train(self, config: ExperimentConfig, directory: str, label: str, **how) -> MTDNN:
        """`training.train_model` on this experiment's training data, callbacks and clock."""
        return train_model(
            config,
            directory,
            self.data.train,
            tasks=self.data.tasks,
            label=label,
            callbacks=self.callbacks,
            clock=self.clock,
            dev=self.data.dev,
            **how,
        )

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
