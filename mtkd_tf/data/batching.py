"""Multi-task batching (MT-DNN Algorithm 1) as tf.data pipelines.

Each task is cut into task-homogeneous mini-batches; each epoch pools the batches of all
tasks and shuffles them (`proportional`: every batch of every task exactly once per
epoch). `temperature` samples tasks with p ~ |D|^tau and `uniform` with p = 1/#tasks.
Every batch is `(x, y)`: x = model inputs + `task_id`, y = `label` (+ soft targets and
masks when distilling), the same structure for every task.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf

from mtkd_tf.data.preprocessing import Preprocessor
from mtkd_tf.data.split import SplitData
from mtkd_tf.data.tasks import RANKING
from mtkd_tf.errors import ConfigError

SAMPLING = ("proportional", "temperature", "uniform")
_TOKENIZE_CHUNK = 1024


def _text_columns(data: SplitData) -> tuple:
    return (data.text_a,) if data.text_b is None else (data.text_a, data.text_b)


def tokenize_all(data: SplitData, preprocessor: Preprocessor) -> tuple[tf.RaggedTensor, ...]:
    """Every example's token ids (one ragged tensor per segment), tokenised in large tf.data batches."""
    texts = tf.data.Dataset.from_tensor_slices(_text_columns(data)).batch(_TOKENIZE_CHUNK)
    chunks = list(texts.map(preprocessor.prepare().tokenize, num_parallel_calls=tf.data.AUTOTUNE))
    return tuple(tf.concat([chunk[i] for chunk in chunks], axis=0) for i in range(len(chunks[0])))


def group_rows(data: SplitData) -> int:
    """Rows that must stay together in a batch: a ranking task's group, else 1."""
    return data.task.group_size if data.task.type == RANKING else 1


def num_batches(size: int, batch_size: int, drop_remainder: bool = False) -> int:
    return size // batch_size if drop_remainder else math.ceil(size / batch_size)


def pass_orders(size: int, passes: int, seed: int | None) -> np.ndarray:
    """Example order of each pass over a task, `[passes, size]`; `seed=None` keeps data order.

    Orders come from NumPy, not tf.data's stateful shuffle, so they depend on the seed
    alone: the same under every strategy, in every process, and after a resume.
    """
    if seed is None:
        return np.tile(np.arange(size), (passes, 1))
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(size) for _ in range(passes)])


def bucket_by_length(
    orders: np.ndarray, lengths: np.ndarray, per_batch: int, window_batches: int = 50, seed: int | None = 0
) -> np.ndarray:
    """Reorders each pass so that every batch holds examples of similar length.

    Within windows of `window_batches` batches of a pass's (already shuffled) order,
    examples are sorted by length and cut into batches; the batches of the pass are then
    shuffled. Padding to each batch's longest example then wastes little: on short real
    sentences an epoch at max_seq_length 128 runs several times faster (benchmarks/run).
    The last, partial batch of a pass stays last, so batches never span two passes.
    """
    rng = np.random.default_rng(None if seed is None else seed + 7919)
    result = []
    for order in orders:
        full = len(order) - len(order) % per_batch
        head, tail = order[:full], order[full:]
        span = window_batches * per_batch
        windows = [head[w : w + span] for w in range(0, full, span)]
        ordered = np.concatenate([w[np.argsort(lengths[w], kind="stable")] for w in windows]) if windows else head
        batches = ordered.reshape(-1, per_batch)
        result.append(np.concatenate([batches[rng.permutation(len(batches))].reshape(-1), tail]))
    return np.stack(result)


def token_lengths(tokens: tuple[tf.RaggedTensor, ...]) -> np.ndarray:
    """Tokens per example over all segments (before truncation)."""
    return np.sum([segment.row_lengths().numpy() for segment in tokens], axis=0)


def _batches(
    segments,
    columns,
    orders: np.ndarray,
    batch_size: int,
    drop_remainder: bool,
    preprocessor,
    extra,
    repeat: bool = False,
    skip: int = 0,
):
    """Batches gathered by index from in-memory tokens; a batch never spans two passes.

    `repeat` cycles the passes forever; `skip` drops that many batches of indices first
    (cheap: nothing is gathered), which is how a resumed run finds its place.
    """
    indices = tf.data.Dataset.from_tensor_slices(orders.astype(np.int64)).flat_map(
        lambda order: tf.data.Dataset.from_tensor_slices(order).batch(batch_size, drop_remainder=drop_remainder)
    )
    if repeat:
        indices = indices.repeat()
    if not isinstance(skip, int) or skip:  # a tensor inside `TrainingData.epochs`
        indices = indices.skip(skip)

    def gather(index):
        x = preprocessor.pack(*(tf.gather(segment, index) for segment in segments))
        return extra(x, {name: tf.gather(values, index) for name, values in columns.items()})

    return indices.map(gather, num_parallel_calls=tf.data.AUTOTUNE)


def task_dataset(
    data: SplitData,
    task_id: int,
    preprocessor: Preprocessor,
    batch_size: int,
    targets: Mapping[str, np.ndarray] | None = None,
    shuffle: bool = True,
    seed: int = 0,
    drop_remainder: bool = False,
    passes: int = 1,
    skip: int | tf.Tensor = 0,
    tokens: tuple[tf.RaggedTensor, ...] | None = None,
    length_bucketing: bool = False,
) -> tf.data.Dataset:
    """Task-homogeneous training batches `(x, y)` of one task: `passes` shuffled passes, repeated,
    starting after the first `skip` batches.

    `targets` are per-example arrays aligned with `data` that join `y` (soft targets and
    masks); without labels, `y["label"]` is zeros. A ranking task shuffles and batches
    whole groups of candidates (`batch_size` must be a multiple of its group size).
    `tokens` are `tokenize_all(data, preprocessor)` when the caller already has them.
    `length_bucketing` batches examples (ranking: groups) of similar length together.
    """
    stream = TaskStream.prepare(
        data,
        task_id,
        preprocessor,
        batch_size,
        targets,
        shuffle,
        seed,
        drop_remainder,
        passes,
        tokens,
        length_bucketing,
    )
    return stream.batches(skip)


@dataclasses.dataclass
class TaskStream:
    """What `task_dataset` computes once (tokens, per-example columns, the passes' example
    orders), so that `batches(skip)` can be called again cheaply, even inside a tf.data function."""

    task_id: int
    preprocessor: Preprocessor
    batch_size: int
    drop_remainder: bool
    tokens: tuple[tf.RaggedTensor, ...]
    columns: dict[str, tf.Tensor]
    orders: np.ndarray

    @classmethod
    def prepare(
        cls,
        data: SplitData,
        task_id: int,
        preprocessor: Preprocessor,
        batch_size: int,
        targets: Mapping[str, np.ndarray] | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_remainder: bool = False,
        passes: int = 1,
        tokens: tuple[tf.RaggedTensor, ...] | None = None,
        length_bucketing: bool = False,
    ) -> "TaskStream":
        labels = data.labels if data.labels is not None else np.zeros(len(data), np.float32)
        columns = {"label": tf.constant(np.asarray(labels, np.float32))}
        for name, values in (targets or {}).items():
            if len(values) != len(data):
                raise ValueError(f"{name}: {len(values)} rows for {len(data)} examples of {data.task.name}")
            columns[name] = tf.constant(np.asarray(values, np.float32))
        unit = group_rows(data)
        if batch_size % unit:
            raise ConfigError(
                f"task {data.task.name}: batch size {batch_size} is not a multiple of its group_size {unit}",
                "batch_size",
            )
        tokens = tokens if tokens is not None else tokenize_all(data, preprocessor)
        groups = pass_orders(len(data) // unit, passes, seed if shuffle else None)
        if length_bucketing:
            lengths = token_lengths(tokens)[: len(data) // unit * unit].reshape(-1, unit).max(axis=1)
            groups = bucket_by_length(groups, lengths, batch_size // unit, seed=seed if shuffle else None)
        orders = (groups[:, :, None] * unit + np.arange(unit)).reshape(passes, -1)
        return cls(task_id, preprocessor, batch_size, drop_remainder, tokens, columns, orders)

    def batches(self, skip: int | tf.Tensor = 0) -> tf.data.Dataset:
        """The endless batches of this task after the first `skip` (an int, or a tensor)."""
        task_id = self.task_id

        def with_task(x, y):
            x["task_id"] = tf.fill([tf.shape(x["token_ids"])[0]], task_id)
            return x, y

        return _batches(
            self.tokens,
            self.columns,
            self.orders,
            self.batch_size,
            self.drop_remainder,
            self.preprocessor,
            with_task,
            repeat=True,
            skip=skip,
        )


def length_order(tokens: tuple[tf.RaggedTensor, ...]) -> np.ndarray:
    """Example indices sorted by token length (stable): batches in this order pad little."""
    return np.argsort(token_lengths(tokens), kind="stable")


def inference_dataset(
    data: SplitData,
    preprocessor: Preprocessor,
    batch_size: int,
    order: np.ndarray | None = None,
    tokens: tuple[tf.RaggedTensor, ...] | None = None,
    token_budget: int = 0,
) -> tf.data.Dataset:
    """Model inputs for evaluation, prediction and soft labelling, in data order or in `order`
    (e.g. `length_order(tokens)`); `tokens` are `tokenize_all(data, preprocessor)` if known.

    `token_budget` > 0 sizes each batch by its padded cells instead (`budget_batches`):
    batches of short texts grow beyond `batch_size`, so inference on short sentences runs
    fewer, fuller steps (use it with examples in length order)."""
    tokens = tokens if tokens is not None else tokenize_all(data, preprocessor)
    order = np.arange(len(data)) if order is None else np.asarray(order)
    if token_budget > 0:
        sizes = budget_batches(token_lengths(tokens)[order], batch_size, token_budget, preprocessor)
        index = tf.RaggedTensor.from_row_lengths(order.astype(np.int64), sizes)
        indices = tf.data.Dataset.from_tensor_slices(index)

        def gather(rows):
            return preprocessor.pack(*(tf.gather(segment, rows) for segment in tokens))

        dataset = indices.map(gather, num_parallel_calls=tf.data.AUTOTUNE)
        return dataset.apply(tf.data.experimental.assert_cardinality(len(sizes)))
    dataset = _batches(tokens, {}, order[None], batch_size, False, preprocessor, lambda x, y: x)
    return dataset.apply(tf.data.experimental.assert_cardinality(num_batches(len(data), batch_size)))


def budget_batches(lengths: np.ndarray, batch_size: int, token_budget: int, preprocessor: Preprocessor) -> np.ndarray:
    """Batch sizes that cut examples (in the given order, best sorted by length) into batches of
    at least `batch_size` examples, or more while `examples x padded width <= token_budget`."""
    specials = 3  # [CLS] and one or two [SEP]: an upper bound of what packing adds
    multiple = max(preprocessor.pad_to_multiple_of, 1)
    widths = np.minimum(lengths + specials, preprocessor.sequence_length)
    sizes, start = [], 0
    while start < len(lengths):
        size = min(batch_size, len(lengths) - start)
        while start + size < len(lengths):
            width = -(-int(widths[start : start + size + 1].max()) // multiple) * multiple
            if (size + 1) * width > token_budget:
                break
            size += 1
        sizes.append(size)
        start += size
    return np.asarray(sizes, np.int64)


def batch_schedule(
    batches_per_task: Sequence[int],
    epochs: int,
    sampling: str = "proportional",
    temperature: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """Which task each step trains, for all epochs: one int per step.

    Every epoch has sum(batches_per_task) steps. `proportional` is a shuffled pool of
    each task's batches (Algorithm 1); the others draw tasks with p ~ n_t^tau.
    """
    if sampling not in SAMPLING:
        raise ConfigError(f"task sampling {sampling!r} is not one of {', '.join(SAMPLING)}")
    counts = np.asarray(batches_per_task, np.int64)
    if counts.size == 0 or counts.min() <= 0:
        raise ValueError(f"every task needs at least one batch, got {counts.tolist()}")
    rng = np.random.default_rng(seed)
    steps = int(counts.sum())
    pool = np.repeat(np.arange(len(counts)), counts)
    epochs_out = []
    tau = 0.0 if sampling == "uniform" else temperature
    probabilities = counts.astype(np.float64) ** tau
    probabilities /= probabilities.sum()
    for _ in range(epochs):
        if sampling == "proportional":
            epochs_out.append(rng.permutation(pool))
        else:
            epochs_out.append(rng.choice(len(counts), size=steps, p=probabilities))
    return np.concatenate(epochs_out).astype(np.int64)


def multitask_dataset(
    task_datasets: Sequence[tf.data.Dataset], schedule: np.ndarray, start: int | tf.Tensor = 0
) -> tf.data.Dataset:
    """Interleaves task datasets in `schedule` order from step `start` on: one homogeneous
    batch per step (the task datasets must already start at their batch for that step)."""
    choices = tf.data.Dataset.from_tensor_slices(tf.constant(schedule, tf.int64)).skip(start).repeat()
    return tf.data.Dataset.choose_from_datasets(list(task_datasets), choices).prefetch(tf.data.AUTOTUNE)
