"""The report's verdicts: seed-aware claims on the held-out split, gates, Holm, and rebuilding from evidence."""

import json

import numpy as np
import pytest
from scipy import stats

from mtkd_tf.distill.soft_labels import statistics
from mtkd_tf.experiment import claim_keys
from mtkd_tf.experiment import report as report_lib
from mtkd_tf.experiment.layout import run_row
from mtkd_tf.experiment.report import HOLDS, NOT_SIGNIFICANT, UNTESTED, Evidence
from mtkd_tf.experiment.significance import EXAMPLE_METHOD, SEED_METHOD, holm
from mtkd_tf.models.evaluation import accuracy

SIZE = 400


def _predictions(labels, accuracy_wanted, rng):
    """Predictions right on exactly `accuracy_wanted` of the examples (chosen at random)."""
    wrong = rng.choice(len(labels), int(round((1 - accuracy_wanted) * len(labels))), replace=False)
    predictions = labels.copy()
    predictions[wrong] = 1 - predictions[wrong]
    return predictions


def _evidence(scores_by_row, tasks=("t", "u"), teacher_tasks=("t",), dev_scores=None, seed=0):
    """Evidence of a run whose rows score `scores_by_row[row][task]` on the held-out split
    (`dev_scores` on dev, default the same)."""
    rng = np.random.default_rng(seed)
    labels = {(task, split): rng.integers(0, 2, SIZE) for task in tasks for split in ("dev", "heldout")}
    predictions = {}
    for row, by_task in scores_by_row.items():
        for task in tasks:
            for split in ("dev", "heldout"):
                wanted = (dev_scores or scores_by_row)[row][task] if split == "dev" else by_task[task]
                predictions[(row, task, split)] = _predictions(labels[(task, split)], wanted, rng)
    return Evidence(
        rows=list(scores_by_row),
        tasks={
            t: {"type": "classification", "metrics": ["accuracy"], "suffixes": {"dev": "", "heldout": ""}}
            for t in tasks
        },
        predictions=predictions,
        labels=labels,
        teacher_tasks=list(teacher_tasks),
        seed=seed,
    )


def _run(rows, student, baseline, ensemble=0.80, members=(0.74, 0.76, 0.75), spread=0.01):
    """Rows for tasks t and u: 3 members, the ensemble, 3 seeds each of student and baseline
    (seed scores spread by `spread` around the given means)."""
    found = {f"member_{k}": {"t": m, "u": m} for k, m in enumerate(members)}
    found["ensemble"] = {"t": ensemble, "u": ensemble}
    for name, mean in (("baseline", baseline), ("student", student)):
        for run, offset in enumerate((-spread, 0.0, spread)):
            found[run_row(name, run)] = {"t": mean + offset, "u": mean + offset}
    return found


def _claim(found, key, task="t"):
    (claim,) = [c for c in found if c["key"] == key and c["task"] == task]
    return claim


def test_one_seed_gives_no_student_verdict_other_than_untested():
    rows = {
        "member_0": {"t": 0.7, "u": 0.7},
        "member_1": {"t": 0.72, "u": 0.7},
        "ensemble": {"t": 0.9, "u": 0.7},
        "baseline": {"t": 0.6, "u": 0.6},
        "student": {"t": 0.9, "u": 0.9},
    }
    found, _ = report_lib.claims(_evidence(rows))
    for claim in found:
        if claim["key"] in ("student_vs_baseline", "kept_share", "gain_carries"):
            assert claim["verdict"] == UNTESTED, claim
    beats = _claim(found, "student_vs_baseline")
    assert beats["method"] == EXAMPLE_METHOD and "one seed" in beats["reason"]
    assert beats["low"] > 0  # a 30-point gap: the example-only interval excludes 0, and still no verdict


def test_three_seeds_give_seed_aware_claims_as_wide_as_the_seeds_spread_implies():
    evidence = _evidence(_run({}, student=0.82, baseline=0.70, ensemble=0.84, spread=0.02))
    found, comparisons = report_lib.claims(evidence)
    beats = _claim(found, "student_vs_baseline")
    assert beats["method"] == SEED_METHOD and beats["seeds"] == [3, 3] and beats["split"] == "heldout"
    assert beats["verdict"] == HOLDS
    runs = lambda name: [evidence.predictions[(run_row(name, r), "t", "heldout")] for r in range(3)]  # noqa: E731
    labels = evidence.labels[("t", "heldout")]
    pairs = zip(runs("student"), runs("baseline"), strict=True)
    differences = [accuracy(labels, s) - accuracy(labels, b) for s, b in pairs]
    half = stats.t.ppf(0.975, 2) * np.std(differences, ddof=1) / np.sqrt(3)
    assert beats["high"] - beats["low"] >= 0.95 * 2 * half
    assert beats["estimate"] == pytest.approx(np.mean(differences))
    assert set(beats) == {
        "key",
        "claim",
        "task",
        "metric",
        "split",
        "estimate",
        "low",
        "high",
        "level",
        "method",
        "seeds",
        "p",
        "p_adjusted",
        "family",
        "verdict",
        "reason",
    }


def test_verdicts_use_holm_over_every_tested_claim():
    found, _ = report_lib.claims(_evidence(_run({}, student=0.80, baseline=0.70, ensemble=0.84)))
    family = [c for c in found if c["p_adjusted"] is not None]
    assert len(family) >= 4
    assert [c["p_adjusted"] for c in family] == pytest.approx(holm([c["p"] for c in family]))
    assert all(c["p_adjusted"] >= c["p"] for c in family)
    for claim in family:
        expected = (
            (HOLDS if claim["estimate"] > 0 else "does not hold") if claim["p_adjusted"] < 0.05 else NOT_SIGNIFICANT
        )
        assert claim["verdict"] == expected


def test_kept_share_needs_a_significant_ensemble_gain_and_a_significant_student_gain():
    kept = lambda found: _claim(found, "kept_share")  # noqa: E731
    no_gain, _ = report_lib.claims(_evidence(_run({}, student=0.72, baseline=0.70, ensemble=0.705)))
    assert kept(no_gain)["verdict"] == UNTESTED and "not significant" in kept(no_gain)["reason"]
    assert kept(no_gain)["estimate"] is None
    kept_most, found = report_lib.claims(_evidence(_run({}, student=0.88, baseline=0.70, ensemble=0.90, spread=0.005)))
    share = kept(kept_most)
    student, gain = found["t"]["student - baseline"], found["t"]["ensemble - baseline"]
    assert share["estimate"] == pytest.approx(student.estimate / gain.estimate)
    assert share["low"] < share["estimate"] < share["high"]
    assert share["verdict"] == HOLDS and share["low"] >= report_lib.KEPT_THRESHOLD
    kept_little, _ = report_lib.claims(_evidence(_run({}, student=0.70, baseline=0.70, ensemble=0.90, spread=0.005)))
    assert kept(kept_little)["verdict"] == "does not hold" and kept(kept_little)["high"] < report_lib.KEPT_THRESHOLD


def test_the_gain_carries_is_asked_only_where_a_teacher_task_gained():
    no_gain, _ = report_lib.claims(_evidence(_run({}, student=0.70, baseline=0.70, ensemble=0.80)))
    carries = _claim(no_gain, "gain_carries", task="u")
    assert carries["verdict"] == UNTESTED and "no gain to carry" in carries["reason"]
    gained, _ = report_lib.claims(_evidence(_run({}, student=0.85, baseline=0.70, ensemble=0.86, spread=0.005)))
    assert _claim(gained, "gain_carries", task="u")["verdict"] == HOLDS


def test_the_member_is_picked_on_dev_and_tested_on_the_heldout_split():
    rows = _run({}, student=0.8, baseline=0.7)
    dev = {row: dict(values) for row, values in rows.items()}
    dev["member_2"] = {"t": 0.95, "u": 0.95}  # the winner on dev ...
    rows["member_2"] = {"t": 0.60, "u": 0.60}  # ... is the worst on the held-out split
    evidence = _evidence(rows, dev_scores=dev)
    assert report_lib.picked_member(evidence, "t") == "member_2"
    found, comparisons = report_lib.claims(evidence)
    picked = _claim(found, "ensemble_vs_picked_member")
    labels = evidence.labels[("t", "heldout")]
    expected = accuracy(labels, evidence.predictions[("ensemble", "t", "heldout")]) - accuracy(
        labels, evidence.predictions[("member_2", "t", "heldout")]
    )
    assert picked["estimate"] == pytest.approx(expected) and picked["verdict"] == UNTESTED
    mean = _claim(found, "ensemble_vs_mean_member")
    member_scores = [accuracy(labels, evidence.predictions[(f"member_{k}", "t", "heldout")]) for k in range(3)]
    assert mean["estimate"] == pytest.approx(0.80 - np.mean(member_scores))


def test_without_a_heldout_split_the_claims_say_they_used_dev():
    evidence = _evidence(_run({}, student=0.8, baseline=0.7))
    evidence.labels = {key: value for key, value in evidence.labels.items() if key[1] == "dev"}
    evidence.predictions = {key: value for key, value in evidence.predictions.items() if key[2] == "dev"}
    found, _ = report_lib.claims(evidence)
    assert {c["split"] for c in found} == {"dev"}
    assert "no held-out split" in _claim(found, "student_vs_baseline")["reason"]


def test_the_report_rebuilds_identically_from_its_saved_evidence(tmp_path):
    evidence = _evidence(_run({}, student=0.8, baseline=0.7))
    evidence.histories = {
        "student": [{"epoch": 0, "loss": 1.0, "t_loss": 0.9}, {"epoch": 1, "loss": 0.5, "t_loss": 0.4}]
    }
    evidence.soft_targets = {"t": statistics(np.array([[0.8, 0.2], [0.4, 0.6]]), np.array([0, 0]))}
    evidence.save(str(tmp_path))
    first, text = report_lib.write_report(str(tmp_path), evidence)
    saved = (tmp_path / "report.json").read_bytes()
    rebuilt = report_lib.rebuild(str(tmp_path))
    assert (tmp_path / "report.json").read_bytes() == saved and rebuilt == json.loads(saved)
    assert (tmp_path / "report.md").read_text() == text + "\n"
    assert (tmp_path / "scores.png").stat().st_size > 0
    with pytest.raises(FileNotFoundError, match="no report evidence"):
        report_lib.rebuild(str(tmp_path / "elsewhere"))


def _with_finetuned_and_variants(rows):
    """`rows` plus 3 seeds each of the fine-tuned student and baseline, an annealed student and round 1."""
    for name, mean in (("baseline_ft", 0.72), ("student_ft", 0.86)):
        for run, offset in enumerate((-0.005, 0.0, 0.005)):
            rows[run_row(name, run)] = {"t": mean + offset, "u": mean + offset}
    rows["student_anneal"] = {"t": 0.86, "u": 0.86}
    rows["student_r1"] = {"t": 0.84, "u": 0.84}
    return rows


def test_claims_are_matched_on_their_keys_and_a_title_is_only_read(monkeypatch):
    evidence = _evidence(
        _with_finetuned_and_variants(_run({}, student=0.85, baseline=0.70, ensemble=0.86, spread=0.005))
    )
    before, _ = report_lib.claims(evidence)
    variants = ["student_ft_vs_baseline_ft", "student_anneal_vs_student", "student_r1_vs_student"]
    teacher = ["ensemble_vs_mean_member", "ensemble_vs_picked_member", "ensemble_vs_baseline", "student_vs_baseline"]
    assert [c["key"] for c in before if c["task"] == "t"] == [*teacher, "kept_share", *variants]
    assert [c["key"] for c in before if c["task"] == "u"] == ["gain_carries", *variants]
    assert len({(c["key"], c["task"]) for c in before}) == len(before)  # (key, task) names one claim
    assert all(c["claim"] == report_lib.claim_kind(c["key"])[0] for c in before)
    assert _claim(before, "student_anneal_vs_student")["claim"] == (
        "Beyond the paper, teacher annealing (student_anneal) beats the student"
    )
    # the claims asked only where another holds were asked here: the gates read other claims' verdicts
    assert _claim(before, "kept_share")["verdict"] == HOLDS and _claim(before, "gain_carries", "u")["verdict"] == HOLDS
    assert sum(c["p_adjusted"] is not None for c in before) >= 6
    # every claim reworded to the same title: matching on titles would mix the claims up
    reworded = {key: ("Reworded", comparison) for key, (_, comparison) in report_lib.CLAIMS.items()}
    monkeypatch.setattr(claim_keys, "CLAIMS", reworded)
    monkeypatch.setattr(
        claim_keys, "VARIANT_CLAIM", (claim_keys.VARIANT_CLAIM[0], "Reworded", claim_keys.VARIANT_CLAIM[2])
    )
    after, _ = report_lib.claims(evidence)
    assert {c["claim"] for c in after} == {"Reworded"}
    untitled = lambda found: [{name: v for name, v in c.items() if name != "claim"} for c in found]  # noqa: E731
    assert untitled(after) == untitled(before)  # keys, estimates, p, Holm-adjusted p, verdicts, reasons
    shown = lambda found: [report_lib.claim_line(c)[len(f"- {c['claim']}: ") :] for c in found]  # noqa: E731
    assert shown(after) == shown(before)  # the text too: the kept share is still shown as a fraction


def test_an_unknown_claim_key_names_the_known_ones():
    assert report_lib.claim_kind("student_r2_vs_student") == (
        "Beyond the paper, self-distillation round 2 (student_r2) beats the student",
        "student_r2 - student",
    )
    for key in ("baseline_vs_student", "The student beats the baseline", "student_vs_self"):
        with pytest.raises(KeyError, match="student_vs_baseline"):
            report_lib.claim_kind(key)


def test_warnings_read_each_tasks_loss_after_the_warmup_epoch():
    evidence = _evidence(_run({}, student=0.8, baseline=0.7))
    evidence.warmup_fraction = 0.1
    evidence.histories = {
        # epoch 0 holds the warm-up: its drop is left out; t still falls 30% in the last epoch, u does not,
        # and the total (dominated by u) barely moves: a warning names t alone
        "student": [
            {"loss": 9.0, "t_loss": 3.0, "u_loss": 6.0},
            {"loss": 5.0, "t_loss": 1.0, "u_loss": 4.0},
            {"loss": 4.7, "t_loss": 0.7, "u_loss": 4.0},
        ],
        "baseline": [{"loss": 9.0, "t_loss": 3.0, "u_loss": 6.0}, {"loss": 2.0, "t_loss": 1.0, "u_loss": 1.0}],
    }
    dev = report_lib.scores(evidence, heldout=False)
    found = report_lib.warnings(dev, evidence)
    assert [line for line in found if "loss" in line] == [
        "student: t's training loss fell 30% over its last epoch: it has not converged, "
        "more epochs may change the comparison"
    ]
    assert not any("did not converge (dev" in line for line in found)  # members 74-76: all converged


def test_warnings_name_each_member_that_did_not_converge_by_the_teacher_checks_rule():
    evidence = _evidence(_run({}, student=0.8, baseline=0.7))
    dev = report_lib.scores(evidence, heldout=False)
    scores = {row: 100 * value for row, value in dev["t"]["accuracy"].items() if row.startswith("member_")}
    best = max(scores.values())
    evidence.trivial = {"t": best - 1.0}  # every member within 2 points of the trivial predictor
    evidence.teacher_check = {"mode": "skip", "tasks": {"t": {"members": [{"name": "member_0", "kept": False}]}}}
    found = [line for line in report_lib.warnings(dev, evidence) if "did not converge" in line]
    assert len(found) == len(scores)
    assert found[0].startswith("t: member_0 did not converge (dev accuracy: ")
    assert found[0].endswith("; the teacher check left it out of the ensemble")
    assert not any(line.endswith("ensemble") for line in found[1:])
    evidence.trivial = {}  # unknown trivial predictor: only the distance below the best member counts
    assert not [line for line in report_lib.warnings(dev, evidence) if "did not converge" in line]


def test_seed_rows_give_mean_and_sd_columns():
    evidence = _evidence(_run({}, student=0.8, baseline=0.7, spread=0.02))
    table = report_lib.scores(evidence, heldout=True)
    values = table["t"]["accuracy"]
    runs = [values[run_row("student", r)] for r in range(3)]
    assert values["student_mean"] == pytest.approx(np.mean(runs))
    assert values["student_sd"] == pytest.approx(np.std(runs, ddof=1))
    order = report_lib.columns(table, evidence.rows)
    assert order.index("student_mean") == order.index("student_s3") + 1
    assert f"| {100 * np.mean(runs):.1f} ± {100 * np.std(runs, ddof=1):.1f} |" in report_lib.score_table(table, order)


def test_soft_target_statistics():
    targets = np.array([[0.9, 0.1, 0.0], [0.2, 0.5, 0.3], [1 / 3, 1 / 3, 1 / 3]])
    found = statistics(targets, np.array([0, 2, 1]))
    assert found["gold_probability"] == pytest.approx((0.9 + 0.3 + 1 / 3) / 3)
    assert found["agreement"] == pytest.approx(1 / 3)
    assert found["max_entropy"] == pytest.approx(np.log(3))
    entropy = lambda p: -sum(x * np.log(x) for x in p if x > 0)  # noqa: E731
    assert found["entropy"] == pytest.approx(np.mean([entropy(row) for row in targets]))
