"""The Distiller: a keras.Model around a student MT-DNN whose `train_step` mixes, per task,
the hard-label loss and the soft (teacher) loss:

    L_t = (1 - alpha_t) * hard + alpha_t * soft

Soft targets come either cached in each batch (`y["soft"]`, `y["soft_mask"]`, made once by
the teacher ensemble) or from frozen online teachers run inside `train_step`; both give the
same loss on the same batch. Unlabelled rows (`y["label_mask"] == 0`) train on the soft
loss alone. With alpha = 0 it trains exactly like `MTDNN.fit`. `alpha_schedule="anneal"` moves
alpha from 1 at the first step to 0 at the last (teacher annealing, Clark et al. 2019). Losses are scaled to the
global batch, so any `tf.distribute` strategy gives the single-device result.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from mtkd_tf.config import ALPHA_SCHEDULES, check_alpha, check_choice, check_temperature
from mtkd_tf.data.tasks import CLASSIFICATION, RANKING, Task
from mtkd_tf.errors import ConfigError
from mtkd_tf.models.losses import SOFT_LOSSES, hard_loss, mix_weights, soft_loss, soften
from mtkd_tf.models.mtdnn import MTDNN
from mtkd_tf.models.train_step import MultiTaskTrainStep, per_task, split_features
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
    """Trains `student` on a per-task mix of hard labels and teacher soft targets.

    Args:
        student: the MTDNN to train.
        alpha: weight of the soft loss for tasks with a teacher (paper: 0.5).
        task_alpha: per-task overrides of alpha.
        temperature: T of the soft targets and of the student's softmax (paper: 1).
        soft_loss: "ce" (paper), "kl" or "mse" (on log-probabilities); regression uses MSE.
        teachers: frozen MTDNNs for online distillation; empty: targets come with the batch.
        teacher_tasks: tasks that have a teacher (default: all of the student's).
        hidden_weight: weight of an MSE between the projected student [CLS] vector and the
            teachers' mean [CLS] vector (online teachers only; for smaller students).
    """

    def __init__(
        self,
        student: MTDNN,
        alpha: float = 0.5,
        task_alpha: Mapping[str, float] | None = None,
        temperature: float = 1.0,
        soft_loss: str = "ce",
        teachers: Sequence[MTDNN] = (),
        teacher_tasks: Sequence[str] | None = None,
        hidden_weight: float = 0.0,
        alpha_schedule: str = "constant",
        total_steps: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        task_alpha = dict(task_alpha or {})
        check_alpha(alpha, task_alpha)
        check_temperature(temperature)
        check_choice("soft_loss", soft_loss, SOFT_LOSSES)
        unknown = sorted(set(task_alpha) - {t.name for t in student.tasks})
        if unknown:
            raise ConfigError(f"task_alpha names task(s) the student lacks: {', '.join(unknown)}", "task_alpha")
        if hidden_weight and not teachers:
            raise ConfigError("the hidden-state loss needs online teachers", "hidden_loss_weight")
        check_choice("alpha_schedule", alpha_schedule, ALPHA_SCHEDULES)
        if alpha_schedule == "anneal" and not (total_steps or 0) > 0:
            raise ConfigError("alpha_schedule=anneal needs the number of training steps", "alpha_schedule")
        self.student = student
        self.teachers = list(teachers)
        for teacher in self.teachers:
            teacher.trainable = False
        names = [task.name for task in student.tasks]
        self.teacher_tasks = tuple(names if teacher_tasks is None else teacher_tasks)
        self.alpha = alpha
        self.task_alpha = task_alpha
        self.temperature = temperature
        self.soft_loss_kind = soft_loss
        self.hidden_weight = hidden_weight
        self.alpha_schedule = alpha_schedule
        self.total_steps = total_steps
        self.alphas = tf.constant([task_alpha.get(name, alpha) for name in names], tf.float32)
        self.has_teacher = tf.constant([float(name in self.teacher_tasks) for name in names], tf.float32)
        self.width = soft_width(student.tasks)
        if hidden_weight:
            self.student_features = student.features_model()
            self.teacher_features = [teacher.features_model() for teacher in self.teachers]
            self.projection = keras.layers.Dense(self.teachers[0].encoder.hidden_dim, name="hidden_projection")
            # built now, so every variable exists before the first trace (training.fit builds the optimizer then)
            self.projection.build((None, student.encoder.hidden_dim))
        parts = ("hard", "soft", "hidden") if hidden_weight else ("hard", "soft")
        self.make_trackers(names, parts, task_parts=("hard", "soft"))
        self.built = True  # the student (and teachers) are built; checkpoint restore needs this

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    # --- targets -------------------------------------------------------------------------
    def teacher_targets(self, features, task_id, teacher_outputs=None):
        """Online targets of the batch's task: mean teacher probabilities at T (ranking: of each
        candidate within its question), or mean score."""
        if teacher_outputs is None:
            teacher_outputs = [teacher(features, training=False) for teacher in self.teachers]

        def target(i, task):
            if task.type == CLASSIFICATION:
                probs = [tf.exp(soften(out[task.name], self.temperature)) for out in teacher_outputs]
            elif task.type == RANKING:  # each question's candidate distribution, as the cached targets
                probs = [
                    tf.reshape(
                        tf.nn.softmax(tf.reshape(out[task.name], [-1, task.group_size]) / self.temperature), [-1, 1]
                    )
                    for out in teacher_outputs
                ]
            else:
                probs = [out[task.name][:, None] for out in teacher_outputs]
            mean = tf.add_n(probs) / len(probs)
            return tf.pad(mean, [[0, 0], [0, self.width - mean.shape[-1]]])

        return tf.stop_gradient(per_task(self.student.tasks, task_id, target))

    # --- losses --------------------------------------------------------------------------
    def current_alpha(self, task_id: tf.Tensor) -> tf.Tensor:
        """The soft weight of this step: the task's alpha, or with `anneal` 1 - step / (steps - 1)."""
        if self.alpha_schedule == "constant":
            return tf.gather(self.alphas, task_id)
        progress = tf.cast(self.optimizer.iterations, tf.float32) / float(max(self.total_steps - 1, 1))
        return tf.clip_by_value(1.0 - progress, 0.0, 1.0)

    def compute_losses(self, x, y, training: bool):
        """Per-example weighted hard and soft losses (and the hidden-state loss); the shared
        train step (`MultiTaskTrainStep`) does the rest."""
        features, task_id = split_features(x)
        outputs, teacher_outputs, hidden = self._forward(features, training)
        target, soft_mask = self._soft_targets(features, task_id, y, teacher_outputs)
        hard_weight, soft_weight = self._loss_weights(task_id, y, soft_mask)
        losses = self._task_losses(outputs, target, task_id, y)
        hard, soft = losses[0] * hard_weight, losses[1] * soft_weight
        parts = {"loss": hard + soft + hidden, "hard": hard, "soft": soft}
        if self.hidden_weight:
            parts["hidden"] = hidden
        return parts, task_id

    def _forward(self, features, training: bool):
        """The student's outputs, the teachers' feature outputs and the hidden-state loss
        (with `hidden_weight`; else no teacher outputs and a loss of 0)."""
        hidden = tf.constant(0.0)
        if not self.hidden_weight:
            return self.student(features, training=training), None, hidden
        outputs = self.student_features(features, training=training)
        teacher_outputs = [t(features, training=False) for t in self.teacher_features]
        return outputs, teacher_outputs, self._hidden_loss(outputs, teacher_outputs)

    def _hidden_loss(self, outputs, teacher_outputs) -> tf.Tensor:
        """Weighted MSE between the projected student [CLS] vector and the teachers' mean one."""
        projected = self.projection(outputs["pooled_output"])
        teacher_pooled = tf.add_n([t["pooled_output"] for t in teacher_outputs]) / len(teacher_outputs)
        return self.hidden_weight * tf.reduce_mean(tf.square(projected - tf.stop_gradient(teacher_pooled)), axis=-1)

    def _soft_targets(self, features, task_id, y, teacher_outputs) -> tuple[tf.Tensor, tf.Tensor]:
        """Soft targets and their mask: from online teachers, or cached in the batch."""
        if self.teachers:
            target = self.teacher_targets(features, task_id, teacher_outputs)
            return target, tf.fill(tf.shape(y["label"]), tf.gather(self.has_teacher, task_id))
        return y["soft"], y["soft_mask"] * tf.gather(self.has_teacher, task_id)

    def _loss_weights(self, task_id, y, soft_mask) -> tuple[tf.Tensor, tf.Tensor]:
        """Per-example weights of the hard and soft losses (`losses.mix_weights` at this step's alpha)."""
        label_mask = y.get("label_mask", tf.ones_like(y["label"]))
        alpha = tf.fill(tf.shape(y["label"]), self.current_alpha(task_id))
        return mix_weights(alpha, label_mask, soft_mask)

    def _task_losses(self, outputs, target, task_id, y) -> tf.Tensor:
        """`[hard, soft]` per-example losses of the batch's task, unweighted."""

        def both(i, task):
            output = outputs[task.name]
            task_target = target[:, : task.num_classes] if task.type == CLASSIFICATION else target[:, 0]
            return tf.stack(
                [
                    hard_loss(task, output, y["label"]),
                    soft_loss(task, output, task_target, self.temperature, self.soft_loss_kind),
                ]
            )

        return per_task(self.student.tasks, task_id, both)

    def get_config(self):
        return {
            "name": self.name,
            "student": keras.saving.serialize_keras_object(self.student),
            "teachers": [keras.saving.serialize_keras_object(t) for t in self.teachers],
            "alpha": self.alpha,
            "task_alpha": self.task_alpha,
            "temperature": self.temperature,
            "soft_loss": self.soft_loss_kind,
            "teacher_tasks": list(self.teacher_tasks),
            "hidden_weight": self.hidden_weight,
            "alpha_schedule": self.alpha_schedule,
            "total_steps": self.total_steps,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["student"] = keras.saving.deserialize_keras_object(config["student"])
        config["teachers"] = [keras.saving.deserialize_keras_object(t) for t in config.get("teachers", [])]
        return cls(**config)
