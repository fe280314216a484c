"""Training the student: an MT-DNN inside a `Distiller`, on cached soft labels or online teachers.

The student's batches carry, per example, the teachers' soft targets (read from the
soft-label files and matched by example id) and masks; `Distiller.compute_losses` mixes
them with the hard labels per task. Everything else (data, optimizer, resumable fit,
saving) is what `mtkd_tf.training` does for a plain MT-DNN.
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from mtkd_tf import model_dir as model_dir_lib
from mtkd_tf.config import DistillationConfig, TrainingConfig
from mtkd_tf.data.split import SplitData
from mtkd_tf.distill import ensemble, soft_labels
from mtkd_tf.distill.distiller import Distiller, distillation_targets, soft_width
from mtkd_tf.errors import ConfigError
from mtkd_tf.models.encoder import Encoder
from mtkd_tf.models.families import tokenizer_family
from mtkd_tf.models.mtdnn import MTDNN
from mtkd_tf.progress import RunClock
from mtkd_tf.tasks import Task
from mtkd_tf.data.preprocessing import PAD_TO_MULTIPLE_OF
from mtkd_tf.training import encoder_preprocessor, fit_and_save, static_shapes, training_data

logger = logging.getLogger(__name__)


def teacher_task_names(tasks: Sequence[Task], teacher_tasks: Sequence[str] = ()) -> list[str]:
    """The tasks with teachers: `teacher_tasks`, or every trained task when it is empty."""
    trained = [task.name for task in tasks if task.trainable]
    if not teacher_tasks:
        return trained
    unknown = [name for name in teacher_tasks if name not in trained]
    if unknown:
        raise ConfigError(f"teacher task(s) {', '.join(unknown)} are not among the trained tasks {', '.join(trained)}",
                          "teacher_tasks")
    return list(teacher_tasks)


def train_student(
    tasks: Sequence[Task],
    train: Mapping[str, SplitData],
    encoder: Encoder,
    config: TrainingConfig,
    distillation: DistillationConfig,
    student_dir: str,
    max_seq_length: int,
    teacher_tasks: Sequence[str] = (),
    soft_labels_dir: str | None = None,
    teacher_dirs: Sequence[str] = (),
    unlabelled: Mapping[str, SplitData] | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    clock: RunClock | None = None,
    experiment_config: dict | None = None,
    pad_to_multiple_of: int = PAD_TO_MULTIPLE_OF,
) -> MTDNN:
    """Trains the student MT-DNN with a Distiller (in the current strategy scope), saves it to
    `student_dir` and returns it.

    Soft targets come from `soft_labels_dir` (cached), or with `distillation.online_teachers`
    from the frozen models in `teacher_dirs`. `unlabelled[task]` is extra text of a task
    with a teacher: it joins that task's training data with the soft loss only.
    """
    config.validate()
    distillation.validate()
    keras.utils.set_random_seed(config.seed)
    with_teacher = teacher_task_names(tasks, teacher_tasks)
    strategy = tf.distribute.get_strategy()
    static = static_shapes(config, strategy)
    preprocessor = encoder_preprocessor(encoder, max_seq_length, pad_to_multiple_of, static)
    student = MTDNN(encoder.backbone, tasks, preprocessor=preprocessor)
    width = soft_width(student.tasks)
    splits, label_masks = [], {}
    for task in student.tasks:
        data = train[task.name]
        extra = (unlabelled or {}).get(task.name)
        if extra is not None and task.name in with_teacher:
            label_masks[task.name] = np.concatenate([np.ones(len(data)), np.zeros(len(extra))])
            data = data.concat(extra)
        splits.append(data)
    teachers = []
    if distillation.online_teachers:
        members = [model_dir_lib.load(directory) for directory in teacher_dirs]
        if not members:
            raise ConfigError("online_teachers needs teacher models (teacher_dirs, or the teachers stage)", "online_teachers")
        ensemble.check_compatible(members, [t for t in student.tasks if t.name in with_teacher], encoder.vocabulary,
                                  tokenizer_family(encoder.tokenizer).double_separator)
        teachers = members
    targets = {}
    for task, data in zip(student.tasks, splits):
        soft = None
        if task.name in with_teacher and not distillation.online_teachers:
            stored = soft_labels.read(soft_labels.path_for(soft_labels_dir, task.name))
            parts = [train[task.name]] + ([unlabelled[task.name]] if task.name in label_masks else [])
            soft = np.concatenate([soft_labels.align(stored, task, part, distillation.temperature) for part in parts])
        targets[task.name] = distillation_targets(task, len(data), width, soft, label_masks.get(task.name))
    data = training_data(splits, preprocessor, config, targets=targets, drop_remainder=static, strategy=strategy)
    distiller = Distiller(
        student,
        alpha=distillation.alpha,
        task_alpha=distillation.task_alpha,
        temperature=distillation.temperature,
        soft_loss=distillation.soft_loss,
        teachers=teachers,
        teacher_tasks=with_teacher,
        hidden_weight=distillation.hidden_loss_weight,
        alpha_schedule=distillation.alpha_schedule,
        total_steps=data.steps_per_epoch * config.epochs,
    )
    return fit_and_save(distiller, student, encoder, data, config, student_dir, callbacks, "student", clock,
                        experiment_config)
