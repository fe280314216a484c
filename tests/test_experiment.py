"""The Python API as the product: ExperimentConfig, Experiment, Keras-native training, models
that predict from raw strings."""

import dataclasses
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import ROOT

import mtkd_tf as mt
from mtkd_tf.config import GROUPS, define_flags

# --- the config -----------------------------------------------------------------------------


def test_every_flag_is_a_config_field_of_the_same_name():
    from absl import flags

    from mtkd_tf import cli

    fields = {field.name for cls in GROUPS.values() for field in dataclasses.fields(cls)}
    fresh = flags.FlagValues()
    define_flags(fresh)
    assert set(fresh) == fields
    assert fields <= set(cli.FLAGS)
    assert "DEFINE" not in open(cli.__file__).read()  # bin/run defines no flag of its own
    for name in fields:  # same default (lists as strings)
        field = next(f for cls in GROUPS.values() for f in dataclasses.fields(cls) if f.name == name)
        default = field.default_factory() if field.default is dataclasses.MISSING else field.default
        assert mt.config.from_flag_value(field, fresh[name].default) == default, name


def test_flagfile_round_trip_and_overrides(tmp_path):
    config = mt.ExperimentConfig.from_flagfile(
        os.path.join(ROOT, "configs/quickstart.cfg"), epochs=1, alpha=0.25, teacher_dropouts=[0.1]
    )
    assert config.data.suite == "moviesuite" and config.model.encoder == "minilm_l6"
    assert config.training.epochs == 1 and config.distillation.alpha == 0.25 and config.runtime.mode == "pipeline"
    assert config.teachers.teacher_dropouts == [0.1]
    assert mt.ExperimentConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    # Flags after the flagfile beat it; typed lists and task:alpha items become Python values.
    flagfile = tmp_path / "x.cfg"
    flagfile.write_text(
        f"--flagfile={ROOT}/configs/tiny.cfg\n--task_alpha=rte:0.7,sst2:0\n--teacher_dropouts=0.05,0.15\n"
    )
    config = mt.ExperimentConfig.from_flagfile(str(flagfile))
    assert config.distillation.task_alpha == {"rte": 0.7, "sst2": 0.0}
    assert config.teachers.teacher_dropouts == [0.05, 0.15] and config.data.tasks == ["sst2", "rte", "stsb"]


def test_config_errors_name_the_setting_and_the_command_line_spells_it_as_a_flag():
    with pytest.raises(mt.ConfigError, match="unknown setting 'epoch'") as error:
        mt.ExperimentConfig().replace(epoch=3)
    with pytest.raises(mt.ConfigError) as error:
        mt.ExperimentConfig().replace(alpha=1.5).validate()
    assert str(error.value) == "alpha must be in [0, 1], got 1.5"
    assert error.value.for_command_line() == "--alpha must be in [0, 1], got 1.5"
    with pytest.raises(mt.ConfigError) as error:
        mt.ExperimentConfig().replace(hidden_loss_weight=0.5).validate()
    assert error.value.for_command_line().startswith("--hidden_loss_weight needs --online_teachers")
    with pytest.raises(mt.ConfigError, match="unknown setting.*colour.*in config group data"):
        mt.ExperimentConfig.from_dict({"data": {"colour": "red"}})
    with pytest.raises(mt.ConfigError, match="model_dir is required"):
        mt.Experiment(mt.ExperimentConfig())
    from mtkd_tf.data.readers import DataError

    assert issubclass(DataError, mt.MtkdError) and issubclass(mt.SoftLabelError, mt.MtkdError)


def test_library_code_reads_no_flags_and_distill_is_the_subpackage():
    listed = subprocess.run(
        ["git", "grep", "-n", "FLAGS", "--", "mtkd_tf/"], capture_output=True, text=True, cwd=ROOT
    ).stdout
    assert [line for line in listed.splitlines() if not line.startswith("mtkd_tf/cli.py")] == []
    assert mt.distill.ensemble.member_specs and mt.distill.distiller.Distiller is mt.Distiller


# --- Keras-native training -------------------------------------------------------------------


class CountEpochs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs, self.batches = [], 0

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(epoch)

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1


def test_plain_keras_fit_on_finite_epochs_with_callbacks(tiny_encoder_factory, glue_dir):
    tasks = [mt.GLUE_TASKS["sst2"], mt.GLUE_TASKS["stsb"]]
    splits = [mt.load_split(task, "train", data_dir=glue_dir).take(40) for task in tasks]
    encoder = tiny_encoder_factory(seed=1)
    preprocessor = mt.Preprocessor(mt.load_tokenizer(encoder.vocabulary), 64)
    config = mt.TrainingConfig(batch_size=8, epochs=2, learning_rate=1e-3, seed=2)
    data = mt.training_data(splits, preprocessor, config)
    assert int(data.dataset.cardinality()) == data.steps_per_epoch == 10
    # Epoch e of the finite dataset is exactly steps e*n .. (e+1)*n of the resumable stream.
    stream = list(data.starting_at(0).take(2 * data.steps_per_epoch))
    epochs = list(data.dataset) + list(data.dataset)
    assert len(epochs) == len(stream)
    for (x1, y1), (x2, y2) in zip(epochs, stream, strict=True):
        np.testing.assert_array_equal(x1["token_ids"].numpy(), x2["token_ids"].numpy())
        np.testing.assert_array_equal(y1["label"].numpy(), y2["label"].numpy())
    data = mt.training_data(splits, preprocessor, config)
    model = mt.MTDNN(encoder.backbone, tasks, preprocessor=preprocessor)
    model.compile(optimizer=mt.make_optimizer(config, data.steps_per_epoch * config.epochs))
    counter = CountEpochs()
    history = model.fit(data.dataset, epochs=2, callbacks=[counter], verbose=0).history
    assert counter.epochs == [0, 1] and counter.batches == 20
    assert set(history) >= {"loss", "sst2_loss", "stsb_loss"}
    assert model.predict_texts("sst2", ["a fine film"])["probabilities"].shape == (1, 2)


def test_progress_lines_in_a_log(caplog):
    import logging
    import time

    clock = mt.RunClock()
    clock.plan(20)
    progress = mt.ProgressLog(
        "student", total_steps=10, start_step=0, batch_size=4, every_seconds=1e-9, clock=clock, lines=True
    )
    with caplog.at_level(logging.INFO, logger="mtkd_tf"):
        progress.on_train_begin()
        for step in range(5):
            time.sleep(0.001)
            progress.on_train_batch_end(step, {"loss": 0.5})
        progress.on_epoch_end(0)
    lines = [r.getMessage() for r in caplog.records]
    assert any(
        "student: step 5/10" in line and "examples/s, loss 0.5000" in line and "left in this stage" in line
        for line in lines
    ), lines
    assert "student: epoch 1 done (step 5/10" in lines[-1] and "left for the run" in lines[-1]
    assert clock.done == 5 and clock.time_left() > 0


def test_models_saved_before_the_task_split_still_load():
    old = {
        "name": "rte",
        "type": "classification",
        "text_columns": ["sentence1", "sentence2"],
        "labels": ["a", "b"],
        "label_column": "label",
        "metrics": ["accuracy"],
        "directory": "RTE",
        "files": {"train": "train.tsv"},
        "header": True,
        "delimiter": "\t",
        "quoting": False,
        "tfds_name": "glue/rte",
        "answer_module": "san",
    }
    task = mt.Task.from_config(old)
    assert task.is_pair and task.answer_module == "san" and task.source is None
    assert "delimiter" not in task.to_config() and "tfds_name" not in task.to_config()


# --- the Experiment -------------------------------------------------------------------------


@pytest.mark.slow
def test_experiment_runs_the_pipeline_and_a_rerun_skips_every_stage(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("MTKD_CACHE", str(tmp_path / "cache"))
    config = mt.ExperimentConfig.from_flagfile(
        os.path.join(ROOT, "configs/tiny.cfg"),
        model_dir=str(tmp_path / "kd"),
        tasks=["sst2", "stsb"],
        num_teachers=2,
        epochs=2,
        teacher_tasks=["sst2"],
        verbose=0,
        max_train_examples=64,
        max_eval_examples=32,
    )
    report = mt.Experiment(config).run()
    assert set(report["results"]) == {"sst2", "stsb"}
    saved = json.load(open(tmp_path / "kd" / "report.json"))
    assert mt.ExperimentConfig.from_dict(saved["config"]) == config
    assert saved["rows"] == ["member_0", "member_1", "ensemble", "baseline", "student"]
    stored = json.load(open(tmp_path / "kd" / "student" / "experiment.json"))
    assert mt.ExperimentConfig.from_dict(stored) == config  # each model directory records its config
    err = capfd.readouterr().err
    for stage in (
        "[1/6] teachers",
        "[2/6] soft_labels",
        "[3/6] student",
        "[4/6] baseline",
        "[5/6] evaluate",
        "[6/6] report",
    ):
        assert stage in err, err[-3000:]
    files = [
        "teachers/member_0/model.keras",
        "teachers/member_1/model.keras",
        "soft_labels/sst2.npz",
        "student/model.keras",
        "baseline/model.keras",
    ]
    before = [os.path.getmtime(tmp_path / "kd" / name) for name in files]
    import logging

    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger("mtkd_tf").addHandler(handler)
    logging.getLogger("mtkd_tf").setLevel(logging.INFO)
    try:
        again = mt.Experiment(config).run()
    finally:
        logging.getLogger("mtkd_tf").removeHandler(handler)
    assert again == report
    assert [os.path.getmtime(tmp_path / "kd" / name) for name in files] == before
    skipped = " | ".join(records)
    for message in (
        "teachers is done, skipping",
        "soft_labels is done, skipping",
        "student is done, skipping",
        "baseline is done, skipping",
    ):
        assert message in skipped, skipped
    assert "member_0" in skipped and "member_1" in skipped  # the skipped stage names its outputs


@pytest.mark.slow
def test_a_saved_model_predicts_raw_strings_in_a_fresh_process(tmp_path, monkeypatch):
    monkeypatch.setenv("MTKD_CACHE", str(tmp_path / "cache"))
    config = mt.ExperimentConfig.from_flagfile(
        os.path.join(ROOT, "configs/tiny.cfg"),
        model_dir=str(tmp_path / "m"),
        tasks=["sst2", "stsb"],
        epochs=1,
        verbose=0,
        max_train_examples=48,
        max_eval_examples=16,
    )
    mt.modes.train(mt.Experiment(config))
    here = mt.load_model(str(tmp_path / "m")).predict_texts("stsb", ["a cat sat"], ["a cat sits"])["score"]
    code = (
        "import json, sys; import mtkd_tf as mt\n"
        f"model = mt.load_model({str(tmp_path / 'm')!r})\n"
        "out = model.predict_texts('sst2', ['a gripping, wonderful film', 'dull and boring'])\n"
        "score = model.predict_texts('stsb', ['a cat sat'], ['a cat sits'])['score']\n"
        "print(json.dumps({'labels': out['label'].tolist(), 'p': out['probabilities'].tolist(),\n"
        "                  's': score.tolist()}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(answer["labels"]) <= {"0", "1"} and len(answer["labels"]) == 2
    np.testing.assert_allclose(np.sum(answer["p"], axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(answer["s"], here, atol=1e-6)


def test_fused_adamax_makes_keras_adamax_updates():
    import tensorflow as tf

    from mtkd_tf.training.train import FusedAdamax

    rng = np.random.default_rng(0)
    start = rng.normal(size=(30, 4)).astype("float32")
    results = {}
    for name, cls in (("keras", keras.optimizers.Adamax), ("fused", FusedAdamax)):
        dense, rows = keras.Variable(start.copy()), keras.Variable(start.copy())
        optimizer = cls(learning_rate=0.01)
        for step in range(4):
            gradient = rng.normal(size=start.shape).astype("float32") if name == "keras" else results["g"][step]
            results.setdefault("g", []).append(gradient) if name == "keras" else None
            sparse = tf.IndexedSlices(tf.constant(gradient[:3]), tf.constant([2, 5, 7]), tf.constant(start.shape))
            optimizer.apply_gradients([(tf.constant(gradient), dense), (sparse, rows)])
        results[name] = (dense.numpy(), rows.numpy())
    for keras_value, fused_value in zip(results["keras"], results["fused"], strict=True):
        assert not np.array_equal(keras_value, start)
        np.testing.assert_allclose(fused_value, keras_value, rtol=0, atol=1e-6)
    config = mt.ExperimentConfig().replace(optimizer="adamax_fused")
    assert isinstance(mt.make_optimizer(config.training, 10), FusedAdamax)
