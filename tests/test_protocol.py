"""The paper's protocol in the Experiment: a teacher pool with selection, per-task fine-tuning,
per-task ensembles, and the fine-tuned student and baseline in the report."""

import json
import os

import numpy as np
import pytest
from conftest import ROOT

import mtkd_tf as mt
from mtkd_tf.distill import ensemble, soft_labels
from mtkd_tf.experiment.significance import SEED_METHOD
from mtkd_tf.models import model_dir
from mtkd_tf.training.finetune import finetune_seed


def _config(tmp_path, **changes):
    settings = dict(
        model_dir=str(tmp_path / "kd"),
        tasks=["sst2", "rte"],
        teacher_tasks=["sst2"],
        num_teachers=2,
        teacher_pool=3,
        teacher_selection_tasks=["rte"],
        finetune_epochs=1,
        epochs=1,
        verbose=0,
        max_train_examples=48,
        max_eval_examples=24,
        soft_labels_precision="float32",
    )
    settings.update(changes)
    return mt.ExperimentConfig.from_flagfile(os.path.join(ROOT, "configs/tiny.cfg"), **settings)


@pytest.mark.slow
def test_pool_selection_finetuned_per_task_ensembles_and_finetuned_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("MTKD_CACHE", str(tmp_path / "cache"))
    experiment = mt.Experiment(_config(tmp_path))
    experiment.run()
    root = tmp_path / "kd"
    selection = json.load(open(root / "teachers" / "selection.json"))
    scores = {name: entry["mean"] for name, entry in selection["candidates"].items()}
    assert set(scores) == {"member_0", "member_1", "member_2"} and selection["selection_tasks"] == ["rte"]
    # each candidate scored here on rte dev, independently of the selection code
    dev = experiment.data.dev["rte"]["dev"]
    own = {
        name: float(
            np.mean(
                model_dir.load(str(root / "teachers" / name)).predict_texts("rte", dev.text_a, dev.text_b)["label_id"]
                == dev.labels
            )
        )
        for name in scores
    }
    assert own == pytest.approx(scores)
    best = sorted(own, key=lambda name: -own[name])[:2]
    assert sorted(selection["chosen"]) == sorted(best)  # the best K by dev score
    assert [os.path.basename(d) for d in experiment.ctx.teachers.dirs()] == selection["chosen"]
    # soft targets of sst2 = the mean of the sst2-fine-tuned chosen members' probabilities
    finetuned = [str(root / "teachers" / "finetuned" / "sst2" / name) for name in selection["chosen"]]
    assert experiment.ctx.teachers.by_task() == {"sst2": finetuned}
    train = experiment.data.train["sst2"]
    expected = np.mean([ensemble.member_targets(model_dir.load(d), train) for d in finetuned], axis=0)
    stored = soft_labels.read(soft_labels.path_for(str(root / "soft_labels"), "sst2"))
    np.testing.assert_allclose(soft_labels.align(stored, train.task, train), expected, atol=1e-5)
    assert stored.metadata["teachers"] == finetuned
    # the fine-tuned student and baseline are rows of their own, compared in the report
    saved = json.load(open(root / "report.json"))
    assert saved["rows"][-2:] == ["baseline_ft", "student_ft"]
    assert set(saved["results"]["rte"]["accuracy"]) >= {"baseline_ft", "student_ft", "member_0", "ensemble"}
    assert "student_ft - baseline_ft" in saved["intervals"]["sst2"]
    assert any(claim["key"] == "student_ft_vs_baseline_ft" for claim in saved["claims"])
    # every model directory records the seed it trained with; each fine-tuned member has its own
    recorded = lambda path: json.load(open(root / path / "experiment.json"))["training"]["seed"]  # noqa: E731
    for name in scores:
        assert recorded(f"teachers/{name}") == 1000 * (int(name.split("_")[1]) + 1)  # seed + 1000 (k + 1), seed 0
    seeds = [recorded(f"teachers/finetuned/sst2/{name}") for name in selection["chosen"]]  # sst2: the teacher task
    assert len(set(seeds)) == len(seeds)  # members of one task's ensemble never share a seed
    assert seeds == [finetune_seed(recorded(f"teachers/{name}"), "sst2") for name in selection["chosen"]]
    assert recorded("student-finetuned/rte") == finetune_seed(0, "rte") != recorded("student-finetuned/sst2")
    assert saved["teacher_selection"]["chosen"] == selection["chosen"]
    assert "Teacher selection on rte dev" in open(root / "report.md").read()
    for task in ("sst2", "rte"):
        assert model_dir.exists(str(root / f"student-finetuned/{task}")) and model_dir.exists(
            str(root / f"baseline-finetuned/{task}")
        )
    assert model_dir.load(str(root / "student-finetuned/rte")).predict_texts("rte", ["a b"], ["c d"])[
        "label"
    ].shape == (1,)


def test_bad_protocol_settings_fail_before_any_training(tmp_path, monkeypatch):
    monkeypatch.setenv("MTKD_CACHE", str(tmp_path / "cache"))
    with pytest.raises(mt.ConfigError, match="teacher_pool 1 is smaller than num_teachers 2"):
        mt.Experiment(_config(tmp_path, teacher_pool=1))
    with pytest.raises(mt.ConfigError, match="finetune_tasks: task.s. cola are not trained"):
        mt.Experiment(_config(tmp_path, finetune_tasks=["cola"])).validate()
    assert not os.path.exists(tmp_path / "kd" / "teachers")


@pytest.mark.slow
def test_seeds_and_the_variants_beyond_the_paper_are_rows_of_one_report(tmp_path, monkeypatch):
    monkeypatch.setenv("MTKD_CACHE", str(tmp_path / "cache"))
    config = _config(
        tmp_path,
        num_teachers=1,
        teacher_pool=0,
        finetune_epochs=0,
        seeds=2,
        compare_anneal=True,
        self_distill_rounds=1,
        teacher_epochs=2,
        heldout_examples=16,
    )
    experiment = mt.Experiment(config)
    experiment.run()
    root = tmp_path / "kd"
    saved = json.load(open(root / "report.json"))
    assert saved["rows"] == [
        "member_0",
        "ensemble",
        "baseline",
        "baseline_s2",
        "baseline_mean",
        "student",
        "student_s2",
        "student_mean",
        "student_anneal",
        "student_r1",
    ]
    values = saved["results"]["rte"]["accuracy"]
    for name in ("student", "baseline"):  # two runs of each, with their mean and sd
        runs = [values[name], values[f"{name}_s2"]]
        assert values[f"{name}_mean"] == pytest.approx(np.mean(runs))
        assert values[f"{name}_sd"] == pytest.approx(np.std(runs, ddof=1))
    # the second seed really is another run: its own seed and weights
    first, second = model_dir.load(str(root / "student")), model_dir.load(str(root / "student_s2"))
    assert json.load(open(root / "student_s2" / "experiment.json"))["training"]["seed"] == 1
    assert json.load(open(root / "student_anneal" / "experiment.json"))["distillation"]["alpha_schedule"] == "anneal"
    assert not all(np.array_equal(a, b) for a, b in zip(first.get_weights(), second.get_weights(), strict=True))
    assert {"student - baseline", "student_anneal - student", "student_r1 - student"} <= set(saved["intervals"]["rte"])
    beats = next(c for c in saved["claims"] if c["key"] == "student_vs_baseline" and c["task"] == "sst2")
    assert beats["method"] == SEED_METHOD and beats["seeds"] == [2, 2] and beats["split"] == "heldout"
    assert saved["heldout"]["sst2"]["examples"] == 16 and set(saved["results_heldout"]) == {"sst2", "rte"}
    annealed = next(c for c in saved["claims"] if c["key"] == "student_anneal_vs_student")
    assert annealed["verdict"] == "untested"
    # round 1 learns from the student alone, through its own soft labels
    stored = soft_labels.read(soft_labels.path_for(str(root / "soft_labels_r1"), "sst2"))
    assert stored.metadata["teachers"] == [str(root / "student")]
    assert "student_mean: mean ± sd over 2 seeds" in open(root / "report.md").read()
    # teachers train their own number of epochs (the quickstart gives them one more than the student)
    epochs = {name: len(json.load(open(root / name / "history.json"))) for name in ("teachers/member_0", "student")}
    assert epochs == {"teachers/member_0": 2, "student": 1}


def test_seeds_below_one_fail_before_any_training(tmp_path, monkeypatch):
    monkeypatch.setenv("MTKD_CACHE", str(tmp_path / "cache"))
    with pytest.raises(mt.ConfigError, match="seeds must be >= 1, got 0"):
        mt.Experiment(_config(tmp_path, seeds=0))
    with pytest.raises(mt.ConfigError, match="compare_anneal .* alpha_schedule is already anneal"):
        mt.Experiment(_config(tmp_path, compare_anneal=True, alpha_schedule="anneal"))
    assert not os.path.exists(tmp_path / "kd")


@pytest.mark.slow
def test_the_gate_stops_before_any_student_when_the_ensemble_does_not_beat_the_baseline(tmp_path, monkeypatch):
    monkeypatch.setenv("MTKD_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "kd"
    closed = mt.Experiment(_config(tmp_path, teacher_pool=0, finetune_epochs=0, gate_margin=1000.0)).run()
    assert closed["verdict"] == "untestable" and closed["claims"] == []
    assert not os.path.exists(root / "student") and not os.path.exists(root / "soft_labels")
    assert "untestable" in open(root / "report.md").read()
    gate = json.load(open(root / "gate.json"))
    assert gate["open"] is False and gate["margin"] == 1000.0
    # the gate's scores, recomputed here from predict_texts: sst2 dev accuracy x100 of the
    # members' averaged probabilities and of baseline run 0
    dev = mt.Experiment(_config(tmp_path)).data.dev["sst2"]["dev"]
    members = [model_dir.load(str(root / "teachers" / f"member_{k}")) for k in range(2)]
    mean = np.mean([m.predict_texts("sst2", dev.text_a)["probabilities"] for m in members], axis=0)
    baseline = model_dir.load(str(root / "baseline")).predict_texts("sst2", dev.text_a)["label_id"]
    expected = {
        "ensemble": 100 * np.mean(mean.argmax(-1) == dev.labels),
        "baseline": 100 * np.mean(baseline == dev.labels),
    }
    assert gate["scores"]["sst2"] == pytest.approx(expected)
    assert gate["gain"] == pytest.approx(expected["ensemble"] - expected["baseline"])
    # a margin the ensemble clears opens the gate: the run resumes (teachers and baseline reused)
    stamp = os.path.getmtime(root / "baseline" / "experiment.json")
    report = mt.Experiment(_config(tmp_path, teacher_pool=0, finetune_epochs=0, gate_margin=-1000.0)).run()
    assert report["gate"]["open"] is True and "student" in report["rows"]
    assert os.path.getmtime(root / "baseline" / "experiment.json") == stamp
    assert "Gate (before any student trained)" in open(root / "report.md").read()
    with pytest.raises(mt.ConfigError, match="gate_margin .* needs train_baseline"):
        mt.Experiment(_config(tmp_path, gate_margin=1.0, train_baseline=False))
