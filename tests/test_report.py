"""The report's trust: paired bootstrap intervals, significance-gated kept share, claim lines."""

import json

import numpy as np
import pytest

from mtkd_tf import report as report_lib
from mtkd_tf.evaluation import METRIC_FUNCTIONS, accuracy
from mtkd_tf.significance import Interval, paired_interval


def _flipped(labels, count, rng):
    predictions = labels.copy()
    wrong = rng.choice(len(labels), count, replace=False)
    predictions[wrong] = 1 - predictions[wrong]
    return predictions


def test_the_interval_of_a_known_difference_covers_it_and_shrinks_with_more_examples():
    rng = np.random.default_rng(0)
    widths = []
    for n in (200, 2000):
        labels = rng.integers(0, 2, n)
        a, b = _flipped(labels, n // 10, rng), _flipped(labels, n // 5, rng)  # 90% vs 80% accuracy
        found = paired_interval(accuracy, labels, a, b, resamples=1000, seed=1)
        assert found.difference == pytest.approx(0.1)
        assert found.low < 0.1 < found.high and found.significant
        widths.append(found.high - found.low)
    assert widths[1] < widths[0] / 2  # ~1/sqrt(10) as wide
    same = paired_interval(accuracy, labels, a, a)
    assert same.difference == same.low == same.high == 0 and not same.significant
    again = paired_interval(accuracy, labels, a, b, resamples=1000, seed=1)
    assert again == found  # seeded: the report is reproducible


@pytest.mark.parametrize("name", sorted(METRIC_FUNCTIONS))
def test_every_metric_gets_an_interval(name):
    rng = np.random.default_rng(2)
    if name in ("pearson", "spearman"):
        labels = rng.normal(size=300)
        a, b = labels + rng.normal(scale=0.3, size=300), labels + rng.normal(scale=1.5, size=300)
    else:
        labels = rng.integers(0, 2, 300)
        a, b = _flipped(labels, 30, rng), _flipped(labels, 90, rng)
    found = paired_interval(METRIC_FUNCTIONS[name], labels, a, b, resamples=300)
    assert found.low <= found.difference <= found.high and found.difference > 0 and found.significant


def test_ranking_resamples_whole_questions():
    groups = np.repeat(np.arange(50), 4)  # 50 questions, 4 candidates each
    labels = np.tile([1, 0, 0, 0], 50)
    calls = []

    def metric(truth, predictions):
        calls.append(len(truth))
        return accuracy(truth, predictions)

    paired_interval(metric, labels, labels, np.zeros_like(labels), groups=groups, resamples=20)
    assert all(size % 4 == 0 for size in calls)  # a question's candidates stay together


ROWS = {
    "member_0": {"t": {"accuracy": 0.70}, "u": {"accuracy": 0.60}},
    "member_1": {"t": {"accuracy": 0.80}, "u": {"accuracy": 0.62}},
    "ensemble": {"t": {"accuracy": 0.84}, "u": {"accuracy": 0.63}},
    "baseline": {"t": {"accuracy": 0.74}, "u": {"accuracy": 0.61}},
    "student": {"t": {"accuracy": 0.80}, "u": {"accuracy": 0.62}},
}


def _found(significant_gain: bool):
    gain = Interval(0.10, 0.04, 0.16) if significant_gain else Interval(0.10, -0.02, 0.2)
    return {
        "t": {"accuracy": {"student - baseline": Interval(0.06, 0.01, 0.11), "ensemble - best member": Interval(0.04, -0.01, 0.09),
                           "student - ensemble": Interval(-0.04, -0.08, -0.005), "ensemble - baseline": gain}},
        "u": {"accuracy": {"student - baseline": Interval(0.01, -0.02, 0.04)}},
    }


def test_kept_share_only_when_the_ensemble_gain_is_significant():
    shown = report_lib.build_report(ROWS, _found(True))
    assert shown["t"]["accuracy"]["kept"] == pytest.approx(0.6)
    hidden = report_lib.build_report(ROWS, _found(False))
    assert hidden["t"]["accuracy"]["kept"] is None
    assert "| n.s. |" in report_lib.report_table(hidden, list(ROWS))


def test_claim_lines_judge_each_claim_with_its_interval():
    report = report_lib.build_report(ROWS, _found(True))
    lines = report_lib.claims(report, _found(True), teacher_tasks=["t"])
    assert lines[0].startswith("- The ensemble beats its best member: t accuracy +4.0 [-1.0, +9.0]: not significant")
    assert "t accuracy +6.0 [+1.0, +11.0]: holds" in lines[1]
    assert "t: 60% (holds)" in lines[2]
    assert lines[3].startswith("- The gain carries to tasks without a teacher") and "u accuracy" in lines[3]
    assert "not significant" in lines[3]


def test_warnings_name_far_apart_members_and_unconverged_training(tmp_path):
    report = report_lib.build_report(ROWS, {})
    history = tmp_path / "history.json"
    history.write_text(json.dumps([{"epoch": 0, "loss": 1.0}, {"epoch": 1, "loss": 0.7}]))
    found = report_lib.warnings(report, {"student": str(history)})
    assert any(line.startswith("t: the teachers' accuracy spans 70.0-80.0") for line in found)
    assert not any(line.startswith("u:") for line in found)  # 2 points apart: fine
    assert any(line.startswith("student: its last epoch still lowered the training loss by 30%") for line in found)


def test_the_significance_docstring_example_runs():
    import doctest

    from mtkd_tf import significance

    assert doctest.testmod(significance).failed == 0


def test_tasks_without_a_teacher_get_no_kept_share():
    report = report_lib.build_report(ROWS, _found(True), teacher_tasks=["u"])
    assert "kept" not in report["t"]["accuracy"] and report["u"]["accuracy"]["kept"] is not None


def test_the_interval_of_a_seed_mean_difference_is_that_of_the_averaged_runs():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 400)
    students = [_flipped(labels, 40, rng), _flipped(labels, 60, rng)]  # 90% and 85%
    baselines = [_flipped(labels, 100, rng), _flipped(labels, 80, rng)]  # 75% and 80%
    interval = paired_interval(accuracy, labels, students, baselines, resamples=1000)
    assert interval.difference == pytest.approx((0.90 + 0.85) / 2 - (0.75 + 0.80) / 2)
    assert interval.low <= interval.difference <= interval.high and interval.significant
    one = paired_interval(accuracy, labels, students[0], baselines[0], resamples=1000)
    assert one.difference == pytest.approx(0.15)


SEEDED_ROWS = {
    "ensemble": {"t": {"accuracy": 0.90}},
    "baseline": {"t": {"accuracy": 0.70}}, "student": {"t": {"accuracy": 0.80}},
    "baseline_s2": {"t": {"accuracy": 0.74}}, "student_s2": {"t": {"accuracy": 0.84}},
    "student_anneal": {"t": {"accuracy": 0.83}},
}


def test_seeds_give_mean_and_sd_rows_and_the_claims_use_the_means():
    assert report_lib.seed_runs(list(SEEDED_ROWS)) == {"baseline": ["baseline", "baseline_s2"],
                                                        "student": ["student", "student_s2"]}
    assert ("student_mean", "baseline_mean") in report_lib.comparisons(list(SEEDED_ROWS))
    assert ("student_anneal", "student") in report_lib.comparisons(list(SEEDED_ROWS))
    mean_found = {"t": {"accuracy": {"student_mean - baseline_mean": Interval(0.10, 0.05, 0.15),
                                     "ensemble - baseline_mean": Interval(0.18, 0.10, 0.26),
                                     "student_anneal - student": Interval(0.03, -0.02, 0.08)}}}
    report = report_lib.build_report(SEEDED_ROWS, mean_found, teacher_tasks=["t"])
    values = report["t"]["accuracy"]
    assert values["student_mean"] == pytest.approx(0.82) and values["baseline_mean"] == pytest.approx(0.72)
    assert values["student_sd"] == pytest.approx(np.std([0.80, 0.84], ddof=1))
    assert values["kept"] == pytest.approx(0.10 / 0.18)  # (student_mean - baseline_mean) / (ensemble - baseline_mean)
    order = report_lib.columns(report, list(SEEDED_ROWS))
    assert order == ["ensemble", "baseline", "student", "baseline_s2", "baseline_mean", "student_s2", "student_mean",
                     "student_anneal"]
    table = report_lib.report_table(report, order)
    assert "| 82.0 ± 2.8 |" in table and "| 72.0 ± 2.8 |" in table
    lines = report_lib.claims(report, mean_found, teacher_tasks=["t"])
    assert lines[1] == "- The student beats the baseline MT-DNN (mean over seeds): t accuracy +10.0 [+5.0, +15.0]: holds."
    assert lines[-1].startswith("- Beyond the paper, teacher annealing (student_anneal) beats the student: t accuracy "
                                "+3.0 [-2.0, +8.0]: not significant")
