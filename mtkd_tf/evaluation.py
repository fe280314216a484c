"""GLUE metrics, evaluation of a multi-task model, and GLUE-leaderboard prediction files.

Metrics follow GLUE: CoLA Matthews correlation; MRPC and QQP F1 and accuracy; STS-B
Pearson and Spearman; accuracy elsewhere. A task with several dev splits (MNLI matched /
mismatched) reports each metric with the split's suffix (`accuracy_matched`).
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf
from scipy import stats

from mtkd_tf.data.batching import inference_dataset, length_order, tokenize_all
from mtkd_tf.data.ranking import top_candidates
from mtkd_tf.data.split import SplitData
from mtkd_tf.distribute import is_multi_worker
from mtkd_tf.files import write_atomic
from mtkd_tf.models.mtdnn import MTDNN
from mtkd_tf.tasks import CLASSIFICATION, RANKING, REGRESSION, Task


def accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    return float(np.mean(np.asarray(labels) == np.asarray(predictions)))


def f1(labels: np.ndarray, predictions: np.ndarray, positive: int = 1) -> float:
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    true_positive = np.sum((predictions == positive) & (labels == positive))
    predicted, actual = np.sum(predictions == positive), np.sum(labels == positive)
    if true_positive == 0:
        return 0.0
    precision, recall = true_positive / predicted, true_positive / actual
    return float(2 * precision * recall / (precision + recall))


def matthews_corr(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Matthews correlation for binary labels (0 when a row or column of the table is empty)."""
    labels, predictions = np.asarray(labels) == 1, np.asarray(predictions) == 1
    tp, tn = float(np.sum(labels & predictions)), float(np.sum(~labels & ~predictions))
    fp, fn = float(np.sum(~labels & predictions)), float(np.sum(labels & ~predictions))
    denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float((tp * tn - fp * fn) / denominator) if denominator else 0.0


def pearson(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Pearson's r (0 when either side is constant); NumPy's, as scipy's `pearsonr` computes it but
    ~40x faster, which the report's thousands of resamples need."""
    labels, predictions = np.asarray(labels, np.float64), np.asarray(predictions, np.float64)
    x, y = labels - labels.mean(), predictions - predictions.mean()
    denominator = np.sqrt(np.dot(x, x) * np.dot(y, y))
    if denominator == 0 or np.std(predictions) == 0 or np.std(labels) == 0:
        return 0.0
    return float(np.clip(np.dot(x, y) / denominator, -1.0, 1.0))


def spearman(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Spearman's rho: Pearson's r of the ranks (ties averaged), as scipy's `spearmanr`."""
    return pearson(stats.rankdata(labels), stats.rankdata(predictions))


METRIC_FUNCTIONS = {
    "accuracy": accuracy, "f1": f1, "matthews_corr": matthews_corr, "pearson": pearson, "spearman": spearman,
}


def decide(task: Task, outputs: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """Head outputs -> predictions: class ids (argmax; ranking: each question's top candidate
    is positive), or scores."""
    if task.type == CLASSIFICATION:
        return np.argmax(outputs, axis=-1)
    if task.type == RANKING:
        if groups is None:
            raise ValueError(f"ranking task {task.name}: predictions need each row's question (groups)")
        return top_candidates(task, outputs, groups)
    return np.asarray(outputs)


def task_metrics(
    task: Task, labels: np.ndarray, outputs: np.ndarray, groups: np.ndarray | None = None
) -> dict[str, float]:
    predictions = decide(task, outputs, groups)
    return {name: METRIC_FUNCTIONS[name](labels, predictions) for name in task.metrics}


def split_suffix(task: Task, split: str) -> str:
    """'' for a task's only dev split, else the split's qualifier ('matched')."""
    source = task.source
    if source is None:
        return ""
    splits = source.dev_splits if split in source.dev_splits else source.test_splits
    if len(splits) <= 1:
        return ""
    return split.split("_", 1)[1] if "_" in split else split


def predict_outputs(model: MTDNN, data: SplitData, batch_size: int = 128, by_length: bool = True,
                    tokens: tuple[tf.RaggedTensor, ...] | None = None) -> np.ndarray:
    """Head outputs (log-probabilities or scores) of `data`'s task, in data order, tokenised
    by the model's own preprocessor (or given as `tokens`, e.g. shared by an ensemble).

    `by_length` runs the examples sorted by length, so each batch is padded only to
    similar lengths, and batches of short examples hold more of them (up to the cells of
    `batch_size` full-length examples); the outputs come back in data order.
    """
    head = data.task.predict_with or data.task.name
    preprocessor = model.preprocessor
    tokens = tokens if tokens is not None else tokenize_all(data, preprocessor)
    order = length_order(tokens) if by_length else np.arange(len(data))
    budget = batch_size * preprocessor.sequence_length if by_length else 0
    dataset = inference_dataset(data, preprocessor, batch_size, order, tokens, token_budget=budget)
    if is_multi_worker():
        # Every worker needs every output (each may write): predict locally, not sharded.
        step = tf.function(lambda x: model(x, training=False)[head], reduce_retracing=True)
        outputs = np.concatenate([step(x).numpy() for x in dataset])
    else:
        outputs = np.asarray(model.predict(dataset, verbose=0)[head])
    restored = np.empty_like(outputs)
    restored[order] = outputs
    return restored


def labelled_splits(dev: Mapping[str, Mapping[str, SplitData]]):
    """`((task name, split), data)` of every labelled split, in order."""
    for task_name, splits in dev.items():
        for split, data in splits.items():
            if data.labels is not None:
                yield (task_name, split), data


def dev_outputs(model: MTDNN, dev: Mapping[str, Mapping[str, SplitData]],
                batch_size: int = 128) -> dict[tuple[str, str], np.ndarray]:
    """One model's head outputs on every labelled split: `{(task, split): outputs}`."""
    return {key: predict_outputs(model, data, batch_size) for key, data in labelled_splits(dev)}


def score_outputs(dev: Mapping[str, Mapping[str, SplitData]],
                  outputs: Mapping[tuple[str, str], np.ndarray]) -> dict[str, dict[str, float]]:
    """GLUE metrics of outputs already computed (`dev_outputs`): `{task: {metric[_suffix]: value}}`."""
    results: dict[str, dict[str, float]] = {}
    for (task_name, split), data in labelled_splits(dev):
        suffix = split_suffix(data.task, split)
        for metric, value in task_metrics(data.task, data.labels, outputs[(task_name, split)], data.groups).items():
            results.setdefault(task_name, {})[f"{metric}_{suffix}" if suffix else metric] = value
    return results


def evaluate(
    model: MTDNN,
    dev: Mapping[str, Mapping[str, SplitData]],
    batch_size: int = 128,
) -> dict[str, dict[str, float]]:
    """GLUE metrics of one model over every labelled split given."""
    return score_outputs(dev, dev_outputs(model, dev, batch_size))


def submission_file_name(task: Task, split: str) -> str:
    base = (task.source.submission_name if task.source else None) or task.name
    suffix = split_suffix(task, split)
    short = {"matched": "m", "mismatched": "mm"}.get(suffix, suffix)
    return f"{base}-{short}.tsv" if short else f"{base}.tsv"


def write_predictions(
    model: MTDNN,
    test: Mapping[str, Mapping[str, SplitData]],
    output_dir: str,
    batch_size: int = 128,
) -> list[str]:
    """GLUE-leaderboard files (`index<TAB>prediction`, label names; STS-B clipped to [0, 5])."""
    written = []
    for splits in test.values():
        for split, data in splits.items():
            task = data.task
            predictions = decide(task, predict_outputs(model, data, batch_size), data.groups)
            lines = ["index\tprediction"]
            for example_id, value in zip(data.ids, predictions):
                index = example_id.rsplit("/", 1)[1]
                if task.type == REGRESSION:
                    low, high = task.score_range or (-np.inf, np.inf)
                    lines.append(f"{index}\t{float(np.clip(value, low, high)):.3f}")
                else:
                    lines.append(f"{index}\t{task.labels[int(value)]}")
            path = os.path.join(output_dir, submission_file_name(task, split))
            write_atomic(path, "\n".join(lines) + "\n")
            written.append(path)
    return written


# --- diagnostic tasks (AX) --------------------------------------------------------------


def with_diagnostic_tasks(tasks: Sequence[Task], known: Mapping[str, Task]) -> list[Task]:
    """`tasks` plus every task of `known` scored with one of their heads and not listed yet.

    Diagnostic sets have no head and no training data: `ax` is predicted with the MNLI head
    (`predict_with="mnli"`), so it is added when `mnli` is among `tasks` and `ax` is not.
    The order of `tasks` is kept; added tasks follow in `known`'s order.
    """
    names = {task.name for task in tasks}
    added = [task for task in known.values() if task.predict_with in names and task.name not in names]
    return [*tasks, *added]


def missing_test_data(
    task: Task, data_dir: str | None, source: str = "tsv", tfds_download: bool = False
) -> str | None:
    """Why `task`'s test data cannot be read (None: it is present), without reading it.

    TSV: every test file must exist under `data_dir` (AX: `<data_dir>/diagnostic/diagnostic.tsv`).
    TFDS (`source="tfds"` and a task with a TFDS name): the dataset is loaded, unless
    `tfds_download` is on. A file that exists but is malformed is not "missing": reading it
    fails later with the file and line, as for any other task.
    """
    from mtkd_tf.data import readers

    where = task.source
    if where is None:
        return f"task {task.name} has no data source"
    splits = list(where.test_splits)
    if not splits:
        return f"task {task.name} has no test split"
    if source == readers.TFDS and where.tfds_name:
        if tfds_download:
            return None
        try:
            for split in splits:
                readers.load_split(task, split, source=source, data_dir=data_dir)
        except readers.DataError as error:
            return str(error)
        return None
    if not data_dir:
        return "no --data_dir to read its test file from"
    for split in splits:
        path = readers.split_path(task, split, data_dir)
        if not os.path.isfile(path):
            return f"{path}: no such file"
    return None


def prediction_tasks(
    tasks: Sequence[Task],
    known: Mapping[str, Task],
    data_dir: str | None,
    source: str = "tsv",
    tfds_download: bool = False,
) -> tuple[list[Task], list[str]]:
    """The tasks `--mode=predict` writes files for, and one line per diagnostic task skipped.

    `tasks` always stay (a listed task with missing data fails when read, as before); a
    diagnostic task added by `with_diagnostic_tasks` (AX, with MNLI) stays only when its test
    data is present, otherwise it is dropped with the line `AX skipped: <why>` for the
    caller to log.
    """
    kept, skipped = list(tasks), []
    for task in with_diagnostic_tasks(tasks, known)[len(tasks):]:
        why = missing_test_data(task, data_dir, source, tfds_download)
        if why is None:
            kept.append(task)
        else:
            label = (task.source.submission_name if task.source else None) or task.name
            skipped.append(f"{label} skipped: {why}")
    return kept, skipped
