"""Seed-aware intervals: coverage of a known difference, width against the seeds' spread, Holm."""

import functools

import numpy as np
import pytest
from scipy import stats

from mtkd_tf.experiment import significance
from mtkd_tf.experiment.significance import EXAMPLE_METHOD, SEED_METHOD, compare, compare_many, holm, paired_interval
from mtkd_tf.models.evaluation import accuracy


def _experiment(rng, seeds, delta, seed_sd, size=200):
    """One synthetic experiment: a fresh split from a population whose examples differ in
    difficulty, and `seeds` runs of each kind whose skill differs by a seed effect; kind a is
    better by `delta` in expectation over seeds and examples (the truth an interval must cover)."""
    difficulty = 0.1 + 0.8 * rng.beta(0.5, 0.35, size)

    def runs(shift):
        return [(rng.random(size) < difficulty + shift + rng.normal(0, seed_sd)).astype(int) for _ in range(seeds)]

    return np.ones(size, int), runs(delta), runs(0.0)


# Coverage of a known difference, in two regimes of 500 synthetic experiments at each seed sd (1, 2 and 4
# accuracy points; 3 seeds per side). Each example has a difficulty every run shares (a probit model:
# a run is right where difficulty < its kind's shift + its seed's effect + its own per-example noise,
# the seed-by-example interaction); in the second regime kind a also has a per-example effect that all
# its runs share, so the examples a split happens to hold move every seed's difference alike.
REGIMES = {  # name: (the model, the bounds the right interval's pooled coverage must lie in)
    "no shared example effect": ({"example_sd": 0.0, "run_sd": 0.3, "size": 200}, (0.93, 0.965)),
    # the right interval is conservative here (about 97%): its t draw's heavy tails add to the examples' part
    "shared example effect": ({"example_sd": 0.65, "run_sd": 0.3, "size": 100}, (0.93, 0.985)),
}
SEED_SDS = (0.025, 0.05, 0.1)  # probit scale: about 1, 2 and 4 accuracy points at 50%
SHIFT, EXPERIMENTS, COVERAGE_RESAMPLES = 0.1, 500, 500


def _probit_experiment(rng, seed_sd, example_sd, run_sd, size, seeds=3):
    """Labels and `seeds` runs of each kind on a fresh split; kind a is better by `_truth` in expectation."""
    difficulty = rng.normal(size=size)  # shared by every run
    effect = SHIFT + rng.normal(0, example_sd, size)  # kind a's, shared by its runs

    def runs(shift):
        return [
            (difficulty < shift + rng.normal(0, seed_sd) + rng.normal(0, run_sd, size)).astype(int)
            for _ in range(seeds)
        ]

    return np.ones(size, int), runs(effect), runs(0.0)


def _truth(seed_sd, example_sd, run_sd, size=None):
    """The expected accuracy difference over examples and seeds: P(N(0,1) < N(m, s^2)) = Phi(m / sqrt(1 + s^2))."""
    a = stats.norm.cdf(SHIFT / np.sqrt(1 + example_sd**2 + seed_sd**2 + run_sd**2))
    return a - stats.norm.cdf(0.0)


# The right interval, and three wrong ones: the seeds' t alone (no example part), the examples alone
# (no seed part), and the seed mean's whole bootstrap spread beside the t (the interaction counted twice).
VARIANTS = {
    "seeds and shared examples": None,
    "seeds only": lambda each: 0.0,
    "examples only": "paired",
    "interaction twice": lambda each: 1.0,
}


@functools.lru_cache(maxsize=None)
def _coverage(variant, regime):
    """The share of experiments whose interval holds the truth, pooled over the seed sds (and per sd)."""
    model, covered = REGIMES[regime][0], {}
    how = VARIANTS[variant]
    original = significance.shared_part
    if callable(how):
        significance.shared_part = how
    try:
        for sd in SEED_SDS:
            rng, truth, hits = np.random.default_rng([7, int(1000 * sd)]), _truth(sd, **model), 0
            for repetition in range(EXPERIMENTS):
                labels, a, b = _probit_experiment(rng, sd, **model)
                interval = (paired_interval if how == "paired" else compare)(
                    accuracy, labels, a, b, resamples=COVERAGE_RESAMPLES, seed=repetition
                )
                hits += interval.low <= truth <= interval.high
            covered[sd] = round(hits / EXPERIMENTS, 3)
    finally:
        significance.shared_part = original
    return float(np.mean(list(covered.values()))), covered


# What each wrong interval must fail: (regime, "low" or "high").
FAILS = {
    "seeds only": ("shared example effect", "low"),  # misses the examples' shared part
    "examples only": ("no shared example effect", "low"),  # misses the seeds
    "interaction twice": ("no shared example effect", "high"),  # too wide
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_coverage_bounds_pass_the_right_interval_and_fail_each_wrong_one(variant):
    """The right interval's pooled coverage lies inside both regimes' bounds, and each wrong one falls
    outside one of them, so the bounds can fail (the binomial sd of a 95% coverage over 1,500
    experiments is 0.56 points; every margin is about 2 sd or more, checked with other RNG seeds too)."""
    found = {regime: _coverage(variant, regime) for regime in REGIMES}
    for regime, (pooled, by_sd) in found.items():
        print(f"{variant}, {regime}: {pooled:.3f} pooled; by seed sd {list(by_sd.values())}")
    if variant not in FAILS:
        assert all(low <= found[r][0] <= high for r, (_, (low, high)) in REGIMES.items()), found
        return
    regime, side = FAILS[variant]
    low, high = REGIMES[regime][1]
    assert found[regime][0] < low if side == "low" else found[regime][0] > high, found


def test_the_interval_is_at_least_as_wide_as_the_seeds_spread_implies():
    rng = np.random.default_rng(3)
    labels, a, b = _experiment(rng, 3, 0.02, seed_sd=0.05, size=400)
    found = compare(accuracy, labels, a, b, resamples=2000)
    differences = [accuracy(labels, x) - accuracy(labels, y) for x, y in zip(a, b, strict=True)]
    half = stats.t.ppf(0.975, 2) * np.std(differences, ddof=1) / np.sqrt(3)
    assert found.high - found.low >= 0.95 * 2 * half
    assert found.estimate == pytest.approx(np.mean(differences))


def test_runs_that_agree_across_seeds_add_no_seed_noise():
    """Identical seed-paired differences: the interval is the examples' alone (that of the averaged runs)."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    base = np.where(rng.random(300) < 0.8, labels, 1 - labels)
    better = np.where(rng.random(300) < 0.5, labels, base)
    found = compare(accuracy, labels, [better, better], [base, base], resamples=500, seed=4)
    alone = paired_interval(accuracy, labels, better, base, resamples=500, seed=4)
    assert found.method == SEED_METHOD
    assert (found.low, found.high) == pytest.approx((alone.low, alone.high), abs=1e-9)


def test_one_run_per_side_is_example_only_and_a_single_model_pairs_with_each_seed():
    rng = np.random.default_rng(2)
    labels, a, b = _experiment(rng, 3, 0.05, seed_sd=0.02)
    assert compare(accuracy, labels, a[0], b[0]).method == EXAMPLE_METHOD
    against_one = compare(accuracy, labels, a[0], b, resamples=300)
    assert against_one.method == SEED_METHOD and against_one.seeds == (1, 3)
    assert against_one.estimate == pytest.approx(accuracy(labels, a[0]) - np.mean([accuracy(labels, x) for x in b]))
    with pytest.raises(ValueError, match="cannot be paired"):
        compare(accuracy, labels, a[:2], b)


def test_ranking_resamples_whole_questions():
    sizes = [2, 3, 5, 7] * 10  # questions of unequal size: a resample of rows would cut them
    groups = np.repeat(np.arange(len(sizes)), sizes)
    rows = significance.resampled_rows(len(groups), 50, np.random.default_rng(0), groups)
    for chosen in rows:
        picked, counts = np.unique(groups[chosen], return_counts=True)
        assert np.all(counts % np.asarray(sizes)[picked] == 0)
        assert len(np.unique(groups[chosen])) < len(sizes) or len(chosen) == len(groups)
    flat = significance.resampled_rows(len(groups), 50, np.random.default_rng(0))
    assert any(
        np.any(np.unique(groups[c], return_counts=True)[1] % np.asarray(sizes)[np.unique(groups[c])] != 0) for c in flat
    )  # the check above can fail


def test_joint_comparisons_resample_the_same_rows_and_give_a_ratio_interval():
    rng = np.random.default_rng(5)
    labels = np.ones(300, int)
    difficulty = rng.uniform(0.4, 0.7, 300)
    draw = lambda shift: (rng.random(300) < difficulty + shift).astype(int)  # noqa: E731
    students, baselines, ensemble = [draw(0.06) for _ in range(3)], [draw(0.0) for _ in range(3)], draw(0.12)
    kept, gain = compare_many(accuracy, labels, [(students, baselines), (ensemble, baselines)], resamples=500)
    share = significance.ratio_interval(kept, gain)
    assert share.difference == pytest.approx(kept.estimate / gain.estimate)
    assert share.low < share.difference < share.high
    alone = compare(accuracy, labels, students, baselines, resamples=500)
    assert kept.estimate == alone.estimate  # the same difference whether compared alone or jointly


def test_holm_adjusts_a_family_step_down():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, None, 0.01]) == [pytest.approx(0.5), None, pytest.approx(0.02)]
    assert holm([]) == []


def test_p_values_are_small_for_clear_differences_and_large_for_none():
    rng = np.random.default_rng(8)
    labels, a, b = _experiment(rng, 3, 0.15, seed_sd=0.01, size=400)
    assert compare(accuracy, labels, a, b, resamples=500).p < 0.05  # t with 2 df: heavy tails
    nulls = [compare(accuracy, *_experiment(rng, 3, 0.0, seed_sd=0.02), resamples=200, seed=i).p for i in range(40)]
    assert np.mean(np.asarray(nulls) < 0.05) <= 0.15  # no more false "significant" than the level allows, give or take
    assert np.median(nulls) > 0.2  # under no difference, p is spread over (0, 1]


def test_the_significance_docstring_example_runs():
    import doctest

    assert doctest.testmod(significance).failed == 0
