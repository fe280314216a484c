"""The one multi-task train step that `MTDNN` and `Distiller` share.

A batch is task-homogeneous (its layout: `mtkd_tf.data.batch`): `x` holds the encoder inputs and
`task_id`; `y` holds `label` and, when distilling, `soft`, `soft_mask` and `label_mask`.
A model says how to compute its per-example losses (`compute_losses`); the step scales
them to the global batch (right under any `tf.distribute` strategy), clips the true
global gradient norm, applies the optimizer and tracks the losses, overall and per task.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import keras
import tensorflow as tf

from mtkd_tf.data.batch import FEATURES
from mtkd_tf.training.distribute import cross_worker_logs


def split_features(x: dict[str, tf.Tensor]) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
    """Batch dict -> (encoder inputs, the batch's task index)."""
    return {name: x[name] for name in FEATURES}, tf.cast(x["task_id"][0], tf.int32)


def per_task(tasks: Sequence, task_id: tf.Tensor, fn) -> tf.Tensor:
    """Runs `fn(index, task)` for the batch's task only (batches are task-homogeneous)."""
    branches = [lambda i=i, task=task: fn(i, task) for i, task in enumerate(tasks)]
    return tf.switch_case(task_id, branches)


def _merge_duplicates(gradient):
    """IndexedSlices with one row per index (embedding gradients repeat a row per occurrence)."""
    if not isinstance(gradient, tf.IndexedSlices):
        return gradient
    unique, positions = tf.unique(gradient.indices)
    values = tf.math.unsorted_segment_sum(gradient.values, positions, tf.shape(unique)[0])
    return tf.IndexedSlices(values, unique, gradient.dense_shape)


def clip_by_global_norm(gradients: list, clipnorm) -> list:
    """Keras's global-norm clipping (same scale formula, NaN-propagating), without densifying.

    Squares are summed by `tf.nn.l2_loss` (one pass, no temporary) and an `IndexedSlices`
    gradient is measured and scaled by its rows, where Keras's `ops.square` and `v * scale`
    would first expand a 30,522-row embedding gradient to a dense matrix twice per step.
    """
    parts = [g.values if isinstance(g, tf.IndexedSlices) else g for g in gradients if g is not None]
    norm = tf.sqrt(2.0 * tf.add_n([tf.nn.l2_loss(tf.cast(part, tf.float32)) for part in parts]))
    scale = clipnorm * tf.minimum(1.0 / norm, 1.0 / clipnorm) + (norm - norm)

    def scaled(gradient):
        if gradient is None:
            return None
        if isinstance(gradient, tf.IndexedSlices):
            return tf.IndexedSlices(
                gradient.values * tf.cast(scale, gradient.dtype), gradient.indices, gradient.dense_shape
            )
        return gradient * tf.cast(scale, gradient.dtype)

    return [scaled(g) for g in gradients]


def clip_across_replicas(gradients: list, optimizer: keras.optimizers.Optimizer) -> list:
    """Clips the true global gradient norm, exactly and independently of the replica count.

    Keras would clip each replica's partial gradient before summing them, and measure an
    embedding's IndexedSlices gradient by its unmerged rows. Here the norm is that of the
    true (summed, merged) gradient: one replica merges duplicate rows and clips the rows;
    several sum first, clip, and hand each replica a 1/R share. The optimizer's own clipping
    is then skipped (`optimizer_clipping_off`). Under mixed_float16 the gradients carry the
    loss scale, so the threshold does too (the LossScaleOptimizer unscales afterwards).
    """
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    clipnorm = inner.global_clipnorm
    if not clipnorm:
        return gradients
    context = tf.distribute.get_replica_context()
    replicas = context.num_replicas_in_sync if context is not None else 1
    scale = tf.cast(optimizer.scale_loss(1.0), tf.float32) if inner is not optimizer else 1.0  # the loss's scale
    if replicas == 1:
        return clip_by_global_norm([None if g is None else _merge_duplicates(g) for g in gradients], clipnorm * scale)
    present = [i for i, g in enumerate(gradients) if g is not None]
    summed = context.all_reduce(tf.distribute.ReduceOp.SUM, [tf.convert_to_tensor(gradients[i]) for i in present])
    clipped = clip_by_global_norm(summed, clipnorm * scale)
    result = list(gradients)
    for i, gradient in zip(present, clipped, strict=True):
        result[i] = gradient / replicas
    return result


@contextlib.contextmanager
def optimizer_clipping_off(optimizer: keras.optimizers.Optimizer):
    """Suspends the optimizer's global-norm clipping while a step that already clipped traces
    `apply_gradients` (Keras reads the setting in Python, so the traced step never clips twice)."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    clipnorm = inner.global_clipnorm
    inner.global_clipnorm = None
    try:
        yield
    finally:
        inner.global_clipnorm = clipnorm


def replica_loss_to_metric(loss: tf.Tensor) -> tf.Tensor:
    """Undo the 1/num_replicas in a per-replica loss, as Keras does for its loss tracker."""
    return loss * tf.cast(tf.distribute.get_strategy().num_replicas_in_sync, loss.dtype)


class MultiTaskTrainStep:
    """Mixin of `keras.Model`s trained on task-homogeneous batches.

    Subclasses implement `compute_losses(x, y, training)`, returning per-example losses
    `{"loss": total, part: ...}` and the batch's task index, and call `make_trackers`.
    Logged: `loss`, `<part>_loss` for each part, and `<task>_loss` / `<task>_<part>` per task
    (`step_logs`). Under MultiWorkerMirroredStrategy, mix in `distribute.MultiWorkerFit` too.
    """

    def make_trackers(
        self, task_names: Sequence[str], parts: Sequence[str] = (), task_parts: Sequence[str] = ()
    ) -> None:
        """Mean trackers of each loss part overall (`<part>_loss`) and per task (`<task>_<kind>`)."""
        self.part_trackers = {part: keras.metrics.Mean(name=f"{part}_loss") for part in parts}
        self.task_trackers = {
            kind: [keras.metrics.Mean(name=f"{name}_{kind}") for name in task_names] for kind in ("loss", *task_parts)
        }

    def compute_losses(self, x, y, training: bool) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
        raise NotImplementedError

    def train_step(self, data):
        x, y = data[0], data[1]
        with tf.GradientTape() as tape:
            losses, task_id = self.compute_losses(x, y, training=True)
            loss = tf.nn.compute_average_loss(losses["loss"])
            scaled = self.optimizer.scale_loss(loss)
        variables = self.trainable_variables
        gradients = clip_across_replicas(tape.gradient(scaled, variables), self.optimizer)
        with optimizer_clipping_off(self.optimizer):
            self.optimizer.apply_gradients(zip(gradients, variables, strict=True))
        return self._track(losses, task_id, x)

    def test_step(self, data):
        x, y = data[0], data[1]
        losses, task_id = self.compute_losses(x, y, training=False)
        return self._track(losses, task_id, x)

    def _track(self, losses: dict[str, tf.Tensor], task_id: tf.Tensor, x) -> dict:
        count = tf.cast(tf.shape(x["token_ids"])[0], tf.float32)
        values = {name: replica_loss_to_metric(tf.nn.compute_average_loss(value)) for name, value in losses.items()}
        self._loss_tracker.update_state(values["loss"], sample_weight=count)
        for part, tracker in self.part_trackers.items():
            tracker.update_state(values[part], sample_weight=count)
        for kind, trackers in self.task_trackers.items():
            for i, tracker in enumerate(trackers):  # weight 0 leaves the other tasks' means unchanged
                tracker.update_state(values[kind], sample_weight=count * tf.cast(tf.equal(task_id, i), count.dtype))
        return self.step_logs()

    def step_logs(self) -> dict[str, tf.Tensor]:
        """`{metric: result}` after a train/test step, ready for Keras's cross-replica reduction."""
        return cross_worker_logs({metric.name: metric.result() for metric in self.metrics}, self.distribute_strategy)
