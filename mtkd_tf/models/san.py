"""The SAN answer module: MT-DNN's head for pairwise text classification.

Stochastic Answer Network (Liu et al. 2018, as used by MT-DNN): the encoder's token vectors
are split into a premise memory M^p (segment 0) and a hypothesis memory M^h (segment 1).
The state starts as a self-attentive summary of M^h; each of K steps reads M^p with
bilinear attention, updates the state with a GRU and predicts
`P_k = softmax(W3 [s_k; x_k; |s_k - x_k|; s_k * x_k])`. The answer averages the P_k;
in training "stochastic prediction dropout" drops whole steps (keeping at least one per
example). The output is log-probabilities, like the linear classification head, so the
hard and soft losses apply unchanged.
"""

from __future__ import annotations

import keras
from keras import ops

_NEG_INF = -1e9


def _kernel_initializer() -> keras.initializers.Initializer:
    return keras.initializers.TruncatedNormal(stddev=0.02)


def masked_softmax(scores, mask):
    """softmax over the last axis where `mask` holds; masked positions get exactly 0."""
    scores = ops.where(mask, ops.cast(scores, "float32"), _NEG_INF)
    return ops.softmax(scores, axis=-1)


@keras.saving.register_keras_serializable(package="mtkd_tf")
class SANAnswerModule(keras.layers.Layer):
    """K-step SAN over premise/hypothesis memories -> `[batch, num_classes]` log-probabilities.

    Args:
        num_classes: classes of the task.
        hidden_dim: width of the encoder's token vectors (and of the GRU state).
        num_steps: reasoning steps K (reference default 5).
        step_dropout: probability of dropping a step's prediction in training (0.1).
        dropout: dropout on the memories (the task's dropout).
        seed: seed of the step-dropout and memory-dropout draws.

    Call it on `{"sequence_output", "segment_ids", "padding_mask"}`.
    """

    reads_tokens = True  # MTDNN feeds this head token vectors, not the pooled [CLS] vector

    def __init__(
        self,
        num_classes: int,
        hidden_dim: int,
        num_steps: int = 5,
        step_dropout: float = 0.1,
        dropout: float = 0.1,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if num_steps < 1:
            raise ValueError(f"SAN needs at least one step, got num_steps={num_steps}")
        if not 0.0 <= step_dropout < 1.0:
            raise ValueError(f"step_dropout must be in [0, 1), got {step_dropout}")
        self.num_classes = num_classes
        self.hidden_dim = hidden_dim
        self.num_steps = num_steps
        self.step_dropout = step_dropout
        self.dropout = dropout
        self.seed = seed
        # === Layers ===
        policy = self.dtype_policy
        self.memory_dropout = keras.layers.Dropout(dropout, seed=seed, dtype=policy, name="memory_dropout")
        self.hypothesis_attention = keras.layers.Dense(
            1, use_bias=False, kernel_initializer=_kernel_initializer(), dtype=policy, name="hypothesis_attention"
        )
        self.premise_attention = keras.layers.Dense(
            hidden_dim, use_bias=False, kernel_initializer=_kernel_initializer(), dtype=policy, name="premise_attention"
        )
        self.state_update = keras.layers.GRUCell(hidden_dim, dtype=policy, name="state_update")
        self.classifier = keras.layers.Dense(
            num_classes, kernel_initializer=_kernel_initializer(), dtype=policy, name="step_logits"
        )
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape):
        memory_shape = tuple(input_shape["sequence_output"])
        self.memory_dropout.build(memory_shape)
        self.hypothesis_attention.build(memory_shape)
        self.premise_attention.build((None, self.hidden_dim))
        self.state_update.build((None, self.hidden_dim))
        self.classifier.build((None, 4 * self.hidden_dim))
        self.built = True

    def step_log_probs(self, inputs, training=None):
        """`[batch, K, num_classes]` log-probabilities of every step's prediction."""
        memory = self.memory_dropout(ops.cast(inputs["sequence_output"], self.compute_dtype), training=training)
        valid = ops.cast(inputs["padding_mask"], "bool")
        segments = ops.cast(inputs["segment_ids"], "int32")
        premise = ops.logical_and(valid, ops.equal(segments, 0))
        hypothesis = ops.logical_and(valid, ops.equal(segments, 1))

        weights = masked_softmax(ops.squeeze(self.hypothesis_attention(memory), axis=-1), hypothesis)
        state = ops.einsum("bt,bth->bh", weights, memory)
        steps = []
        for _ in range(self.num_steps):
            scores = ops.einsum("bh,bth->bt", self.premise_attention(state), memory)
            read = ops.einsum("bt,bth->bh", masked_softmax(scores, premise), memory)
            state, _ = self.state_update(read, [state], training=training)
            features = ops.concatenate([state, read, ops.abs(state - read), state * read], axis=-1)
            steps.append(ops.log_softmax(ops.cast(self.classifier(features), "float32"), axis=-1))
        return ops.stack(steps, axis=1)

    def step_mask(self, batch_size, training=None):
        """`[batch, K]` 1/0: the steps whose predictions are averaged (all at inference)."""
        ones = ops.ones((batch_size, self.num_steps), "float32")
        if not training or self.step_dropout == 0.0:
            return ones
        draws = keras.random.uniform((batch_size, self.num_steps), seed=self.seed_generator)
        keep = ops.cast(draws >= self.step_dropout, "float32")
        always = keras.random.randint((batch_size,), 0, self.num_steps, seed=self.seed_generator)
        return ops.maximum(keep, ops.one_hot(always, self.num_steps, dtype="float32"))

    def call(self, inputs, training=None):
        steps = self.step_log_probs(inputs, training=training)
        keep = self.step_mask(ops.shape(steps)[0], training=training)
        # log(mean of the kept steps' probabilities), computed stably in log space.
        kept = ops.where(ops.expand_dims(keep > 0, -1), steps, _NEG_INF)
        count = ops.sum(keep, axis=-1, keepdims=True)
        return ops.logsumexp(kept, axis=1) - ops.log(count)

    def compute_output_shape(self, input_shape):
        return (input_shape["sequence_output"][0], self.num_classes)

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "hidden_dim": self.hidden_dim,
            "num_steps": self.num_steps,
            "step_dropout": self.step_dropout,
            "dropout": self.dropout,
            "seed": self.seed,
        }
