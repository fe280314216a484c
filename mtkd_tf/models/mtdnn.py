"""MT-DNN: one shared BERT encoder, one head per task, trained on task-homogeneous batches.

`MTDNN` is a functional Keras model (inputs: token_ids, segment_ids, padding_mask;
outputs: `{task: log-probabilities or score}`) whose `train_step` applies, for each
batch, the hard loss of the batch's task (`x["task_id"]`), scaled to the global batch so
it is right under any `tf.distribute` strategy.
"""

from __future__ import annotations

from typing import Sequence

import keras
import keras_hub
import tensorflow as tf

from mtkd_tf.data.preprocessing import FEATURES
from mtkd_tf.distribute import MultiWorkerFit
from mtkd_tf.losses import hard_loss
from mtkd_tf.models.heads import apply_head, make_head
from mtkd_tf.tasks import Task, head_tasks


def split_features(x: dict[str, tf.Tensor]) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
    """Batch dict -> (encoder inputs, the batch's task index)."""
    return {name: x[name] for name in FEATURES}, tf.cast(x["task_id"][0], tf.int32)


def per_task_loss(
    tasks: Sequence[Task], task_id: tf.Tensor, loss_fn
) -> tf.Tensor:
    """Runs `loss_fn(index, task)` for the batch's task only (tasks are homogeneous per batch)."""
    branches = [lambda i=i, task=task: loss_fn(i, task) for i, task in enumerate(tasks)]
    return tf.switch_case(task_id, branches)


def track_task_losses(trackers: Sequence[keras.metrics.Mean], task_id: tf.Tensor, value: tf.Tensor, count: tf.Tensor) -> None:
    """Adds `value` to the tracker of the batch's task (weight 0 leaves the others unchanged)."""
    for i, tracker in enumerate(trackers):
        tracker.update_state(value, sample_weight=count * tf.cast(tf.equal(task_id, i), count.dtype))


def _merge_duplicates(gradient):
    """IndexedSlices with one row per index (embedding gradients repeat a row per occurrence)."""
    if not isinstance(gradient, tf.IndexedSlices):
        return gradient
    unique, positions = tf.unique(gradient.indices)
    values = tf.math.unsorted_segment_sum(gradient.values, positions, tf.shape(unique)[0])
    return tf.IndexedSlices(values, unique, gradient.dense_shape)


def clip_across_replicas(gradients: list, optimizer: keras.optimizers.Optimizer) -> list:
    """Makes the optimizer's global-norm clipping exact and independent of the replica count.

    Keras clips each replica's partial gradient before summing them, and measures an
    embedding's IndexedSlices gradient by its unmerged rows. Here the norm is that of the
    true (summed, merged) gradient: one replica merges duplicate rows and lets Keras clip;
    several sum first, clip, and hand each replica a 1/R share, whose norm is below the
    clip so Keras leaves it alone. Under mixed_float16 the gradients carry the loss scale,
    so the threshold does too (the LossScaleOptimizer unscales before its inner clip).
    """
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    clipnorm = inner.global_clipnorm
    if not clipnorm:
        return gradients
    context = tf.distribute.get_replica_context()
    replicas = context.num_replicas_in_sync if context is not None else 1
    if replicas == 1:
        return [None if g is None else _merge_duplicates(g) for g in gradients]
    scale = tf.cast(optimizer.dynamic_scale, tf.float32) if inner is not optimizer else 1.0
    present = [i for i, g in enumerate(gradients) if g is not None]
    summed = context.all_reduce(tf.distribute.ReduceOp.SUM, [tf.convert_to_tensor(gradients[i]) for i in present])
    clipped, _ = tf.clip_by_global_norm(summed, clipnorm * scale)
    result = list(gradients)
    for i, gradient in zip(present, clipped):
        result[i] = gradient / replicas
    return result


def replica_loss_to_metric(loss: tf.Tensor) -> tf.Tensor:
    """Undo the 1/num_replicas in a per-replica loss, as Keras does for its loss tracker."""
    return loss * tf.cast(tf.distribute.get_strategy().num_replicas_in_sync, loss.dtype)


@keras.saving.register_keras_serializable(package="mtkd_tf")
class MTDNN(MultiWorkerFit, keras.Model):
    """Shared encoder + task-specific heads (a functional model, keras-hub style).

    Args:
        encoder: a keras-hub `BertBackbone` (shared layers).
        tasks: `Task`s (or their configs); tasks with `predict_with` get no head.
    """

    def __init__(self, encoder: keras_hub.models.BertBackbone, tasks: Sequence[Task | dict], **kwargs):
        tasks = tuple(Task.from_config(t) if isinstance(t, dict) else t for t in tasks)
        trained = tuple(head_tasks(tasks))
        if not trained:
            raise ValueError("MTDNN needs at least one task with a head")
        # === Layers ===
        heads = {task.name: make_head(task, encoder.hidden_dim) for task in trained}
        # === Functional model ===
        inputs = {name: keras.Input(shape=(None,), dtype="int32", name=name) for name in FEATURES}
        encoded = encoder(inputs)
        outputs = {name: apply_head(head, encoded, inputs) for name, head in heads.items()}
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        # === Config and state ===
        self.encoder = encoder
        self.heads = heads
        self.tasks = trained
        self.all_tasks = tasks
        self.task_loss_trackers = [keras.metrics.Mean(name=f"{task.name}_loss") for task in trained]

    def task(self, name: str) -> Task:
        """The task whose head predicts `name` (AX -> MNLI)."""
        for task in self.all_tasks:
            if task.name == name:
                return task
        raise KeyError(f"model has no task {name!r}; it has {', '.join(t.name for t in self.all_tasks)}")

    def task_index(self, name: str) -> int:
        task = self.task(name)
        head = task.predict_with or task.name
        return [t.name for t in self.tasks].index(head)

    def call(self, inputs, training=None, mask=None):
        # Batches also carry `task_id`; Keras may call the model on the whole dict.
        if isinstance(inputs, dict) and set(inputs) != set(FEATURES):
            inputs = {name: inputs[name] for name in FEATURES}
            mask = None
        return super().call(inputs, training=training, mask=mask)

    def features_model(self) -> keras.Model:
        """The same layers with the encoder's pooled [CLS] vector as an extra output."""
        encoded = self.encoder(self.input)
        outputs = {name: apply_head(head, encoded, self.input) for name, head in self.heads.items()}
        outputs["pooled_output"] = encoded["pooled_output"]
        return keras.Model(self.input, outputs)

    def compute_task_loss(self, outputs: dict, y: dict, task_id: tf.Tensor) -> tf.Tensor:
        """Per-example hard loss of the batch's task, masked where an example has no label."""
        def loss(i, task):
            return hard_loss(task, outputs[task.name], y["label"])

        per_example = per_task_loss(self.tasks, task_id, loss)
        if "label_mask" in y:
            per_example *= y["label_mask"]
        return per_example

    def train_step(self, data):
        x, y = data[0], data[1]
        features, task_id = split_features(x)
        with tf.GradientTape() as tape:
            outputs = self(features, training=True)
            loss = tf.nn.compute_average_loss(self.compute_task_loss(outputs, y, task_id))
            scaled = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled, self.trainable_variables)
        gradients = clip_across_replicas(gradients, self.optimizer)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
        return self._track(loss, task_id, features)

    def test_step(self, data):
        x, y = data[0], data[1]
        features, task_id = split_features(x)
        outputs = self(features, training=False)
        loss = tf.nn.compute_average_loss(self.compute_task_loss(outputs, y, task_id))
        return self._track(loss, task_id, features)

    def _track(self, loss, task_id, features):
        value = replica_loss_to_metric(loss)
        count = tf.cast(tf.shape(features["token_ids"])[0], tf.float32)
        self._loss_tracker.update_state(value, sample_weight=count)
        track_task_losses(self.task_loss_trackers, task_id, value, count)
        return self.step_logs()

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "tasks": [task.to_config() for task in self.all_tasks],
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        return cls(**config)


def in_precision(model: MTDNN, policy: str) -> MTDNN:
    """The same MT-DNN (same weights) with its encoder computing under Keras dtype `policy`
    (e.g. "mixed_bfloat16" for inference on CPUs with AVX512-BF16); heads stay float32."""
    if policy in ("float32", model.encoder.dtype_policy.name):
        return model
    config = model.get_config()
    encoder = dict(config["encoder"])
    encoder["config"] = {**encoder["config"], "dtype": policy}
    config["encoder"] = encoder
    clone = MTDNN.from_config(config)
    clone.set_weights(model.get_weights())
    return clone
