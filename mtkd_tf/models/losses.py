"""Per-example losses: the hard task losses of MT-DNN and the soft (distillation) losses.

Classification outputs are log-probabilities, so every function here works on the
linear head and on SAN alike. All functions return one loss per example (float32);
reduction to the global batch happens in the train steps.
"""

from __future__ import annotations

import tensorflow as tf

from mtkd_tf.data.tasks import CLASSIFICATION, RANKING, REGRESSION, Task

SOFT_LOSSES = ("ce", "kl", "mse")  # the soft-loss kinds: the config's choices, checked by terms.SoftLoss


def hard_loss(task: Task, output: tf.Tensor, label: tf.Tensor) -> tf.Tensor:
    """Cross-entropy (classification), squared error (regression), -log P(A+|Q) (ranking)."""
    if task.type == CLASSIFICATION:
        label = tf.cast(label, tf.int32)
        return -tf.gather(output, label, axis=-1, batch_dims=1)
    if task.type == REGRESSION:
        return tf.square(output - tf.cast(label, output.dtype))
    if task.type == RANKING:
        relevant = tf.equal(tf.cast(label, tf.int32), task.positive_index)
        return ranking_loss(output, relevant, task.group_size)
    raise ValueError(f"task {task.name}: no hard loss for type {task.type!r}")


def _spread(per_group: tf.Tensor, group_size: int) -> tf.Tensor:
    """Gives every row its group's loss, so the mean over rows is the mean over groups."""
    return tf.reshape(tf.repeat(per_group[:, None], group_size, axis=1), [-1])


def ranking_loss(scores: tf.Tensor, relevant: tf.Tensor, group_size: int, gamma: float = 1.0) -> tf.Tensor:
    """-log P(A+|Q), P = softmax(gamma * rel) over a question's candidates, per row.

    Rows come in consecutive groups of `group_size` candidates of one question;
    `relevant` marks the positive one(s).
    """
    grouped = tf.reshape(gamma * scores, [-1, group_size])
    targets = tf.reshape(tf.cast(relevant, tf.float32), [-1, group_size])
    log_probs = tf.nn.log_softmax(grouped, axis=-1)
    per_group = -tf.reduce_sum(targets * log_probs, axis=-1) / tf.maximum(tf.reduce_sum(targets, axis=-1), 1.0)
    return _spread(per_group, group_size)


def soften(log_probs: tf.Tensor, temperature: float) -> tf.Tensor:
    """Log-probabilities at temperature T: log softmax(log p / T) (identity at T = 1)."""
    if temperature == 1.0:
        return log_probs
    return tf.nn.log_softmax(log_probs / temperature, axis=-1)


def soft_loss(
    task: Task, output: tf.Tensor, target: tf.Tensor, temperature: float = 1.0, kind: str = "ce"
) -> tf.Tensor:
    """Per-example distillation loss of a student output against a teacher target.

    Classification (`target` = teacher probabilities Q at temperature T):
      ce:  -sum_c Q_c log P_c(T)                 (paper: T = 1)
      kl:  sum_c Q_c (log Q_c - log P_c(T))      (= ce minus the teacher's entropy)
      mse: mean_c (log P_c(T) - log Q_c)^2       (log-probabilities, both at T: "logits" up to a constant)
    All three are multiplied by T^2 when T != 1 so gradients keep their scale (Hinton et al.).
    Ranking: the same on each question's candidate distribution; Q is the members' averaged
    group probabilities softmax(scores / T) (`target`, one per row).
    Regression: squared error to the teachers' mean score.
    `kind` is one of SOFT_LOSSES, checked where it is set (`distill.terms.SoftLoss`).
    """
    if task.type == REGRESSION:
        return tf.square(output - tf.reshape(target, tf.shape(output)))
    if task.type == RANKING:
        size = task.group_size
        teacher = tf.reshape(tf.cast(target, tf.float32), [-1, size])
        student = tf.nn.log_softmax(tf.reshape(output, [-1, size]), axis=-1)
        return _spread(_distribution_loss(student, teacher, temperature, kind), size)
    return _distribution_loss(output, tf.cast(target, tf.float32), temperature, kind)


def _distribution_loss(log_probs: tf.Tensor, target: tf.Tensor, temperature: float, kind: str) -> tf.Tensor:
    """ce, kl or mse of student log-probabilities softened at T against probabilities `target`, x T^2."""
    softened = soften(log_probs, temperature)
    if kind == "mse":
        loss = tf.reduce_mean(tf.square(softened - tf.math.log(tf.maximum(target, 1e-8))), axis=-1)
    else:
        loss = -tf.reduce_sum(target * softened, axis=-1)
        if kind == "kl":
            loss += tf.reduce_sum(tf.math.xlogy(target, target), axis=-1)
    return loss * (temperature**2 if temperature != 1.0 else 1.0)


def mix_weights(alpha: tf.Tensor, label_mask: tf.Tensor, soft_mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Per-example weights of the hard and soft terms.

    Labelled with a teacher: (1 - alpha, alpha); labelled without: (1, 0); unlabelled with
    a teacher (distillation on extra text): (0, 1).
    """
    soft_weight = soft_mask * tf.where(label_mask > 0, alpha, tf.ones_like(alpha))
    hard_weight = label_mask * (1.0 - alpha * soft_mask)
    return hard_weight, soft_weight
