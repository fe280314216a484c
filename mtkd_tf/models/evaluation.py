"""GLUE metrics, and the scores of a model's outputs on labelled splits (`evaluate`).

Metrics follow GLUE: CoLA Matthews correlation; MRPC and QQP F1 and accuracy; STS-B
Pearson and Spearman; accuracy elsewhere. A task with several dev splits (MNLI matched /
mismatched) reports each metric with the split's suffix (`accuracy_matched`). The outputs
come from `mtkd_tf.models.inference`; leaderboard files are `mtkd_tf.export.submission`'s.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
from scipy import stats

from mtkd_tf.data.ranking import top_candidates
from mtkd_tf.data.split import SplitData
from mtkd_tf.data.tasks import CLASSIFICATION, RANKING, Task
from mtkd_tf.models.inference import dev_outputs, labelled_splits
from mtkd_tf.models.mtdnn import MTDNN


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
    "accuracy": accuracy,
    "f1": f1,
    "matthews_corr": matthews_corr,
    "pearson": pearson,
    "spearman": spearman,
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


def score_outputs(
    dev: Mapping[str, Mapping[str, SplitData]], outputs: Mapping[tuple[str, str], np.ndarray]
) -> dict[str, dict[str, float]]:
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
