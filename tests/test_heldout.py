"""The held-out split: carved from training data by id, reproducibly, never trained on."""

import os

import numpy as np
import pytest
from conftest import ROOT

import mtkd_tf as mt
from mtkd_tf.data.split import HELDOUT, DataError, SplitData, carve, keep_labels
from mtkd_tf.data.tasks import Task


def _data(count, groups=None):
    task = Task("t", "classification", labels=("a", "b"))
    return SplitData(
        task,
        "train",
        [f"t/train/{i}" for i in range(count)],
        [f"text {i}" for i in range(count)],
        labels=np.arange(count) % 2,
        groups=groups,
    )


def test_the_heldout_split_is_chosen_by_id_whatever_the_order():
    data = _data(100)
    rest, held = carve(data, 20)
    assert len(held) == 20 and len(rest) == 80 and held.split == HELDOUT and rest.split == "train"
    assert not set(held.ids) & set(rest.ids) and set(held.ids) | set(rest.ids) == set(data.ids)
    shuffled = data.select(np.random.default_rng(0).permutation(100))
    assert set(carve(shuffled, 20)[1].ids) == set(held.ids)  # the same examples, whatever the row order
    assert rest.ids == [i for i in data.ids if i not in set(held.ids)]  # the rest keeps its order
    assert [held.text_a[i] for i in range(3)] == [data.text_a[data.ids.index(j)] for j in held.ids[:3]]


def test_ranking_questions_stay_whole_and_a_too_large_heldout_split_is_refused():
    groups = np.repeat(np.arange(25), 4)
    rest, held = carve(_data(100, groups), 5)
    assert len(held) == 20 and len(np.unique(held.groups)) == 5
    assert not set(held.groups) & set(rest.groups)
    with pytest.raises(DataError, match="cannot set 60 of its 100 training examples aside"):
        carve(_data(100), 60)


def test_an_experiment_trains_without_its_heldout_examples(tmp_path, monkeypatch):
    monkeypatch.setenv("MTKD_CACHE", str(tmp_path / "cache"))
    config = mt.ExperimentConfig.from_flagfile(
        os.path.join(ROOT, "configs/tiny.cfg"),
        model_dir=str(tmp_path / "kd"),
        heldout_examples=30,
        max_train_examples=100,
    )
    experiment = mt.Experiment(config)
    for task, data in experiment.data.train.items():
        held = experiment.data.heldout[task][HELDOUT]
        assert len(held) == 30 and len(data) == 100 and held.labels is not None
        assert not set(held.ids) & set(data.ids)
    plain = mt.Experiment(config.replace(heldout_examples=0, model_dir=str(tmp_path / "b")))
    assert plain.data.heldout == {}
    assert len(plain.data.train["sst2"]) == 100


def test_a_labelled_fraction_keeps_labels_by_id_and_the_rest_become_unlabelled_text():
    data = _data(100)
    labelled, rest = keep_labels(data, 0.1)
    assert len(labelled) == 10 and len(rest) == 90 and rest.labels is None and rest.split == "unlabelled"
    assert not set(labelled.ids) & set(rest.ids) and set(labelled.ids) | set(rest.ids) == set(data.ids)
    shuffled = data.select(np.random.default_rng(1).permutation(100))
    assert set(keep_labels(shuffled, 0.1)[0].ids) == set(labelled.ids)  # by id, whatever the order
    assert set(labelled.ids) != set(carve(data, 10)[1].ids)  # its own hash, not the held-out split's
    grouped = keep_labels(_data(100, np.repeat(np.arange(25), 4)), 0.2)[0]
    assert len(grouped) == 20 and len(np.unique(grouped.groups)) == 5  # ranking: whole questions


def test_an_experiment_with_a_labelled_fraction_labels_only_the_teacher_tasks_part(tmp_path, monkeypatch):
    monkeypatch.setenv("MTKD_CACHE", str(tmp_path / "cache"))
    config = mt.ExperimentConfig.from_flagfile(
        os.path.join(ROOT, "configs/tiny.cfg"),
        model_dir=str(tmp_path / "kd"),
        heldout_examples=20,
        max_train_examples=100,
        labelled_fraction=0.25,
        teacher_tasks=["sst2"],
    )
    experiment = mt.Experiment(config)
    train, unlabelled = experiment.data.train, experiment.data.unlabelled
    assert len(train["sst2"]) == 25 and len(unlabelled["sst2"]) == 75 and unlabelled["sst2"].labels is None
    assert len(train["rte"]) == 100 and "rte" not in unlabelled  # tasks without a teacher keep every label
    held = experiment.data.heldout["sst2"][HELDOUT]
    assert not set(held.ids) & (set(train["sst2"].ids) | set(unlabelled["sst2"].ids))
    # the teachers label both parts; the student's data holds both, the baseline's the labelled part
    assert [len(d) for d in experiment.data.soft_label_data()["sst2"]] == [25, 75]
    assert experiment.ctx.steps(1, extra=True) - experiment.ctx.steps(1) == 7 - 2  # sst2: 100 / 16 vs 25 / 16 batches
    with pytest.raises(mt.ConfigError, match="labelled_fraction must be >= 0.001"):
        config.replace(labelled_fraction=0.0)
