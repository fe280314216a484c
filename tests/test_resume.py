"""Reliability: resuming after a crash, rejecting damaged state, stopping on NaN, determinism."""

import glob
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from child_runs import Child
from conftest import ROOT, Crash, CrashAt

from mtkd_tf.config import TrainingConfig
from mtkd_tf.data.preprocessing import Preprocessor, load_tokenizer
from mtkd_tf.data.tasks import GLUE_TASKS
from mtkd_tf.distill import ensemble
from mtkd_tf.distill import soft_labels as soft_labels_lib
from mtkd_tf.distill.distiller import Distiller, distillation_targets, soft_width
from mtkd_tf.models import model_dir
from mtkd_tf.models.mtdnn import MTDNN
from mtkd_tf.training import checkpointing
from mtkd_tf.training import train as training
from mtkd_tf.training.checkpointing import CheckpointError, NumericalError, TrainingState

TASKS = [GLUE_TASKS["rte"], GLUE_TASKS["stsb"]]  # rte has the SAN head: its step dropout draws RNG too
CONFIG = TrainingConfig(batch_size=8, epochs=2, learning_rate=1e-3, seed=3, verbose=0, checkpoint_every_steps=4)


@pytest.fixture(scope="module")
def make_model(tiny_encoder_factory):
    """A fresh tiny MT-DNN, identical for the same seed, and its preprocessor."""

    def make(seed=0):
        keras.utils.set_random_seed(seed)
        encoder = tiny_encoder_factory(seed=seed)
        return MTDNN(encoder.backbone, TASKS), Preprocessor(load_tokenizer(encoder.vocabulary), 64)

    return make


def _train(make_model, splits, work_dir, callbacks=(), distill=False):
    model, preprocessor = make_model(seed=5)
    targets = None
    if distill:
        teacher, _ = make_model(seed=6)
        teacher.preprocessor, teacher.directory = preprocessor, "t"
        members = [teacher]
        width = soft_width(TASKS)
        targets = {
            d.task.name: distillation_targets(d.task, len(d), width, ensemble.ensemble_targets(members, d))
            for d in splits
        }
    data = training.training_data(splits, preprocessor, CONFIG, targets=targets)
    trained = Distiller(model, alpha=0.5) if distill else model
    trained.compile(optimizer=training.make_optimizer(CONFIG, data.steps_per_epoch * CONFIG.epochs))
    training.fit(trained, data, CONFIG, str(work_dir), callbacks=callbacks)
    return model, data


@pytest.mark.parametrize("distill", [False, True], ids=["mtdnn", "distiller"])
def test_resumed_training_equals_uninterrupted(make_model, splits, tmp_path, distill):
    reference, data = _train(make_model, splits, tmp_path / "reference", distill=distill)
    per_epoch = data.steps_per_epoch  # 12: a crash at step 18 is mid-way through epoch 2
    with pytest.raises(Crash):
        _train(make_model, splits, tmp_path / "run", callbacks=[CrashAt(18)], distill=distill)
    assert [step for step, _ in checkpointing.checkpoints(str(tmp_path / "run" / "backup"))] == [
        12,
        16,
    ]  # the newest two
    assert 16 % per_epoch != 0
    resumed, _ = _train(make_model, splits, tmp_path / "run", distill=distill)
    for a, b in zip(reference.get_weights(), resumed.get_weights(), strict=True):
        assert np.array_equal(a, b)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [row["epoch"] for row in history] == [0, 1]


def test_nan_loss_stops_naming_step_and_task_and_keeps_the_last_good_checkpoint(make_model, splits, tmp_path):
    class PoisonAt(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 9:  # global step 10 of epoch 1
                embeddings = self.model.encoder.token_embedding.embeddings
                embeddings.assign(np.full(embeddings.shape, np.nan, np.float32))

    model, preprocessor = make_model(seed=5)
    data = training.training_data(splits, preprocessor, CONFIG)
    model.compile(optimizer=training.make_optimizer(CONFIG, data.steps_per_epoch * CONFIG.epochs))
    with pytest.raises(NumericalError) as error:
        training.fit(model, data, CONFIG, str(tmp_path), callbacks=[PoisonAt()])
    task = data.step_tasks[9]
    message = str(error.value)
    assert "the training loss became nan at global step 10 (epoch 1, batch 10)" in message
    assert f"a batch of task {task};" in message
    assert f"the last good checkpoint {tmp_path}/backup/ckpt-8 (step 8) is kept" in message
    assert [step for step, _ in checkpointing.checkpoints(str(tmp_path / "backup"))] == [4, 8]
    fresh, _ = make_model(seed=5)
    fresh.compile(optimizer=training.make_optimizer(CONFIG, data.steps_per_epoch * CONFIG.epochs))
    state = TrainingState(str(tmp_path / "backup"), {})
    assert state.restore(fresh) == 8
    assert all(np.all(np.isfinite(w)) for w in fresh.get_weights())


@pytest.fixture(scope="module")
def crashed_backup(make_model, splits, tmp_path_factory):
    """The backup directory of a run killed at step 6: it holds checkpoint 4."""
    work_dir = tmp_path_factory.mktemp("crashed")
    with pytest.raises(Crash):
        _train(make_model, splits, work_dir, callbacks=[CrashAt(6)])
    return str(work_dir / "backup")


@pytest.fixture()
def crashed_run(crashed_backup, make_model, splits, tmp_path):
    """A copy of the crashed run's checkpoints, a fresh model to restore into, and the run's shape."""
    shutil.copytree(crashed_backup, tmp_path / "backup")
    model, preprocessor = make_model(seed=5)
    data = training.training_data(splits, preprocessor, CONFIG)
    model.compile(optimizer=training.make_optimizer(CONFIG, 24))
    run = {
        "steps_per_epoch": data.steps_per_epoch,
        "epochs": 2,
        "total_steps": 24,
        "batch_size": 8,
        "seed": 3,
        "length_bucketing": True,
    }
    return model, str(tmp_path / "backup"), run


def test_corrupt_or_truncated_checkpoints_are_rejected(crashed_run):
    model, backup, run = crashed_run
    weights = os.path.join(backup, "ckpt-4", checkpointing.WEIGHTS)
    assert TrainingState(backup, run).restore(model) == 4
    with open(weights, "r+b") as handle:  # flip one byte in the middle
        handle.seek(os.path.getsize(weights) // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(
        CheckpointError, match=r"ckpt-4: weights.weights.h5 is corrupt \(SHA-256 differs .*delete .*backup to start"
    ):
        TrainingState(backup, run).restore(model)
    with open(weights, "r+b") as handle:
        handle.truncate(100)
    with pytest.raises(CheckpointError, match="weights.weights.h5 is corrupt"):
        TrainingState(backup, run).restore(model)
    os.remove(weights)
    with pytest.raises(CheckpointError, match="weights.weights.h5 is missing"):
        TrainingState(backup, run).restore(model)


def test_checkpoint_of_a_run_with_other_settings_is_refused(crashed_run):
    model, backup, run = crashed_run
    with pytest.raises(CheckpointError, match="belongs to a run with other settings .*epochs: 2 then, 3 now"):
        TrainingState(backup, {**run, "epochs": 3}).restore(model)


def test_half_written_checkpoints_are_invisible(crashed_run):
    model, backup, run = crashed_run
    os.makedirs(os.path.join(backup, ".tmp-123-ckpt-6"))  # a save interrupted before its rename
    assert TrainingState(backup, run).restore(model) == 4


def test_damaged_model_directory_is_rejected_and_retrained(make_model, tmp_path, tiny_encoder_factory):
    model, _ = make_model()
    encoder = tiny_encoder_factory()
    model_dir.save(str(tmp_path), model, encoder.vocabulary, True, 64)
    assert model_dir.complete(str(tmp_path))
    with open(tmp_path / model_dir.MODEL_FILE, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(model_dir.ModelDirError, match="model.keras is corrupt"):
        model_dir.load(str(tmp_path))
    assert not model_dir.complete(str(tmp_path))  # a pipeline re-run trains it again
    (tmp_path / model_dir.MODEL_FILE).write_bytes(b"")
    with pytest.raises(
        model_dir.ModelDirError,
        match=r"model.keras is corrupt \(its SHA-256 differs from manifest.json; "
        r"empty\)",
    ):
        model_dir.load(str(tmp_path))
    manifest = tmp_path / model_dir.MANIFEST_FILE
    manifest.write_text(manifest.read_text()[:20])  # truncated: an error naming it, not a JSON traceback
    with pytest.raises(
        model_dir.ModelDirError,
        match=rf"model directory {re.escape(str(tmp_path))}: manifest.json is "
        r"unreadable \(JSONDecodeError",
    ):
        model_dir.load(str(tmp_path))
    assert not model_dir.complete(str(tmp_path))
    os.remove(tmp_path / model_dir.MANIFEST_FILE)  # a save that never finished
    assert not model_dir.exists(str(tmp_path))


def _saved_members(make_model, encoder, tmp_path, count: int = 2) -> list[str]:
    """`count` tiny teacher models saved as model directories member_0.. under `tmp_path`."""
    directories = []
    for k in range(count):
        member, _ = make_model(seed=10 + k)
        directories.append(str(tmp_path / f"member_{k}"))
        model_dir.save(directories[-1], member, encoder.vocabulary, True, 64)
    return directories


def test_soft_label_generation_resumes_from_saved_chunks(
    make_model, splits, tmp_path, tiny_encoder_factory, monkeypatch, caplog
):
    directories = _saved_members(make_model, tiny_encoder_factory(), tmp_path)
    members = [model_dir.load(d) for d in directories]
    data = splits[0]
    expected = ensemble.ensemble_targets(members, data, 1.0, 16)
    cache = str(tmp_path / "partial")
    calls, calls_before_crash = [], []
    real = ensemble.predict_outputs

    def dies_on_third_chunk(member, rows, batch_size, **kwargs):
        calls.append(len(rows))
        if len(calls) == 3 and not calls_before_crash:
            calls_before_crash.extend(calls)
            raise Crash("killed while labelling")
        return real(member, rows, batch_size, **kwargs)

    monkeypatch.setattr(ensemble, "predict_outputs", dies_on_third_chunk)
    with pytest.raises(Crash):
        ensemble.ensemble_targets(members, data, 1.0, 16, cache, chunk_examples=16)
    assert len(glob.glob(f"{cache}/*/*.npy")) == 2  # member_0's first two chunks survived
    calls.clear()
    got = ensemble.ensemble_targets(members, data, 1.0, 16, cache, chunk_examples=16)
    assert calls == [16, 16, 16, 16]  # member_0's last chunk, member_1's three
    np.testing.assert_allclose(got, expected, atol=1e-6)
    # a damaged chunk is recomputed, never used
    chunk = sorted(glob.glob(f"{cache}/*/member_0-16.npy"))[0]
    with open(chunk, "wb") as handle:
        handle.write(b"\x93NUMPY garbage")
    calls.clear()
    with caplog.at_level(logging.WARNING):
        again = ensemble.ensemble_targets(members, data, 1.0, 16, cache, chunk_examples=16)
    assert calls == [16] and "member_0-16.npy is unusable" in caplog.text
    np.testing.assert_allclose(again, expected, atol=1e-6)
    # the pipeline stage writes the task's file and removes its chunks
    monkeypatch.setattr(ensemble, "predict_outputs", real)
    out = str(tmp_path / "soft")
    ensemble.make_soft_labels(directories, {"rte": [data]}, 1.0, out, batch_size=16, checkpoint_every_steps=1)
    assert os.listdir(out) == ["rte.npz"]


# --- the command line: SIGKILL mid-epoch, re-run, compare with an uninterrupted run -----

ARGS = [
    "--flagfile=configs/tiny.cfg",
    "--suite_size=96",
    "--epochs=2",
    "--seed=7",
    "--deterministic",
    "--checkpoint_every_steps=5",
    "--answer_module=san",
    "--select_best_on_dev",  # resume and determinism hold with dev selection's state in the checkpoints
]


def _command(model_dir_):
    return [sys.executable, os.path.join(ROOT, "bin", "run"), *ARGS, f"--model_dir={model_dir_}"]


def _run(model_dir_, env):
    result = subprocess.run(_command(model_dir_), capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", MTKD_CACHE=str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cli_env):
    directory = tmp_path_factory.mktemp("uninterrupted")
    _run(directory, cli_env)
    return directory


def _weights(directory):
    return model_dir.load(str(directory)).get_weights()


def _same_run(a, b):
    assert all(np.array_equal(x, y) for x, y in zip(_weights(a), _weights(b), strict=True))
    assert (a / "eval_results.json").read_bytes() == (b / "eval_results.json").read_bytes()


@pytest.mark.slow
def test_two_deterministic_runs_are_bit_identical(uninterrupted, tmp_path, cli_env):
    _run(tmp_path, cli_env)
    _same_run(uninterrupted, tmp_path)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_equals_uninterrupted(uninterrupted, tmp_path, cli_env):
    history = json.loads((uninterrupted / "history.json").read_text())
    process = subprocess.Popen(
        _command(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cli_env, cwd=ROOT
    )
    backup = str(tmp_path / "backup")
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        steps = [step for step, _ in checkpointing.checkpoints(backup)]
        if steps and steps[-1] >= 25:  # into the second epoch (18 steps each)
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    killed_at = checkpointing.checkpoints(backup)[-1][0]
    state = json.loads(open(os.path.join(backup, f"ckpt-{killed_at}", checkpointing.STATE)).read())
    assert killed_at % state["run"]["steps_per_epoch"] != 0, "the kill should land mid-epoch"
    assert not model_dir.exists(str(tmp_path))
    result = _run(tmp_path, cli_env)
    assert f"resuming from {backup}/ckpt-{killed_at}" in result.stderr
    _same_run(uninterrupted, tmp_path)
    assert not os.path.exists(backup)  # removed once the model is saved
    assert len(json.loads((tmp_path / "history.json").read_text())) == len(history)


@pytest.mark.slow
def test_sigterm_mid_epoch_checkpoints_that_step_exits_143_and_the_rerun_equals_uninterrupted(
    uninterrupted, tmp_path, cli_env
):
    backup = tmp_path / "backup"
    child = Child([*ARGS, f"--model_dir={tmp_path}", "--progress_seconds=0.001"], cli_env)
    child.wait_for(lambda: child.logged("MT-DNN: step 22/36"))  # mid-way through epoch 2 (18 steps each)
    child.send(signal.SIGTERM)
    assert child.finish() == 143, child.stderr[-3000:]
    stopped = re.search(
        r"stopped by SIGTERM at global step (\d+) of MT-DNN \(epoch 2, batch (\d+) of 18\), after saving "
        rf"checkpoint {re.escape(str(backup))}/ckpt-(\d+); run the same command again to resume",
        child.stderr,
    )
    assert stopped, child.stderr[-3000:]
    step = int(stopped.group(1))
    assert 22 < step < 36 and int(stopped.group(3)) == step and int(stopped.group(2)) == step - 18
    assert checkpointing.checkpoints(str(backup))[-1][0] == step  # that step, not the last periodic one
    assert not model_dir.exists(str(tmp_path)) and not (tmp_path / ".lock").exists()
    result = _run(tmp_path, cli_env)
    assert f"resuming from {backup}/ckpt-{step}" in result.stderr
    _same_run(uninterrupted, tmp_path)
    assert len(json.loads((tmp_path / "history.json").read_text())) == 2


# --- damaged checkpoints: never used, never silently dropped; resume falls back ----------------


@pytest.fixture(scope="module")
def two_checkpoints(make_model, splits, tmp_path_factory):
    """A run killed at step 10: checkpoints 4 and 8 (the newest two are kept)."""
    work_dir = tmp_path_factory.mktemp("two")
    with pytest.raises(Crash):
        _train(make_model, splits, work_dir, callbacks=[CrashAt(10)])
    assert [step for step, _ in checkpointing.checkpoints(str(work_dir / "backup"))] == [4, 8]
    return work_dir


def _damage(path, how):
    if how == "truncated":
        with open(path, "r+b") as handle:
            handle.truncate(os.path.getsize(path) // 2)
    elif how == "empty":
        open(path, "wb").close()
    else:  # one flipped bit
        with open(path, "r+b") as handle:
            handle.seek(os.path.getsize(path) // 2)
            byte = handle.read(1)
            handle.seek(-1, os.SEEK_CUR)
            handle.write(bytes([byte[0] ^ 0x01]))


@pytest.fixture(scope="module")
def uninterrupted_weights(make_model, splits, tmp_path_factory):
    return _train(make_model, splits, tmp_path_factory.mktemp("reference"))[0].get_weights()


@pytest.mark.parametrize(
    "file, how",
    [(checkpointing.WEIGHTS, "truncated"), (checkpointing.RNG, "flipped bit"), (checkpointing.STATE, "empty")],
)
def test_damaged_newest_checkpoint_falls_back_to_the_older_one_with_a_warning_and_resumes_bit_identical(
    two_checkpoints, uninterrupted_weights, make_model, splits, tmp_path, caplog, file, how
):
    shutil.copytree(two_checkpoints, tmp_path / "run")
    backup = tmp_path / "run" / "backup"
    _damage(backup / "ckpt-8" / file, how)
    with caplog.at_level(logging.WARNING):
        resumed, _ = _train(make_model, splits, tmp_path / "run")
    assert re.search(
        rf"checkpoint {re.escape(str(backup))}/ckpt-8: {re.escape(file)} is (corrupt|unreadable).*; it is not "
        rf"used: moved aside to {re.escape(str(backup))}/damaged-ckpt-8, resuming from the older "
        rf"{re.escape(str(backup))}/ckpt-4 \(step 4\)",
        caplog.text,
    ), caplog.text
    for a, b in zip(uninterrupted_weights, resumed.get_weights(), strict=True):
        assert np.array_equal(a, b)


def test_every_checkpoint_damaged_stops_with_an_error_naming_each_and_moves_nothing(
    two_checkpoints, tmp_path, make_model, splits
):
    shutil.copytree(two_checkpoints / "backup", tmp_path / "backup")
    _damage(tmp_path / "backup" / "ckpt-8" / checkpointing.WEIGHTS, "empty")
    _damage(tmp_path / "backup" / "ckpt-4" / checkpointing.WEIGHTS, "flipped bit")
    model, _ = make_model(seed=5)
    model.compile(optimizer=training.make_optimizer(CONFIG, 24))
    with pytest.raises(
        CheckpointError,
        match=r"no valid checkpoint to resume from in .*backup: checkpoint .*ckpt-8: "
        r"weights.weights.h5 is corrupt \(SHA-256 differs from when it was written; empty\); checkpoint "
        r".*ckpt-4: weights.weights.h5 is corrupt .*; delete .*backup to start this training over",
    ):
        TrainingState(str(tmp_path / "backup"), {}).restore(model)
    assert sorted(os.listdir(tmp_path / "backup")) == ["ckpt-4", "ckpt-8"]


def test_an_older_checkpoint_is_deleted_only_after_the_newer_one_is_verified(
    two_checkpoints, tmp_path, make_model, monkeypatch
):
    shutil.copytree(two_checkpoints / "backup", tmp_path / "backup")
    model, _ = make_model(seed=5)
    state = TrainingState(str(tmp_path / "backup"), {}, keep=1)
    real = checkpointing.sha256
    monkeypatch.setattr(checkpointing, "sha256", lambda path: real(path) if ".tmp-" in path else "0" * 64)
    with pytest.raises(
        CheckpointError,
        match=r"ckpt-12: weights.weights.h5 is corrupt .*: it failed its check right "
        r"after it was written; the previous checkpoint .*ckpt-8 \(step 8\) is intact",
    ):
        state.save(model, 12)  # what reached the disk differs from what was written
    assert [step for step, _ in checkpointing.checkpoints(str(tmp_path / "backup"))] == [4, 8, 12]
    monkeypatch.setattr(checkpointing, "sha256", real)
    state.save(model, 16)  # verified: now only the newest is kept (keep=1)
    assert [step for step, _ in checkpointing.checkpoints(str(tmp_path / "backup"))] == [16]


@pytest.mark.parametrize("how", ["truncated", "empty", "flipped bit"])
def test_damaged_soft_label_file_is_refused_by_readers_and_made_again_by_the_stage_with_a_warning(
    make_model, splits, tmp_path, tiny_encoder_factory, caplog, how
):
    encoder = tiny_encoder_factory()
    member, _ = make_model(seed=10)
    model_dir.save(str(tmp_path / "member_0"), member, encoder.vocabulary, True, 64)
    data = {"rte": [splits[0]]}
    out = str(tmp_path / "soft")
    ensemble.make_soft_labels([str(tmp_path / "member_0")], data, 1.0, out, batch_size=16)
    path = os.path.join(out, "rte.npz")
    with np.load(path) as archive:
        expected = archive["targets"]
    _damage(path, how)
    with pytest.raises(soft_labels_lib.SoftLabelError, match=rf"soft labels {re.escape(path)}: unreadable or corrupt"):
        soft_labels_lib.read(path)
    with caplog.at_level(logging.WARNING):
        assert not ensemble.soft_labels_valid(out, data, 1.0)
    assert re.search(
        rf"soft labels {re.escape(path)}: unreadable or corrupt .*it is not used: the soft labels will be "
        "made again",
        caplog.text,
    )
    ensemble.make_soft_labels([str(tmp_path / "member_0")], data, 1.0, out, batch_size=16)
    assert np.array_equal(soft_labels_lib.read(path).targets, expected)


def test_soft_labels_of_a_task_finished_before_a_stop_are_kept_only_for_the_same_teachers(
    make_model, splits, tmp_path, tiny_encoder_factory, monkeypatch
):
    directories = _saved_members(make_model, tiny_encoder_factory(), tmp_path)
    data, out = {"rte": [splits[0]]}, str(tmp_path / "soft")
    ensemble.make_soft_labels(directories[:1], data, 1.0, out, batch_size=16)
    calls = []
    real = ensemble.predict_outputs
    monkeypatch.setattr(ensemble, "predict_outputs", lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    ensemble.make_soft_labels(directories[:1], data, 1.0, out, batch_size=16)  # a re-run after a stop in a later task
    assert calls == []
    ensemble.make_soft_labels(directories[1:], data, 1.0, out, batch_size=16)  # other teachers: made anew
    assert calls and soft_labels_lib.read(os.path.join(out, "rte.npz")).metadata["teachers"] == directories[1:]
