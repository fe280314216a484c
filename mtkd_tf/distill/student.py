"""Training the student: an MT-DNN inside a `Distiller`, on cached soft labels or online teachers.

The student's batches carry, per example, the teachers' soft targets (read from the
soft-label files and matched by example id) and masks; `Distiller.compute_losses` mixes
them with the hard labels per task. Everything else (data, optimizer, resumable fit,
saving) is `training.train_model`, as for a plain MT-DNN.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Mapping, Sequence

import numpy as np

from mtkd_tf.config import DistillationConfig
from mtkd_tf.data.split import SplitData
from mtkd_tf.data.tasks import Task
from mtkd_tf.distill import ensemble, soft_labels
from mtkd_tf.distill.distiller import Distiller, distillation_targets, soft_width
from mtkd_tf.errors import ConfigError
from mtkd_tf.models import model_dir as model_dir_lib
from mtkd_tf.models.encoder import Encoder
from mtkd_tf.models.families import tokenizer_family
from mtkd_tf.models.mtdnn import MTDNN

logger = logging.getLogger(__name__)


def teacher_task_names(tasks: Sequence[Task], teacher_tasks: Sequence[str] = ()) -> list[str]:
    """The tasks with teachers: `teacher_tasks`, or every trained task when it is empty."""
    trained = [task.name for task in tasks if task.trainable]
    if not teacher_tasks:
        return trained
    unknown = [name for name in teacher_tasks if name not in trained]
    if unknown:
        raise ConfigError(
            f"teacher task(s) {', '.join(unknown)} are not among the trained tasks {', '.join(trained)}",
            "teacher_tasks",
        )
    return list(teacher_tasks)


@dataclasses.dataclass
class Distillation:
    """What distillation adds to training an MT-DNN (`training.train_model`'s objective): each
    example's soft targets and masks, and the `Distiller` whose loss mixes them with the labels.

    Soft targets come from `soft_labels_dir` (cached), or with `settings.online_teachers` from the
    frozen models in `teacher_dirs`. `unlabelled[task]` is extra text of a task with a teacher:
    it joins that task's training data with the soft loss only.

    >>> student = mt.train_model(config, "runs/kd/student", train, tasks=tasks, encoder=encoder,
    ...                          objective=Distillation(config.distillation, ["sst2"], "runs/kd/soft_labels"))
    """

    settings: DistillationConfig
    teacher_tasks: Sequence[str]
    soft_labels_dir: str | None = None
    teacher_dirs: Sequence[str] = ()
    unlabelled: Mapping[str, SplitData] = dataclasses.field(default_factory=dict)
    teachers: list[MTDNN] = dataclasses.field(default_factory=list, init=False)

    def data(self, model: MTDNN, encoder: Encoder, splits: list[SplitData]) -> tuple[list[SplitData], dict]:
        """The splits with each teacher task's unlabelled text appended, and every task's targets."""
        settings, with_teacher = self.settings, set(self.teacher_tasks)
        extended, label_masks = [], {}
        for task, data in zip(model.tasks, splits, strict=True):  # one split per head
            extra = self.unlabelled.get(task.name)
            if extra is not None and task.name in with_teacher:
                label_masks[task.name] = np.concatenate([np.ones(len(data)), np.zeros(len(extra))])
                data = data.concat(extra)
            extended.append(data)
        if settings.online_teachers:
            self.teachers = [model_dir_lib.load(directory) for directory in self.teacher_dirs]
            if not self.teachers:
                raise ConfigError(
                    "online_teachers needs teacher models (teacher_dirs, or the teachers stage)", "online_teachers"
                )
            ensemble.check_compatible(
                self.teachers,
                [t for t in model.tasks if t.name in with_teacher],
                encoder.vocabulary,
                tokenizer_family(encoder.tokenizer).double_separator,
            )
        width, targets = soft_width(model.tasks), {}
        for task, labelled, data in zip(model.tasks, splits, extended, strict=True):
            soft = None
            if task.name in with_teacher and not settings.online_teachers:
                stored = soft_labels.read(soft_labels.path_for(self.soft_labels_dir, task.name))
                parts = [labelled] + ([self.unlabelled[task.name]] if task.name in label_masks else [])
                soft = np.concatenate([soft_labels.align(stored, task, part, settings.temperature) for part in parts])
            targets[task.name] = distillation_targets(task, len(data), width, soft, label_masks.get(task.name))
        return extended, targets

    def trainer(self, model: MTDNN, total_steps: int) -> Distiller:
        """The Distiller of these settings around `model` (`Distiller.from_settings`)."""
        return Distiller.from_settings(
            self.settings,
            model,
            teachers=self.teachers,
            teacher_tasks=list(self.teacher_tasks),
            total_steps=total_steps,
        )
