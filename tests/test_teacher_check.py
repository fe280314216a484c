"""The teacher check (issue #40): a member that did not converge leaves its task's ensemble, and a
task whose teachers cannot teach it trains on its hard labels alone under `skip`."""

import dataclasses
import json
import os

import numpy as np
import pytest
from conftest import ROOT

import mtkd_tf as mt
from mtkd_tf.data.tasks import GLUE_TASKS
from mtkd_tf.distill import teacher_check as tc
from mtkd_tf.distill.soft_labels import read as read_soft_labels
from mtkd_tf.experiment import recipes
from mtkd_tf.training.train import train_model

# --- the rules, on numbers ------------------------------------------------------------------------


def test_did_not_converge_is_near_the_trivial_predictor_or_far_below_the_best_member():
    # issue #40's quickstart trec: a member at the majority class's share (21.0) beside a 72.0
    assert "trivial predictor (21.0)" in tc.did_not_converge(23.0, 21.0, 72.0)
    assert "trivial predictor" in tc.did_not_converge(19.0, 21.0, 72.0)  # below it
    assert tc.did_not_converge(23.1, 21.0, 38.0) is None  # 2.1 above trivial, 14.9 below the best
    # sms F1 21.9 against 87.9: F1's trivial is 0, but it is 66 points below the best member
    assert "66.0 points below the best member (87.9" in tc.did_not_converge(21.9, 0.0, 87.9)
    assert tc.did_not_converge(72.9, 0.0, 87.9) is None  # exactly 15 below: kept
    assert tc.did_not_converge(50.0, None, 60.0) is None  # trivial unknown: only the distance counts


def test_the_trivial_predictor_per_metric():
    sst2, stsb = GLUE_TASKS["sst2"], GLUE_TASKS["stsb"]
    assert tc.trivial_score(sst2, "accuracy", np.array([1, 1, 1, 0])) == 75.0
    assert tc.trivial_score(GLUE_TASKS["mrpc"], "f1", np.array([1, 0])) == 0.0
    assert tc.trivial_score(GLUE_TASKS["cola"], "matthews_corr", np.array([1, 0])) == 0.0
    assert tc.trivial_score(stsb, "pearson", np.array([0.5, 2.0])) == tc.TRIVIAL_CORRELATION


def _members(scores, trivial=20.0, mode="skip"):
    return tc.check_members("trec", "accuracy", mode, {f"/t/member_{k}": s for k, s in enumerate(scores)}, trivial)


def test_rule_1_drops_and_names_unconverged_members_and_a_task_with_none_has_no_ensemble():
    found = _members([72.0, 60.0, 23.0], trivial=21.0)
    assert found.kept == ["/t/member_0", "/t/member_1"]
    dropped = [m for m in found.members if not m["kept"]]
    assert [(m["name"], m["score"]) for m in dropped] == [("member_2", 23.0)]
    assert "trivial predictor" in dropped[0]["reason"] and not found.failures
    found = _members([72.0, 56.0, 50.0])
    assert [m["kept"] for m in found.members] == [True, False, False]  # 16 and 22 below the best
    found = _members([21.0, 20.5])
    assert found.kept == [] and found.failures == ["no member converged: the task has no ensemble"]
    assert found.decision == tc.SKIPPED and not found.distilled
    assert found.teachers() == ["/t/member_0", "/t/member_1"]  # warn distils from all of them
    assert _members([21.0, 20.5], mode="warn").decision == tc.WARNED


def test_rule_2_the_ensemble_against_its_mean_member():
    found = _members([60.0, 58.0])
    tc.check_ensemble(found, 58.5, {"accuracy": 58.5})  # mean 59.0: 0.5 below, within the margin
    assert found.reference == {"name": "mean kept member", "score": 59.0} and not found.failures
    found = _members([60.0, 58.0])
    tc.check_ensemble(found, 57.9, {"accuracy": 57.9})
    assert found.failures == ["the ensemble's 57.9 is more than 1 point(s) below its mean member's 59.0"]


def test_rule_3_catches_the_quickstart_trec_targets():
    # docs/protocol.md's worked example: 6 classes, ensemble dev accuracy 0.558, mean p(gold) 0.272
    trec = dataclasses.replace(GLUE_TASKS["sst2"], name="trec", labels=tuple("abcdef"))
    found = _members([56.0, 55.0])
    tc.check_ensemble(found, 55.8, {"accuracy": 55.8})
    tc.check_targets(found, trec, {"gold_probability": 0.272, "chance": 1 / 6})
    assert found.thresholds["gold_probability"] == pytest.approx(1 / 6 + 0.5 * (0.558 - 1 / 6))
    assert "mean p(gold) on the training examples is 0.272, below 0.362" in found.failures[0]
    found = _members([56.0, 55.0])
    tc.check_ensemble(found, 55.8, {"accuracy": 55.8})
    tc.check_targets(found, trec, {"gold_probability": 0.40, "chance": 1 / 6})
    assert found.decision == tc.PASSED


def test_rule_3_for_regression_and_the_statistics_it_reads():
    stsb = GLUE_TASKS["stsb"]
    found = _members([80.0, 78.0])
    tc.check_ensemble(found, 79.0, {"pearson": 79.0})
    labels = np.linspace(0, 5, 50)
    noisy = labels + 20 * np.cos(np.arange(50) * 2.0)  # mostly a pattern unrelated to the labels
    information = tc.target_information(stsb, noisy, labels)
    assert information["correlation"] == pytest.approx(100 * np.corrcoef(labels, noisy)[0, 1])
    assert information["correlation"] < 39.5
    tc.check_targets(found, stsb, information)
    assert found.thresholds["correlation"] == 39.5 and "correlates" in found.failures[0]
    uniform = np.full((4, 2), 0.5)
    stats = tc.target_information(GLUE_TASKS["sst2"], uniform, np.array([0, 1, 1, 0]))
    assert stats["gold_probability"] == 0.5 and stats["chance"] == 0.5


def test_the_recorded_check_round_trips_and_says_what_the_student_learns(tmp_path):
    kept = _members([72.0, 70.0, 23.0])
    tc.check_ensemble(kept, 73.0, {"accuracy": 73.0})
    failed = tc.check_members("rte", "accuracy", "skip", {"/t/member_0": 50.0, "/t/member_1": 49.0}, 50.0)
    path = str(tmp_path / "teacher_check.json")
    tc.write_checks(path, "skip", {"trec": kept, "rte": failed})
    recorded = json.load(open(path))
    assert recorded["mode"] == "skip" and recorded["tasks"]["trec"]["decision"] == tc.PASSED
    assert recorded["tasks"]["trec"]["kept"] == ["/t/member_0", "/t/member_1"]
    assert tc.read_checks(path)["trec"] == kept
    assert tc.distilled_tasks(path, ["trec", "rte", "sst2"]) == ["trec", "sst2"]  # sst2: not checked there
    assert tc.kept_dirs(path, ["/t/member_0", "/t/member_1", "/t/member_2"]) == ["/t/member_0", "/t/member_1"]
    assert tc.read_checks(str(tmp_path / "missing.json")) is None
    assert tc.distilled_tasks(str(tmp_path / "missing.json"), ["rte"]) == ["rte"]


# --- inside the pipeline ----------------------------------------------------------------------------


def _config(root, **overrides):
    settings = dict(
        model_dir=str(root),
        tasks=["sst2", "stsb"],
        teacher_tasks=["sst2"],
        epochs=3,
        verbose=0,
        max_train_examples=96,
        max_eval_examples=48,
        select_best_on_dev=True,
        teacher_check="skip",
    )
    return mt.ExperimentConfig.from_flagfile(os.path.join(ROOT, "configs/tiny.cfg"), **{**settings, **overrides})


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Two members trained on sst2 and stsb, and one whose sst2 labels were all one class: it
    learnt the trivial predictor (the "member trained 0 steps" of issue #40's test)."""
    root = tmp_path_factory.mktemp("teachers")
    os.environ.setdefault("MTKD_CACHE", str(tmp_path_factory.mktemp("cache")))
    experiment = mt.Experiment(_config(root / "data", max_train_examples=0))  # all 200 sst2 examples
    train, ctx = experiment.data.train, experiment.ctx
    dirs = []
    for k in range(3):
        sst2 = train["sst2"]
        if k == 2:
            sst2 = dataclasses.replace(sst2, labels=np.ones_like(sst2.labels))
        directory = str(root / f"member_{k}")
        # every epoch kept (no dev selection): confident members, whose targets pass rule 3
        config = ctx.config.replace(seed=10 + k, epochs=7 if k < 2 else 1, select_best_on_dev=False)
        with ctx.strategy.scope():  # sst2 alone: the teacher task
            train_model(
                config,
                directory,
                {"sst2": sst2},
                tasks=[sst2.task],
                encoder=ctx.encoder("tiny", 0.1, 10 + k),
                dev=experiment.data.dev,
                label=f"member_{k}",
            )
        dirs.append(directory)
    return dirs


@pytest.mark.slow
def test_skip_drops_the_unconverged_member_and_distils_from_the_rest(teachers, tmp_path):
    experiment = mt.Experiment(_config(tmp_path / "kd", teacher_dirs=teachers))
    experiment.soft_labels()
    check = json.load(open(tmp_path / "kd" / "soft_labels" / "teacher_check.json"))["tasks"]["sst2"]
    scores = {m["name"]: m["score"] for m in check["members"]}
    assert check["kept"] == teachers[:2], check
    assert "trivial predictor" in check["members"][2]["reason"] or "below the best" in check["members"][2]["reason"]
    assert check["decision"] == tc.PASSED, check["decision"]
    assert check["reference"]["score"] == pytest.approx(np.mean([scores["member_0"], scores["member_1"]]))
    assert check["targets"]["gold_probability"] >= check["thresholds"]["gold_probability"]
    soft = read_soft_labels(os.path.join(tmp_path / "kd" / "soft_labels", "sst2.npz"))
    assert soft.metadata["teachers"] == [os.path.abspath(d) for d in teachers[:2]]  # without member_2
    experiment.student()
    history = json.load(open(tmp_path / "kd" / "student" / "history.json"))
    assert all(row["sst2_soft"] > 0 for row in history)  # sst2 is distilled
    # a re-run finds the stage done (same mode, same teachers)
    assert experiment.ctx.config.teachers.teacher_check == "skip"
    from mtkd_tf.experiment.stages import SoftLabels

    assert SoftLabels(experiment.ctx).done()
    assert not SoftLabels(
        mt.Experiment(_config(tmp_path / "kd", teacher_dirs=teachers, teacher_check="warn")).ctx
    ).done()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["skip", "warn"])
def test_near_uniform_targets_fail_the_check_and_skip_trains_the_task_on_hard_labels(teachers, tmp_path, mode):
    # temperature 30 flattens the members' probabilities on the training examples to near 0.5
    experiment = mt.Experiment(_config(tmp_path / "kd", teacher_dirs=teachers, temperature=30.0, teacher_check=mode))
    made = recipes.check_teachers(experiment.ctx, experiment.ctx.teachers.by_task(), experiment.layout.soft_labels_dir)
    check = tc.read_checks(experiment.layout.teacher_check_file(experiment.layout.soft_labels_dir))["sst2"]
    assert list(made) == ["sst2"] and check.kept == teachers[:2]
    assert check.targets["gold_probability"] < 0.55 < check.thresholds["gold_probability"]
    assert "mean p(gold)" in check.failures[0]
    assert check.decision == (tc.SKIPPED if mode == "skip" else tc.WARNED)
    experiment.student()
    history = json.load(open(tmp_path / "kd" / "student" / "history.json"))
    if mode == "skip":  # hard labels only: sst2's loss is the plain one, no soft part
        assert all(row["sst2_soft"] == 0 and row["soft_loss"] == 0 for row in history)
    else:
        assert all(row["sst2_soft"] > 0 for row in history)
