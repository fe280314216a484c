"""The Distiller: a keras.Model around a student MT-DNN whose `train_step` sums its loss terms
(`distill.terms`), by default per task the hard-label and the soft (teacher) loss:

    L_t = (1 - alpha_t) * hard + alpha_t * soft

Soft targets come either cached in each batch (`y["soft"]`, `y["soft_mask"]`, made once by
the teacher ensemble) or from frozen online teachers run inside `train_step`; both give the
same loss on the same batch. Unlabelled rows (`y["label_mask"] == 0`) train on the soft
loss alone. With alpha = 0 it trains exactly like `MTDNN.fit`. `alpha_schedule="anneal"` moves
alpha from 1 at the first step to 0 at the last (teacher annealing, Clark et al. 2019). Losses are scaled to the
global batch, so any `tf.distribute` strategy gives the single-device result.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from mtkd_tf.config import DistillationConfig
from mtkd_tf.data.tasks import Task
from mtkd_tf.distill.terms import Batch, LossTerm, SoftLoss, deserialize_loss_term, loss_terms, serialize_loss_term
from mtkd_tf.errors import ConfigError
from mtkd_tf.models.mtdnn import MTDNN
from mtkd_tf.models.train_step import MultiTaskTrainStep, split_features
from mtkd_tf.training.distribute import MultiWorkerFit


def soft_width(tasks: Sequence[Task]) -> int:
    """Columns of `y["soft"]`: the widest head (classes, or 1 for a score)."""
    return max(task.num_classes for task in tasks)


def distillation_targets(
    task: Task, size: int, width: int, soft: np.ndarray | None = None, label_mask: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Per-example `y` extras of one task: soft targets padded to `width`, and the masks."""
    padded = np.zeros((size, width), np.float32)
    if soft is not None:
        padded[:, : task.num_classes] = np.asarray(soft, np.float32).reshape(size, -1)
    return {
        "soft": padded,
        "soft_mask": np.full(size, 1.0 if soft is not None else 0.0, np.float32),
        "label_mask": np.ones(size, np.float32) if label_mask is None else np.asarray(label_mask, np.float32),
    }


@keras.saving.register_keras_serializable(package="mtkd_tf")
class Distiller(MultiTaskTrainStep, MultiWorkerFit, keras.Model):
    """Trains `student` on the sum of its loss terms: by default a per-task mix of hard labels
    and teacher soft targets (`terms.HardLoss`, `terms.SoftLoss`).

    Args:
        student: the MTDNN to train.
        terms: the loss terms, summed in this order (default: hard and soft at alpha 0.5, T 1, ce);
            distinct names; each belongs to this Distiller (`bind` makes its variables).
        teachers: frozen MTDNNs for online distillation; empty: targets come with the batch.
        teacher_tasks: tasks that have a teacher (default: all of the student's).
        **kwargs: `keras.Model` arguments, or `DistillationConfig` settings instead of `terms`
            (`Distiller(student, alpha=0.3)`, mapped as `from_settings` does).

    >>> distiller = Distiller.from_settings(config.distillation, student, total_steps=1000)
    """

    def __init__(
        self,
        student: MTDNN,
        terms: Sequence[LossTerm] | None = None,
        teachers: Sequence[MTDNN] = (),
        teacher_tasks: Sequence[str] | None = None,
        **kwargs,
    ):
        settings = {name: kwargs.pop(name) for name in list(kwargs) if name in _SETTINGS}
        if settings and terms is not None:
            raise ConfigError(f"give the Distiller terms or settings, not both ({', '.join(settings)})")
        super().__init__(**kwargs)
        if terms is None:
            total_steps = settings.pop("total_steps", None)
            terms = loss_terms(DistillationConfig(**settings), total_steps)
        self.student = student
        self.teachers = list(teachers)
        for teacher in self.teachers:
            teacher.trainable = False
        names = [task.name for task in student.tasks]
        self.teacher_tasks = tuple(names if teacher_tasks is None else teacher_tasks)
        self.has_teacher = tf.constant([float(name in self.teacher_tasks) for name in names], tf.float32)
        self.width = soft_width(student.tasks)
        self.reads_features = any(term.needs_features for term in terms)
        if self.reads_features:
            self.student_features = student.features_model()
            self.teacher_features = [teacher.features_model() for teacher in self.teachers]
        self.terms = list(terms)
        term_names = [term.name for term in self.terms]
        if not term_names or len(set(term_names)) < len(term_names):
            raise ConfigError(f"the Distiller needs loss terms with distinct names, got {term_names}")
        for term in self.terms:
            term.bind(self)
            for attribute, layer in term.layers().items():  # tracked here: the checkpoints' variable paths
                setattr(self, attribute, layer)
        self.make_trackers(names, term_names, task_parts=[t.name for t in self.terms if t.logged_per_task])
        self.built = True  # the student (and teachers) are built; checkpoint restore needs this

    @classmethod
    def from_settings(
        cls,
        settings: DistillationConfig,
        student: MTDNN,
        teachers: Sequence[MTDNN] = (),
        teacher_tasks: Sequence[str] | None = None,
        total_steps: int | None = None,
    ) -> Distiller:
        """The Distiller a `DistillationConfig` describes, with the run's facts: the student, the
        online teachers, the tasks with a teacher and the number of training steps."""
        return cls(student, loss_terms(settings, total_steps), teachers=teachers, teacher_tasks=teacher_tasks)

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def term(self, cls: type[LossTerm]) -> LossTerm | None:
        """The first of the Distiller's terms that is a `cls`, or None."""
        return next((term for term in self.terms if isinstance(term, cls)), None)

    # --- losses --------------------------------------------------------------------------
    def current_alpha(self, task_id: tf.Tensor) -> tf.Tensor:
        """The soft term's weight at this step (`SoftLoss.current_alpha`)."""
        return self.term(SoftLoss).current_alpha(task_id, self)

    def mix_weights(self, batch: Batch) -> tuple[tf.Tensor, tf.Tensor]:
        """Per-example weights of the hard and soft terms: the soft term's alpha split, or the
        label mask and no soft weight without a soft term."""
        soft = self.term(SoftLoss)
        if soft is not None:
            return soft.mix_weights(batch)
        label_mask = batch.y.get("label_mask", tf.ones_like(batch.y["label"]))
        return label_mask, tf.zeros_like(label_mask)

    def compute_losses(self, x, y, training: bool):
        """Per-example values of each term and their sum, in the terms' order; the shared train
        step (`MultiTaskTrainStep`) does the rest."""
        features, task_id = split_features(x)
        batch = Batch(self, features, task_id, y, training, *self._forward(features, training))
        values = [term(batch) for term in self.terms]
        total = values[0]
        for value in values[1:]:  # left to right: (hard + soft) + hidden
            total = total + value
        return {"loss": total, **{term.name: value for term, value in zip(self.terms, values, strict=True)}}, task_id

    def _forward(self, features, training: bool):
        """The student's outputs and, when a term reads [CLS] vectors, the teachers' (features
        models); else the teachers run inside the soft term."""
        if not self.reads_features:
            return self.student(features, training=training), None
        outputs = self.student_features(features, training=training)
        return outputs, [t(features, training=False) for t in self.teacher_features]

    def get_config(self):
        return {
            "name": self.name,
            "student": keras.saving.serialize_keras_object(self.student),
            "teachers": [keras.saving.serialize_keras_object(t) for t in self.teachers],
            "teacher_tasks": list(self.teacher_tasks),
            "terms": [serialize_loss_term(term) for term in self.terms],
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["student"] = keras.saving.deserialize_keras_object(config["student"])
        config["teachers"] = [keras.saving.deserialize_keras_object(t) for t in config.get("teachers", [])]
        config["terms"] = [deserialize_loss_term(term) for term in config["terms"]]
        return cls(**config)


_SETTINGS = {field.name for field in dataclasses.fields(DistillationConfig)} | {"total_steps"}
