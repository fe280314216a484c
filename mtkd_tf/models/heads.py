"""Task-specific output layers of MT-DNN on top of the shared encoder.

Classification heads return log-probabilities (float32), so hard cross-entropy, soft
cross-entropy at any temperature and SAN's averaged step probabilities share one form;
regression and ranking heads return one float32 score per example.
"""

from __future__ import annotations

import keras
from keras import ops

from mtkd_tf.tasks import CLASSIFICATION, REGRESSION, RANKING, Task


def _kernel_initializer() -> keras.initializers.Initializer:
    return keras.initializers.TruncatedNormal(stddev=0.02)


@keras.saving.register_keras_serializable(package="mtkd_tf")
class ClassificationHead(keras.layers.Layer):
    """`log softmax(W^T x)` on the pooled [CLS] vector, with task-specific dropout."""

    def __init__(self, num_classes: int, dropout: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.dropout = dropout
        self.dropout_layer = keras.layers.Dropout(dropout, dtype=self.dtype_policy)
        self.dense = keras.layers.Dense(
            num_classes, kernel_initializer=_kernel_initializer(), dtype=self.dtype_policy, name="logits"
        )

    def build(self, input_shape):
        self.dense.build(input_shape)
        self.built = True

    def call(self, pooled, training=None):
        logits = self.dense(self.dropout_layer(pooled, training=training))
        return ops.log_softmax(ops.cast(logits, "float32"), axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.num_classes,)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "dropout": self.dropout}


@keras.saving.register_keras_serializable(package="mtkd_tf")
class ScoreHead(keras.layers.Layer):
    """`w^T x` on the pooled vector: STS-B-style similarity, or ranking relevance."""

    def __init__(self, dropout: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.dropout = dropout
        self.dropout_layer = keras.layers.Dropout(dropout, dtype=self.dtype_policy)
        self.dense = keras.layers.Dense(
            1, kernel_initializer=_kernel_initializer(), dtype=self.dtype_policy, name="score"
        )

    def build(self, input_shape):
        self.dense.build(input_shape)
        self.built = True

    def call(self, pooled, training=None):
        score = self.dense(self.dropout_layer(pooled, training=training))
        return ops.cast(ops.squeeze(score, axis=-1), "float32")

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1])

    def get_config(self):
        return {**super().get_config(), "dropout": self.dropout}


def make_head(task: Task, dtype=None) -> keras.layers.Layer:
    """The head a task's type calls for, named after the task."""
    if task.type == CLASSIFICATION:
        return ClassificationHead(task.num_classes, task.dropout, dtype=dtype, name=task.name)
    if task.type in (REGRESSION, RANKING):
        return ScoreHead(task.dropout, dtype=dtype, name=task.name)
    raise ValueError(f"task {task.name}: no head for type {task.type!r}")
