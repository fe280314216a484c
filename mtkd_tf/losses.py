"""Per-example losses: the hard task losses of MT-DNN and the soft (distillation) losses.

Classification outputs are log-probabilities, so every function here works on the
linear head and on SAN alike. All functions return one loss per example (float32);
reduction to the global batch happens in the train steps.
"""

from __future__ import annotations

import tensorflow as tf

from mtkd_tf.tasks import CLASSIFICATION, RANKING, REGRESSION, Task

SOFT_LOSSES = ("ce", "kl", "mse")


def hard_loss(task: Task, output: tf.Tensor, label: tf.Tensor) -> tf.Tensor:
    """Cross-entropy (classification), squared error (regression), -log P(A+|Q) (ranking)."""
    if task.type == CLASSIFICATION:
        label = tf.cast(label, tf.int32)
        return -tf.gather(output, label, axis=-1, batch_dims=1)
    if task.type == REGRESSION:
        return tf.square(output - tf.cast(label, output.dtype))
    if task.type == RANKING:
        return ranking_loss(output, label, task.group_size)
    raise ValueError(f"task {task.name}: no hard loss for type {task.type!r}")


def ranking_loss(scores: tf.Tensor, label: tf.Tensor, group_size: int, gamma: float = 1.0) -> tf.Tensor:
    """-log softmax(gamma * rel) of the positive candidate, spread over the group's rows.

    Rows come in consecutive groups of `group_size` candidates of one question; every
    row carries its group's loss, so the mean over rows equals the mean over questions.
    """
    grouped = tf.reshape(gamma * scores, [-1, group_size])
    targets = tf.reshape(tf.cast(label, tf.float32), [-1, group_size])
    log_probs = tf.nn.log_softmax(grouped, axis=-1)
    per_group = -tf.reduce_sum(targets * log_probs, axis=-1) / tf.maximum(
        tf.reduce_sum(targets, axis=-1), 1.0
    )
    return tf.reshape(tf.repeat(per_group[:, None], group_size, axis=1), [-1])
