"""Task-specific output layers of MT-DNN on top of the shared encoder.

Classification heads (linear, or SAN for pairs) return log-probabilities, so hard
cross-entropy, soft cross-entropy at any temperature and SAN's averaged step probabilities
share one form; regression and ranking heads return one score per example. Heads compute
in float32 under any mixed-precision policy.
"""

from __future__ import annotations

import keras
from keras import ops

from mtkd_tf.data.tasks import CLASSIFICATION, RANKING, REGRESSION, Task
from mtkd_tf.models.san import SANAnswerModule

HEAD_DTYPE = "float32"


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


def make_head(task: Task, hidden_dim: int) -> keras.layers.Layer:
    """The head a task's type (and answer module) calls for, named after the task."""
    if task.type == CLASSIFICATION and task.answer_module == "san":
        return SANAnswerModule(
            task.num_classes,
            hidden_dim,
            num_steps=task.san_steps,
            step_dropout=task.san_step_dropout,
            dropout=task.dropout,
            dtype=HEAD_DTYPE,
            name=task.name,
        )
    if task.type == CLASSIFICATION:
        return ClassificationHead(task.num_classes, task.dropout, dtype=HEAD_DTYPE, name=task.name)
    if task.type in (REGRESSION, RANKING):
        return ScoreHead(task.dropout, dtype=HEAD_DTYPE, name=task.name)
    raise ValueError(f"task {task.name}: no head for type {task.type!r}")


def apply_head(head: keras.layers.Layer, encoded: dict, features: dict):
    """Calls `head` on what it reads: the pooled [CLS] vector, or (SAN) the token vectors."""
    if getattr(head, "reads_tokens", False):
        return head(
            {
                "sequence_output": encoded["sequence_output"],
                "segment_ids": features["segment_ids"],
                "padding_mask": features["padding_mask"],
            }
        )
    return head(encoded["pooled_output"])
