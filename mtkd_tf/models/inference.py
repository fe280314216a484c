"""Inference: a model's head outputs (log-probabilities or scores) on splits, in data order.

Below evaluation, soft labelling and the leaderboard files, which all score or write what
`predict_outputs` returns; `MTDNN.predict_texts` answers raw strings with it. The model is
an `MTDNN` (`mtkd_tf.models.mtdnn`, which imports this module), typed here as the Keras model
it is: it needs `model.preprocessor` and the model's call on a batch of features.
"""

from __future__ import annotations

import weakref
from typing import Iterator, Mapping

import keras
import numpy as np
import tensorflow as tf

from mtkd_tf.data.batching import inference_dataset, length_order, tokenize_all
from mtkd_tf.data.split import SplitData
from mtkd_tf.training.distribute import is_multi_worker


def predict_outputs(
    model: keras.Model,
    data: SplitData,
    batch_size: int = 128,
    by_length: bool = True,
    tokens: tuple[tf.RaggedTensor, ...] | None = None,
) -> np.ndarray:
    """Head outputs (log-probabilities or scores) of `data`'s task, in data order, tokenised
    by the model's own preprocessor (or given as `tokens`, e.g. shared by an ensemble).

    `by_length` runs the examples sorted by length, so each batch is padded only to
    similar lengths, and batches of short examples hold more of them (up to the cells of
    `batch_size` full-length examples); the outputs come back in data order.

    Every batch runs one graph per model, traced once for any batch size and width: a graph
    traced for a batch's exact shape and a relaxed-shape one round differently in oneDNN
    (bfloat16 most), so with one graph the outputs of `data` depend on `data` alone, and a
    resumed soft-label or evaluation run, which skips the calls it saved, gives the
    uninterrupted run's bits. (Keras's `predict` would trace per call or pick graphs by the
    shapes earlier calls saw.) Under a strategy with several replicas in one worker, Keras's
    `predict` spreads each batch over them, with a fresh trace per call for the same reason.
    """
    return predict_prepared(model, data, prepare(model, data, batch_size, by_length, tokens))


def prepare(
    model: keras.Model,
    data: SplitData,
    batch_size: int = 128,
    by_length: bool = True,
    tokens: tuple[tf.RaggedTensor, ...] | None = None,
) -> tuple[np.ndarray, tf.data.Dataset]:
    """`(order, batches)` that `predict_prepared` runs: made once, they serve every later call on
    the same data (dev selection scores the same splits after every epoch; building the batches
    traces their packing function, a fixed cost of each call)."""
    preprocessor = model.preprocessor
    tokens = tokens if tokens is not None else tokenize_all(data, preprocessor)
    order = length_order(tokens) if by_length else np.arange(len(data))
    budget = batch_size * preprocessor.sequence_length if by_length else 0
    return order, inference_dataset(data, preprocessor, batch_size, order, tokens, token_budget=budget)


def predict_prepared(model: keras.Model, data: SplitData, prepared: tuple[np.ndarray, tf.data.Dataset]) -> np.ndarray:
    """`predict_outputs` on batches made by `prepare` (for `model`'s preprocessor)."""
    head = data.task.predict_with or data.task.name
    order, dataset = prepared
    strategy = tf.distribute.get_strategy()
    if strategy.num_replicas_in_sync > 1 and not is_multi_worker():
        model.predict_function = None  # a fresh trace (see above)
        outputs = np.asarray(model.predict(dataset, verbose=0)[head])
    else:
        # Also every worker of a multi-worker run: each needs every output (each may write).
        step = _predict_step(model, dataset.element_spec)
        outputs = np.concatenate([step(x)[head].numpy() for x in dataset])
    restored = np.empty_like(outputs)
    restored[order] = outputs
    return restored


_PREDICT_STEPS: "weakref.WeakKeyDictionary[keras.Model, tf.types.experimental.PolymorphicFunction]" = (
    weakref.WeakKeyDictionary()
)


def _predict_step(
    model: keras.Model, element_spec: Mapping[str, tf.TensorSpec]
) -> tf.types.experimental.PolymorphicFunction:
    """The model's one inference graph (every head), for batches of any size and width."""
    step = _PREDICT_STEPS.get(model)
    if step is None:
        relaxed = {
            name: tf.TensorSpec([None] * spec.shape.rank, spec.dtype, name) for name, spec in element_spec.items()
        }
        held = weakref.ref(model)  # the cache must not keep the model alive
        step = tf.function(lambda x: held()(x, training=False), input_signature=[relaxed])
        _PREDICT_STEPS[model] = step
    return step


def labelled_splits(dev: Mapping[str, Mapping[str, SplitData]]) -> Iterator[tuple[tuple[str, str], SplitData]]:
    """`((task name, split), data)` of every labelled split, in order."""
    for task_name, splits in dev.items():
        for split, data in splits.items():
            if data.labels is not None:
                yield (task_name, split), data


def dev_outputs(
    model: keras.Model, dev: Mapping[str, Mapping[str, SplitData]], batch_size: int = 128
) -> dict[tuple[str, str], np.ndarray]:
    """One model's head outputs on every labelled split: `{(task, split): outputs}`."""
    return {key: predict_outputs(model, data, batch_size) for key, data in labelled_splits(dev)}
