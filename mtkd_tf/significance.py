"""Is a difference between two models on dev real? Paired bootstrap confidence intervals.

Both models are scored on the same resampled dev sets (scipy's `bootstrap`, paired, percentile
intervals), so the interval is that of the *difference* and the examples' shared difficulty
cancels. Ranking tasks resample whole questions (a question's candidates stay together).
Works for every GLUE metric: accuracy, F1, Matthews correlation, Pearson and Spearman.

>>> labels = np.array([0, 1] * 50)
>>> better, worse = labels.copy(), labels.copy()
>>> worse[:20] = 1 - worse[:20]
>>> interval = paired_interval(accuracy, labels, better, worse, resamples=1000)
>>> round(interval.difference, 2), interval.low > 0
(0.2, True)
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np
from scipy import stats

from mtkd_tf.evaluation import accuracy  # noqa: F401  (the docstring's example)

RESAMPLES = 1000
LEVEL = 0.95


@dataclasses.dataclass(frozen=True)
class Interval:
    """`difference` = metric(a) - metric(b) on the full dev set, and its 95% interval."""

    difference: float
    low: float
    high: float

    @property
    def significant(self) -> bool:
        """The interval excludes 0: the difference is unlikely to be resampling noise."""
        return self.low > 0 or self.high < 0

    def to_list(self) -> list[float]:
        return [self.difference, self.low, self.high]

    def describe(self, scale: float = 100.0) -> str:
        return f"{scale * self.difference:+.1f} [{scale * self.low:+.1f}, {scale * self.high:+.1f}]"


Predictions = np.ndarray | Sequence[np.ndarray]


def _score(metric: Callable[[np.ndarray, np.ndarray], float], labels: np.ndarray, predictions: list[np.ndarray],
           rows: np.ndarray) -> float:
    """`metric` on `rows`, averaged over the runs in `predictions` (one model, or one per seed)."""
    return float(np.mean([metric(labels[rows], run[rows]) for run in predictions]))


def paired_interval(
    metric: Callable[[np.ndarray, np.ndarray], float],
    labels: np.ndarray,
    predictions_a: Predictions,
    predictions_b: Predictions,
    groups: np.ndarray | None = None,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> Interval:
    """95% paired bootstrap interval of `metric(a) - metric(b)` over dev examples (or groups).

    `predictions_a` / `predictions_b` may each be a list of runs (one per seed): the metric is then
    the mean over runs, and every run is scored on the same resampled examples, which gives the
    interval of the *mean* difference (given those seeds; their spread is reported beside it)."""
    labels = np.asarray(labels)
    runs_a, runs_b = ([np.asarray(run) for run in p] if isinstance(p, (list, tuple)) else [np.asarray(p)]
                      for p in (predictions_a, predictions_b))
    if groups is None:
        units, rows_of = len(labels), (lambda chosen: chosen)
    else:
        inverse = np.unique(np.asarray(groups), return_inverse=True)[1]
        order = np.argsort(inverse, kind="stable")
        members = np.split(order, np.flatnonzero(np.diff(inverse[order])) + 1)  # each question's rows
        units, rows_of = len(members), (lambda chosen: np.concatenate([members[int(u)] for u in chosen]))

    def difference(chosen: np.ndarray) -> float:
        rows = rows_of(np.asarray(chosen, dtype=int))
        return _score(metric, labels, runs_a, rows) - _score(metric, labels, runs_b, rows)

    full = difference(np.arange(units))
    if units < 2:
        return Interval(full, full, full)
    result = stats.bootstrap((np.arange(units),), difference, n_resamples=resamples, vectorized=False,
                             confidence_level=level, method="percentile", random_state=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return Interval(float(full), float(low), float(high))
