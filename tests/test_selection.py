"""Dev-based selection: the epoch kept is the dev curve's first maximum, early stopping waits
`patience` epochs, and a run killed between its best epoch and its stop resumes exactly."""

import json
import os

import keras
import numpy as np
import pytest
from conftest import ROOT, Crash, CrashAt

import mtkd_tf as mt
from mtkd_tf.config import TrainingConfig
from mtkd_tf.data.preprocessing import Preprocessor, load_tokenizer
from mtkd_tf.data.tasks import GLUE_TASKS
from mtkd_tf.models import evaluation
from mtkd_tf.models import model_dir as model_dir_lib
from mtkd_tf.models.mtdnn import MTDNN
from mtkd_tf.training import train as training
from mtkd_tf.training.selection import DevSelection, selection_splits

TASKS = [GLUE_TASKS["rte"], GLUE_TASKS["stsb"]]


def first_maximum(curve: dict) -> int:
    """The epoch a correct selection keeps, computed independently: the earliest of the best."""
    epochs = sorted(int(epoch) for epoch in curve)
    best = max(curve[str(epoch)] for epoch in epochs)
    return next(epoch for epoch in epochs if curve[str(epoch)] == best)


class Scripted(DevSelection):
    """Dev scores read from a script by epoch (1-based), so the decisions are known in advance."""

    def __init__(self, scores, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.scores, self.scored = scores, []

    def score(self):
        number = len(self.curve) + 1
        self.scored.append(number)
        return self.scores[number - 1]


@pytest.fixture(scope="module")
def make_model(tiny_encoder_factory):
    def make(seed=5):
        keras.utils.set_random_seed(seed)
        encoder = tiny_encoder_factory(seed=seed)
        return MTDNN(encoder.backbone, TASKS), Preprocessor(load_tokenizer(encoder.vocabulary), 64)

    return make


SCORES = [0.50, 0.70, 0.70, 0.60, 0.90]  # best at 2 (3 ties: the earlier stays), stop after 4 with patience 2
CONFIG = TrainingConfig(batch_size=8, epochs=5, learning_rate=1e-3, seed=3, verbose=0, checkpoint_every_steps=4)


def _train(make_model, splits, work_dir, callbacks=()):
    model, preprocessor = make_model()
    data = training.training_data(splits, preprocessor, CONFIG)
    model.compile(optimizer=training.make_optimizer(CONFIG, data.steps_per_epoch * CONFIG.epochs))
    selection = Scripted(SCORES, model, {}, os.path.join(work_dir, "backup", "best"), patience=2)
    training.fit(model, data, CONFIG, str(work_dir), callbacks=callbacks, selection=selection)
    return model, selection, data


def test_ties_go_to_the_earlier_epoch_and_patience_stops_training(make_model, splits, tmp_path):
    model, selection, data = _train(make_model, splits, tmp_path)
    assert selection.scored == [1, 2, 3, 4]  # epoch 5 never trained
    assert selection.best_epoch == 2 and selection.waited == 2
    assert "2 epoch(s) without improvement on dev after epoch 2" in selection.stopped
    history = json.loads((tmp_path / "history.json").read_text())
    assert [row["epoch"] for row in history] == [0, 1, 2, 3]
    assert [row["dev_score"] for row in history] == SCORES[:4]
    best = keras.models.clone_model(model)
    best.load_weights(str(tmp_path / "backup" / "best" / "epoch_2.weights.h5"))
    record = selection.finish(CONFIG.epochs)
    assert record["kept_epoch"] == first_maximum(record["dev_curve"]) == 2
    for a, b in zip(best.get_weights(), model.get_weights(), strict=True):
        assert np.array_equal(a, b)  # the model now holds epoch 2's weights


def test_a_run_killed_after_its_best_epoch_and_before_stopping_resumes_exactly(make_model, splits, tmp_path):
    reference, selection, data = _train(make_model, splits, tmp_path / "reference")
    kept = selection.finish(CONFIG.epochs)
    per_epoch = data.steps_per_epoch
    crash = 2 * per_epoch + per_epoch // 2 + 1  # in epoch 3: after the best epoch (2), before the stop (4)
    with pytest.raises(Crash):
        _train(make_model, splits, tmp_path / "run", callbacks=[CrashAt(crash)])
    resumed, again, _ = _train(make_model, splits, tmp_path / "run")
    assert again.scored == [3, 4]  # epochs 1-2 came from the checkpoint, with their scores
    timing = lambda record: {key: value for key, value in record.items() if key != "dev_seconds"}  # noqa: E731
    assert timing(again.finish(CONFIG.epochs)) == timing(kept)
    for a, b in zip(reference.get_weights(), resumed.get_weights(), strict=True):
        assert np.array_equal(a, b)


@pytest.mark.slow
def test_a_trained_model_records_its_selection_and_keeps_the_best_epoch(tmp_path, monkeypatch):
    monkeypatch.setenv("MTKD_CACHE", str(tmp_path / "cache"))
    config = mt.ExperimentConfig.from_flagfile(
        os.path.join(ROOT, "configs/tiny.cfg"),
        model_dir=str(tmp_path / "m"),
        tasks=["sst2", "stsb"],
        epochs=3,
        verbose=0,
        mode="train",
        select_best_on_dev=True,  # tiny.cfg turns it off for speed
    )
    experiment = mt.Experiment(config)
    mt.modes.train(experiment)
    record = model_dir_lib.settings(str(tmp_path / "m"))["selection"]
    assert set(record) >= {"kept_epoch", "dev_curve", "stopped"}
    assert sorted(record["dev_curve"]) == ["1", "2", "3"] and record["stopped"] == "trained the maximum 3 epoch(s)"
    assert record["kept_epoch"] == first_maximum(record["dev_curve"])
    limits = {name: len(experiment.data.train[name]) // 4 for name in ("sst2", "stsb")}  # a quarter of training
    splits = selection_splits(experiment.data.dev, ["sst2", "stsb"], config.training.selection_examples, limits)
    results = evaluation.evaluate(mt.load_model(str(tmp_path / "m")), splits)
    score = np.mean([next(iter(metrics.values())) for metrics in results.values()])
    assert score == pytest.approx(record["dev_curve"][str(record["kept_epoch"])], abs=1e-6)


def test_selection_is_off_without_labelled_dev_data_and_with_the_flag():
    settings = TrainingConfig()
    assert settings.select_best_on_dev  # the library's default (docs/protocol.md says why)
    model = object()
    assert training.dev_selection(settings, model, {"rte": 48}, None, "/nowhere", 8) is None
    assert training.dev_selection(TrainingConfig(select_best_on_dev=False), model, {"rte": 48}, {}, "/x", 8) is None


def test_the_selection_subset_is_fixed_by_id_and_capped(splits):
    dev = {"rte": {"dev": splits[0]}, "stsb": {"dev": splits[1]}}
    only = lambda found, task: next(iter(found[task].values()))  # noqa: E731
    chosen = selection_splits(dev, ["rte"], 10)
    assert list(chosen) == ["rte"] and len(only(chosen, "rte")) == 10
    shuffled = {"rte": {"dev": splits[0].select(np.random.default_rng(0).permutation(len(splits[0])))}}
    assert set(only(selection_splits(shuffled, ["rte"], 10), "rte").ids) == set(only(chosen, "rte").ids)
    assert only(selection_splits(dev, ["rte", "stsb"], 0), "stsb") is splits[1]  # 0: all of dev
    capped = selection_splits(dev, ["rte", "stsb"], 10, {"rte": 4})  # a quarter of 16 training examples
    assert len(only(capped, "rte")) == 4 and len(only(capped, "stsb")) == 10
    assert set(only(capped, "rte").ids) <= set(only(chosen, "rte").ids)  # the smaller subset is within the larger
