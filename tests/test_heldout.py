"""The held-out split: carved from training data by id, reproducibly, never trained on."""

import os

import numpy as np
import pytest

import mtkd_tf as mt
from conftest import ROOT
from mtkd_tf.data.split import HELDOUT, DataError, SplitData, carve
from mtkd_tf.tasks import Task


def _data(count, groups=None):
    task = Task("t", "classification", labels=("a", "b"))
    return SplitData(task, "train", [f"t/train/{i}" for i in range(count)], [f"text {i}" for i in range(count)],
                     labels=np.arange(count) % 2, groups=groups)


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
    config = mt.ExperimentConfig.from_flagfile(os.path.join(ROOT, "configs/tiny.cfg"), model_dir=str(tmp_path / "kd"), heldout_examples=30,
                                               max_train_examples=100)
    experiment = mt.Experiment(config)
    for task, data in experiment.train_data.items():
        held = experiment.heldout_data[task][HELDOUT]
        assert len(held) == 30 and len(data) == 100 and held.labels is not None
        assert not set(held.ids) & set(data.ids)
    plain = mt.Experiment(config.replace(heldout_examples=0, model_dir=str(tmp_path / "b")))
    assert plain.heldout_data == {}
    assert len(plain.train_data["sst2"]) == 100
