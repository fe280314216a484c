"""Is a difference between two kinds of model real? Intervals that count the examples and the seeds.

Two sources of noise separate a reported difference from the true one: which examples the
evaluation split happens to hold, and which training run (seed) each model happens to be. A
paired bootstrap over the examples (Dror et al. 2018) covers the first only; with one seed per
model, nothing covers the second (Reimers & Gurevych 2017; Bouthillier et al. 2021), so a
difference between two single runs is never a verdict.

`compare` draws each resample as the sum of both:
- **examples**: a paired bootstrap of the split (every run scored on the same resampled rows;
  ranking tasks resample whole questions);
- **seeds**: the seed mean's sampling error, drawn from a Student t with N - 1 degrees of freedom
  whose scale is the spread of the N seed-paired differences / sqrt(N) (the t-interval over
  seeds). One side may be a single model (the ensemble): it is paired with each seed of the other.
  That spread already holds each seed's own luck on the examples (the seed-by-example
  interaction), so the example part keeps only what the seeds share (`shared_part`): nothing is
  counted twice.

The percentile interval of those resamples is at least as wide as the t-interval over seeds. In
tests/test_significance.py (3 seeds per side, 500 synthetic experiments at each seed sd of 1, 2 and
4 accuracy points) it covered a known true difference in 96%, 95% and 94% of them, where the
example-only interval covered 92%, 84% and 57%; with a per-example effect that the runs share, it
covered 97% (conservative: the t draw's heavy tails add to the examples' part), where the t-interval
over seeds alone covered 88%; counting the interaction twice would cover 98% without it. With one
run per side, `compare` gives the example-only interval, labelled as such; its verdict is "untested".
`holm` adjusts a family of p-values for multiple comparisons; `p_error` and `bound_error` give the
Monte Carlo error of a p and of the bounds at the resample count (`RESAMPLES`, 100,000 by default:
blocks of resamples are scored at once, each exactly as the metric scores it alone).

>>> labels = np.array([0, 1] * 100)
>>> runs = lambda errors: [np.where(np.arange(200) < e, 1 - labels, labels) for e in errors]
>>> found = compare(accuracy, labels, runs([10, 14, 12]), runs([40, 50, 44]), resamples=500)
>>> found.method == SEED_METHOD, round(found.estimate, 3), found.low > 0
(True, 0.163, True)
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np
from scipy import stats

from mtkd_tf.models.evaluation import accuracy, f1, matthews_corr, pearson, spearman

RESAMPLES = 100_000  # the default: p to about +-0.003 and bounds to about +-0.1 point (docs/protocol.md)
REGISTERED_RESAMPLES = 1000  # what evidence that records no count used (the experiments of docs/results.md)
BLOCK = 1 << 22  # resampled rows x examples drawn at a time: memory stays bounded at any count
LEVEL = 0.95
SEED_METHOD = "seeds (t, N-1 df) + examples (paired bootstrap), percentile"
EXAMPLE_METHOD = "examples only (paired bootstrap, one run per side: training noise not included)"

Metric = Callable[[np.ndarray, np.ndarray], float]


@dataclasses.dataclass(frozen=True)
class Interval:
    """`difference` = metric(a) - metric(b) on the full split, and its interval."""

    difference: float
    low: float
    high: float

    @property
    def significant(self) -> bool:
        """The interval excludes 0."""
        return self.low > 0 or self.high < 0

    def to_list(self) -> list[float]:
        return [self.difference, self.low, self.high]

    def describe(self, scale: float = 100.0) -> str:
        return f"{scale * self.difference:+.1f} [{scale * self.low:+.1f}, {scale * self.high:+.1f}]"


@dataclasses.dataclass(frozen=True)
class Comparison(Interval):
    """An interval with how it was made: `method`, the runs per side (`seeds`), the two-sided
    `p` of "no difference", and the resampled estimates (`draws`, for derived quantities such
    as the kept share)."""

    method: str = EXAMPLE_METHOD
    seeds: tuple[int, int] = (1, 1)
    p: float = 1.0
    draws: np.ndarray = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def seed_aware(self) -> bool:
        return self.method == SEED_METHOD

    @property
    def estimate(self) -> float:
        return self.difference


def row_blocks(units: int, resamples: int, rng: np.random.Generator, groups: np.ndarray | None = None):
    """The bootstrap resamples' row indices, a block at a time: (block, units) arrays of rows drawn
    with replacement, or lists of whole groups' rows. The draws are those of one call for all."""
    if groups is None:
        step = max(1, BLOCK // max(units, 1))
        for start in range(0, resamples, step):
            yield rng.integers(0, units, size=(min(step, resamples - start), units))
        return
    inverse = np.unique(np.asarray(groups), return_inverse=True)[1]
    order = np.argsort(inverse, kind="stable")
    members = np.split(order, np.flatnonzero(np.diff(inverse[order])) + 1)  # each question's rows
    step = max(1, BLOCK // len(members))
    for start in range(0, resamples, step):
        chosen = rng.integers(0, len(members), size=(min(step, resamples - start), len(members)))
        yield [np.concatenate([members[u] for u in row]) for row in chosen]


def resampled_rows(
    units: int, resamples: int, rng: np.random.Generator, groups: np.ndarray | None = None
) -> list[np.ndarray]:
    """Row indices of each bootstrap resample: rows drawn with replacement, or whole groups."""
    return [rows for block in row_blocks(units, resamples, rng, groups) for rows in block]


def scores(metric: Metric, labels: np.ndarray, runs: Sequence[np.ndarray], rows: Sequence[np.ndarray]) -> np.ndarray:
    """`metric` of every run on every resample: (resamples, runs)."""
    return np.array([[metric(labels[r], run[r]) for run in runs] for r in rows])


def _accuracy_rows(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    return np.mean(labels == predictions, axis=1)


def _f1_rows(labels: np.ndarray, predictions: np.ndarray, positive: int = 1) -> np.ndarray:
    true_positive = np.sum((predictions == positive) & (labels == positive), axis=1)
    predicted, actual = np.sum(predictions == positive, axis=1), np.sum(labels == positive, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision, recall = true_positive / predicted, true_positive / actual
        found = 2 * precision * recall / (precision + recall)
    return np.where(true_positive == 0, 0.0, found)


def _matthews_rows(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    labels, predictions = labels == 1, predictions == 1
    tp, tn = np.sum(labels & predictions, axis=1, dtype=float), np.sum(~labels & ~predictions, axis=1, dtype=float)
    fp, fn = np.sum(~labels & predictions, axis=1, dtype=float), np.sum(labels & ~predictions, axis=1, dtype=float)
    denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, (tp * tn - fp * fn) / denominator, 0.0)


def _row_dots(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Each row's dot product by BLAS, as `np.dot` of the rows alone computes it (NumPy >= 2: one call)."""
    if hasattr(np, "vecdot"):
        return np.vecdot(a, b)
    return np.array([np.dot(u, v) for u, v in zip(a, b, strict=True)])


def _pearson_rows(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    x = labels - labels.mean(axis=1, keepdims=True)
    y = predictions - predictions.mean(axis=1, keepdims=True)
    denominator = np.sqrt(_row_dots(x, x) * _row_dots(y, y))
    varies = (denominator != 0) & x.any(axis=1) & y.any(axis=1)  # `pearson`'s zero std: every deviation 0
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(varies, np.clip(_row_dots(x, y) / denominator, -1.0, 1.0), 0.0)


def _spearman_rows(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    return _pearson_rows(stats.rankdata(labels, axis=1), stats.rankdata(predictions, axis=1))


# The metrics of `evaluation` computed on a block of resamples at once, each row exactly as the
# metric computes it alone (the same value to the last bit): the loop over resamples is the cost.
BLOCK_METRICS = {
    accuracy: _accuracy_rows,
    f1: _f1_rows,
    matthews_corr: _matthews_rows,
    pearson: lambda labels, predictions: _pearson_rows(labels.astype(np.float64), predictions.astype(np.float64)),
    spearman: _spearman_rows,
}


def resampled_scores(
    metric: Metric,
    labels: np.ndarray,
    runs: Sequence[np.ndarray],
    resamples: int,
    rng: np.random.Generator,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """`metric` of each run on each bootstrap resample of the split: (resamples, runs). The rows
    are `resampled_rows`'; blocks of them are scored at once where the metric has a block form."""
    found = np.empty((resamples, len(runs)))
    by_block = BLOCK_METRICS.get(metric) if groups is None else None
    start = 0
    for block in row_blocks(len(labels), resamples, rng, groups):
        if by_block is not None:
            chosen = labels[block]
            found[start : start + len(block)] = np.stack([by_block(chosen, run[block]) for run in runs], axis=1)
        else:
            found[start : start + len(block)] = scores(metric, labels, runs, block)
        start += len(block)
    return found


def seed_noise(differences: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Draws of the seed mean's error for k quantities at once: `differences` is (N seeds, k);
    returns (resamples, k) from a multivariate Student t with N - 1 df and the covariance of the
    seed-paired differences / N (zeros when N < 2)."""
    differences = np.atleast_2d(np.asarray(differences, float).T).T
    count, width = differences.shape
    if count < 2:
        return np.zeros((resamples, width))
    covariance = np.atleast_2d(np.cov(differences, rowvar=False)) / count
    normal = rng.multivariate_normal(np.zeros(width), covariance, size=resamples, method="eigh")
    chi = rng.chisquare(count - 1, size=(resamples, 1)) / (count - 1)
    return normal / np.sqrt(chi)


def shared_part(each: np.ndarray) -> float:
    """How much of the bootstrap spread of a seed mean the examples share across seeds.

    Over resampled rows, each seed's difference varies by A (the examples, shared) + I (the
    seed-by-example interaction); their mean by A + I/N. The seed t-draw already carries I/N (it
    is part of the seed-paired differences' spread), so the example part is scaled to sqrt(A)."""
    count = each.shape[1]
    whole = each.mean(1).var()
    if whole <= 0:
        return 0.0
    shared = max(0.0, (count * whole - each.var(0).mean()) / (count - 1))
    return float(np.sqrt(shared / whole))


def paired_differences(full_a: np.ndarray, full_b: np.ndarray) -> np.ndarray:
    """Seed-paired differences of two sides' full-split scores (a single model pairs with each)."""
    if len(full_a) == len(full_b) or min(len(full_a), len(full_b)) == 1:
        return np.asarray(full_a) - np.asarray(full_b)
    raise ValueError(f"runs cannot be paired: {len(full_a)} against {len(full_b)}")


def _as_runs(predictions) -> list[np.ndarray]:
    return [np.asarray(r) for r in predictions] if isinstance(predictions, (list, tuple)) else [np.asarray(predictions)]


def p_value(draws: np.ndarray) -> float:
    """Two-sided p of "the difference is 0" from resampled estimates."""
    count = len(draws)
    side = min(np.sum(draws <= 0), np.sum(draws >= 0))
    return float(min(1.0, 2 * (side + 1) / (count + 1)))


def _scored(metric: Metric, labels: np.ndarray, runs: list, resamples: int, seed: int, groups) -> tuple:
    """Each distinct run (by identity) scored once: `(column of run, full-split scores, resampled scores)`."""
    distinct: list[np.ndarray] = []
    for run in runs:
        if not any(run is seen for seen in distinct):
            distinct.append(run)
    column = lambda run: next(i for i, seen in enumerate(distinct) if seen is run)  # noqa: E731
    full = np.array([metric(labels, run) for run in distinct])
    resampled = resampled_scores(metric, labels, distinct, resamples, np.random.default_rng(seed), groups)
    return column, full, resampled


def p_error(p: float, resamples: int) -> float:
    """The Monte Carlo standard error of a bootstrap p from `resamples` draws: p counts the draws on
    the far side of 0 (a binomial share q = p / 2), so 2 sqrt(q (1 - q) / N); at most 1 / sqrt(N)."""
    share = min(p, 1.0) / 2
    return 2 * float(np.sqrt(share * (1 - share) / resamples))


def bound_error(draws: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The Monte Carlo standard errors of the percentile interval's bounds: half the distance between
    the order statistics one binomial standard deviation either side of each (the count of draws
    below a quantile is binomial)."""
    ordered, count = np.sort(draws), len(draws)
    found = []
    for quantile in ((1 - level) / 2, (1 + level) / 2):
        spread = np.sqrt(count * quantile * (1 - quantile))
        below = ordered[max(0, int(np.floor(count * quantile - spread)))]
        above = ordered[min(count - 1, int(np.ceil(count * quantile + spread)))]
        found.append(float(above - below) / 2)
    return found[0], found[1]


def compare_many(
    metric: Metric,
    labels: np.ndarray,
    pairs: Sequence[tuple],
    groups: np.ndarray | None = None,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> list[Comparison]:
    """`compare` for several (runs_a, runs_b) pairs on one split, jointly: the same resampled rows,
    and one seed-noise draw with the covariance of their seed-paired differences (pairs with the
    same number of seeds), so ratios of two comparisons (the kept share) get a coherent interval."""
    labels = np.asarray(labels)
    pairs = [(_as_runs(runs_a), _as_runs(runs_b)) for runs_a, runs_b in pairs]
    units = len(labels) if groups is None else len(np.unique(groups))
    count = resamples if units >= 2 else 0
    column, full, resampled = _scored(
        metric, labels, [r for pair in pairs for side in pair for r in side], count, seed, groups
    )
    found, by_count = [], {}
    for runs_a, runs_b in pairs:
        a, b = [column(r) for r in runs_a], [column(r) for r in runs_b]
        differences = paired_differences(full[a], full[b])
        estimate = float(np.mean(full[a]) - np.mean(full[b]))
        each = np.ascontiguousarray(resampled[:, a] - resampled[:, b])  # (resamples, seeds); C order: the sums' order
        draws = each.mean(1)
        if len(differences) >= 2 and count:  # the examples' part only: the seeds' part (with their interaction) below
            draws = estimate + shared_part(each) * (draws - estimate)
            by_count.setdefault(len(differences), []).append(len(found))
        found.append([estimate, draws, differences, (len(runs_a), len(runs_b))])
    for seeds, indices in by_count.items():
        noise = seed_noise(
            np.stack([found[i][2] for i in indices], axis=1), count, np.random.default_rng([seed, seeds])
        )
        for position, i in enumerate(indices):
            found[i][1] = found[i][1] + noise[:, position]
    result = []
    for estimate, draws, differences, sides in found:
        method = SEED_METHOD if len(differences) >= 2 else EXAMPLE_METHOD
        if not count:
            result.append(Comparison(estimate, estimate, estimate, method, sides, 1.0, np.full(1, estimate)))
            continue
        low, high = _percentile(draws, level)
        result.append(Comparison(estimate, low, high, method, sides, p_value(draws), draws))
    return result


def compare(
    metric: Metric,
    labels: np.ndarray,
    runs_a,
    runs_b,
    groups: np.ndarray | None = None,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> Comparison:
    """The interval of mean-over-runs metric(a) - metric(b): seed-aware when either side has
    two or more runs (seed-paired by position; a single run pairs with each), else example-only.
    The same `seed` resamples the same rows for every comparison on a split."""
    return compare_many(metric, labels, [(runs_a, runs_b)], groups, resamples, seed, level)[0]


def paired_interval(
    metric: Metric,
    labels: np.ndarray,
    predictions_a,
    predictions_b,
    groups: np.ndarray | None = None,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> Interval:
    """The example-only paired bootstrap interval (the seeds held fixed): what a single
    benchmark comparison of given runs can say."""
    runs_a, runs_b = _as_runs(predictions_a), _as_runs(predictions_b)
    labels = np.asarray(labels)
    units = len(labels) if groups is None else len(np.unique(groups))
    count = resamples if units >= 2 else 0
    column, full, resampled = _scored(metric, labels, runs_a + runs_b, count, seed, groups)
    a, b = [column(r) for r in runs_a], [column(r) for r in runs_b]
    estimate = float(full[a].mean() - full[b].mean())
    if not count:
        return Interval(estimate, estimate, estimate)
    draws = np.ascontiguousarray(resampled[:, a]).mean(1) - np.ascontiguousarray(resampled[:, b]).mean(1)
    return Interval(estimate, *_percentile(draws, level))


def ratio_interval(numerator: Comparison, denominator: Comparison, level: float = LEVEL) -> Interval:
    """The interval of numerator / denominator from the two comparisons' joint resamples (same
    rows and one joint seed draw, from `compare_many`)."""
    estimate = numerator.estimate / denominator.estimate
    ratios = numerator.draws / denominator.draws
    return Interval(float(estimate), *_percentile(ratios, level))


def _percentile(draws: np.ndarray, level: float) -> tuple[float, float]:
    """The central `level` percentile interval of resampled estimates."""
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(draws, [tail, 100 - tail])
    return float(low), float(high)


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment (strong family-wise error control); None stays None."""
    present = [(p, i) for i, p in enumerate(p_values) if p is not None]
    adjusted: list[float | None] = [None] * len(p_values)
    running, count = 0.0, len(present)
    for rank, (p, index) in enumerate(sorted(present)):
        running = max(running, min(1.0, (count - rank) * p))
        adjusted[index] = running
    return adjusted


def t_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """The t-interval of the mean of `values` (e.g. seed-paired differences on a fixed split)."""
    values = np.asarray(values, float)
    mean = float(values.mean())
    if len(values) < 2:
        return Interval(mean, mean, mean)
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return Interval(mean, float(mean - half), float(mean + half))
