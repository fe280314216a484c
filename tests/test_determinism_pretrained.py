"""Reliability with the pretrained encoder (issue 16): the promises of docs/reliability.md with
MiniLM-L6 (`--encoder=minilm_l6`), not only with tiny random encoders.

With `--deterministic` and the same `--seed`: two runs, a run SIGKILLed mid-epoch or at an
epoch boundary and re-run, soft-label generation and the Distiller (cached soft labels and
online teachers) are bit-identical (weights and eval_results.json). Without it, a seeded
run still starts from identical weights (dropout seed states included) and sees the same
data. The end-to-end runs go through `bin/run`, whose flags are the stable interface.
The AX helpers at the end need no download.
"""

import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
from conftest import ROOT, run_cli

STEPS_PER_EPOCH = 12  # 3 tasks x 16 examples / batch 4
EVERY = 6  # --checkpoint_every_steps: checkpoints 6, 12 (epoch 1 ends), 18, 24
MINILM = [
    "--suite=glue_sample",
    "--suite_size=64",
    "--tasks=sst2,mrpc,stsb",
    "--encoder=minilm_l6",
    "--max_train_examples=16",
    "--max_eval_examples=16",
    "--max_seq_length=32",
    "--batch_size=4",
    "--epochs=2",
    "--learning_rate=1e-4",
    "--seed=1",
    "--deterministic",
    f"--checkpoint_every_steps={EVERY}",
    "--verbose=0",
    # 16 examples per task: the teacher check (docs/protocol.md) would skip tasks whose teachers
    # did not converge, and these tests are about the distillation's bits, so it is off here.
    "--teacher_check=off",
]
TRAIN = [*MINILM, "--mode=train"]
DISTILL = [*MINILM, "--epochs=1"]  # later flags win


def _ok(result):
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _weights(directory):
    """Every variable of the saved model but the dropout seed states (model.keras does not store them)."""
    import keras

    import mtkd_tf  # noqa: F401  (registers the model's classes)

    model = keras.saving.load_model(os.path.join(str(directory), "model.keras"), compile=False)
    return [v.numpy() for v in model.variables if not v.path.endswith("seed_generator_state")]


def _assert_same_model(a, b):
    first, second = _weights(a), _weights(b)
    assert len(first) == len(second) > 100  # MiniLM's 6 layers and the heads
    differ = [i for i, (x, y) in enumerate(zip(first, second, strict=True)) if not np.array_equal(x, y)]
    assert not differ, f"{len(differ)} of {len(first)} weight arrays differ"
    assert (a / "eval_results.json").read_bytes() == (b / "eval_results.json").read_bytes()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted deterministic MiniLM run (also the teacher of the Distiller tests)."""
    directory = tmp_path_factory.mktemp("reference")
    _ok(run_cli(*TRAIN, f"--model_dir={directory}"))
    return directory


# --- (a) two deterministic runs -------------------------------------------------------------


@pytest.mark.download
@pytest.mark.slow
def test_two_deterministic_minilm_runs_are_bit_identical(reference, tmp_path):
    _ok(run_cli(*TRAIN, f"--model_dir={tmp_path}"))
    _assert_same_model(reference, tmp_path)
    assert len(json.loads((tmp_path / "history.json").read_text())) == 2


# --- (b) SIGKILL and re-run -----------------------------------------------------------------


def _checkpoint_steps(backup):
    """Steps of the complete checkpoints `<backup>/ckpt-<step>` (half-written ones are hidden)."""
    if not os.path.isdir(backup):
        return []
    return sorted(int(m.group(1)) for m in map(re.compile(r"ckpt-(\d+)").fullmatch, os.listdir(backup)) if m)


def _kill_after_checkpoint(args, work_dir, wanted, timeout=600):
    """Runs `bin/run *args` and SIGKILLs it once `<work_dir>/backup/ckpt-<wanted>` is the latest
    checkpoint; returns the backup directory and what the run wrote to stderr."""
    command = [sys.executable, os.path.join(ROOT, "bin", "run"), *args]
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    backup = os.path.join(str(work_dir), "backup")
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, env=environment, cwd=ROOT)
        try:
            deadline = time.time() + timeout
            while time.time() < deadline and process.poll() is None:
                steps = _checkpoint_steps(backup)
                if steps and steps[-1] >= wanted:
                    break
                time.sleep(0.02)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
        log.seek(0)
        stderr = log.read()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed: " + stderr[-2000:]
    assert _checkpoint_steps(backup)[-1] == wanted, _checkpoint_steps(backup)
    assert not os.path.exists(os.path.join(str(work_dir), "model.keras"))
    return backup, stderr


def _resumed(stderr, backup, step):
    return re.search(rf"resuming from {re.escape(backup)}/ckpt-{step}\b", stderr) is not None


def _rerun_resumes(args, backup, step):
    """Runs the killed command again: it resumes from checkpoint `step` and finishes."""
    result = _ok(run_cli(*args))
    assert _resumed(result.stderr, backup, step), result.stderr[-3000:]
    assert not os.path.exists(backup)  # removed once the model is saved


@pytest.mark.download
@pytest.mark.slow
def test_sigkill_at_an_epoch_boundary_and_mid_epoch_then_rerun_equals_uninterrupted(reference, tmp_path):
    """Killed right after epoch 1's last checkpoint (ckpt-12: the re-run starts epoch 2 at its
    first batch, as the issue's ckpt-30); that re-run killed 6 steps into epoch 2 (ckpt-18);
    the last re-run finishes. One run, two kinds of resume, compared with `reference`."""
    args = [*TRAIN, f"--model_dir={tmp_path}"]
    _kill_after_checkpoint(args, tmp_path, STEPS_PER_EPOCH)
    backup, stderr = _kill_after_checkpoint(args, tmp_path, STEPS_PER_EPOCH + EVERY)
    assert _resumed(stderr, backup, STEPS_PER_EPOCH), stderr[-3000:]
    _rerun_resumes(args, backup, STEPS_PER_EPOCH + EVERY)
    _assert_same_model(reference, tmp_path)
    history = json.loads((tmp_path / "history.json").read_text())
    assert [row["epoch"] for row in history] == [0, 1]  # the epoch-end checkpoint follows its history row


# --- (c) the Distiller: soft labels, cached and online teachers ------------------------------


def _npz(path):
    with np.load(path) as archive:
        return {name: archive[name] for name in archive.files}


@pytest.fixture(scope="module")
def soft_labels(reference, tmp_path_factory):
    """Soft labels of the reference model written twice; the experiment roots."""
    roots = [tmp_path_factory.mktemp(f"soft{k}") for k in range(2)]
    for root in roots:
        _ok(run_cli(*DISTILL, "--mode=soft_labels", f"--model_dir={root}", f"--teacher_dirs={reference}"))
    return roots


@pytest.mark.download
@pytest.mark.slow
def test_soft_labels_of_a_minilm_teacher_are_identical_twice(soft_labels):
    first, second = (root / "soft_labels" for root in soft_labels)
    assert sorted(os.listdir(first)) == sorted(os.listdir(second)) == ["mrpc.npz", "sst2.npz", "stsb.npz"]
    for name in os.listdir(first):
        a, b = _npz(first / name), _npz(second / name)
        assert a.keys() == b.keys() and len(a["ids"]) == 16
        for key in a:
            assert np.array_equal(a[key], b[key]), (name, key)


@pytest.mark.download
@pytest.mark.slow
@pytest.mark.parametrize("online", [False, True], ids=["cached_soft_labels", "online_teachers"])
def test_two_deterministic_minilm_distillations_are_bit_identical(reference, soft_labels, tmp_path, online):
    """Two distillations of a MiniLM student; with online teachers (frozen MiniLM teachers
    inside the Distiller) the second is SIGKILLed mid-epoch and re-run. (The cached-target
    stream on resume is covered with tiny encoders in test_resume.py.)"""
    root = soft_labels[0]
    students = [tmp_path / "a", tmp_path / "b"]
    args = [
        [
            *DISTILL,
            "--mode=distill",
            f"--model_dir={root}",
            f"--teacher_dirs={reference}",
            f"--student_dir={student}",
            *(["--online_teachers"] if online else []),
        ]
        for student in students
    ]
    _ok(run_cli(*args[0]))
    if online:
        backup, _ = _kill_after_checkpoint(args[1], students[1], EVERY)  # 6 of the epoch's 12 steps
        _rerun_resumes(args[1], backup, EVERY)
    else:
        _ok(run_cli(*args[1]))
    _assert_same_model(*students)
    history = json.loads((students[0] / "history.json").read_text())
    assert history[0]["soft_loss"] > 0


# --- (d) without --deterministic: same start, same data --------------------------------------


def _variables(model):
    return [v.numpy() for v in model.variables]


@pytest.mark.download
def test_seeded_minilm_starts_from_identical_weights_and_dropout_seeds():
    """The same seed gives the same encoder and heads, dropout seed states included, whatever
    Python's global `random` state was before (Keras draws unseeded SeedGenerator seeds from it)."""
    import keras

    from mtkd_tf.data.tasks import registry, resolve_tasks
    from mtkd_tf.models.encoder import load_encoder
    from mtkd_tf.models.mtdnn import MTDNN

    tasks = resolve_tasks("sst2,mrpc,stsb", registry())

    def build(seed, noise):
        random.seed(noise)  # another state of the global generator
        encoder = load_encoder("minilm_l6", seed=seed)
        keras.utils.set_random_seed(seed)  # as training does before building the heads
        return encoder, MTDNN(encoder.backbone, tasks)

    (first, model), (second, again) = build(3, 11), build(3, 12)
    states = [v.numpy() for v in first.backbone.variables if v.path.endswith("seed_generator_state")]
    assert len(states) >= 19  # embeddings + 3 dropouts in each of the 6 layers
    for x, y in zip(_variables(first.backbone), _variables(second.backbone), strict=True):
        assert np.array_equal(x, y)
    assert len(_variables(model)) == len(_variables(again))
    for x, y in zip(_variables(model), _variables(again), strict=True):
        assert np.array_equal(x, y)
    other, _ = build(4, 11)
    other_states = [v.numpy() for v in other.backbone.variables if v.path.endswith("seed_generator_state")]
    assert not all(np.array_equal(x, y) for x, y in zip(states, other_states, strict=True))  # the seed matters
    pretrained = [v.numpy() for v in other.backbone.weights]
    assert all(
        np.array_equal(x, y) for x, y in zip(pretrained, [v.numpy() for v in first.backbone.weights], strict=True)
    )


@pytest.mark.download
def test_seeded_minilm_run_sees_the_same_data_order(glue_dir):
    import tensorflow as tf

    from mtkd_tf.config import TrainingConfig
    from mtkd_tf.data import readers
    from mtkd_tf.data.tasks import registry, resolve_tasks
    from mtkd_tf.models.encoder import load_encoder
    from mtkd_tf.training import train as training

    tasks = resolve_tasks("sst2,mrpc,stsb", registry())
    splits = [readers.load_split(task, "train", data_dir=glue_dir).take(16) for task in tasks]
    preprocessor = training.encoder_preprocessor(load_encoder("minilm_l6", seed=3), 32)

    def stream(seed):
        config = TrainingConfig(batch_size=4, epochs=2, seed=seed)
        data = training.training_data(splits, preprocessor, config)
        batches = [tf.nest.map_structure(lambda t: t.numpy(), batch) for batch in data.starting_at(0).take(8)]
        return data.schedule, batches

    (schedule, batches), (schedule_again, batches_again) = stream(3), stream(3)
    assert np.array_equal(schedule, schedule_again) and len(batches) == 8
    flat, flat_again = tf.nest.flatten(batches), tf.nest.flatten(batches_again)
    assert len(flat) == len(flat_again) and all(np.array_equal(x, y) for x, y in zip(flat, flat_again, strict=True))
    other_schedule, other_batches = stream(4)
    # one element structure per dataset, 8 batches each: as many arrays on both sides
    assert not np.array_equal(schedule, other_schedule) or not all(
        np.array_equal(x, y) for x, y in zip(flat, tf.nest.flatten(other_batches), strict=True)
    )


# --- AX (issue 16, item 4): scored with the MNLI head when its test file is present -----------


def test_ax_joins_mnli_for_prediction_when_its_test_file_is_present(glue_dir, tmp_path):
    from mtkd_tf.data.tasks import registry, resolve_tasks
    from mtkd_tf.export import submission

    known = registry()
    names = lambda tasks: [task.name for task in tasks]  # noqa: E731
    with_mnli = resolve_tasks("sst2,mnli", known)
    assert names(submission.with_diagnostic_tasks(with_mnli, known)) == ["sst2", "mnli", "ax"]
    assert names(submission.with_diagnostic_tasks(resolve_tasks("mnli,ax", known), known)) == ["mnli", "ax"]
    assert names(submission.with_diagnostic_tasks(resolve_tasks("sst2,rte", known), known)) == ["sst2", "rte"]

    assert submission.missing_test_data(known["ax"], glue_dir) is None  # the sample has diagnostic/diagnostic.tsv
    tasks, skipped = submission.prediction_tasks(with_mnli, known, glue_dir)
    assert names(tasks) == ["sst2", "mnli", "ax"] and skipped == []

    empty = str(tmp_path / "no_diagnostic")
    missing = os.path.join(empty, "diagnostic", "diagnostic.tsv")
    assert submission.missing_test_data(known["ax"], empty) == f"{missing}: no such file"
    tasks, skipped = submission.prediction_tasks(with_mnli, known, empty)
    assert names(tasks) == ["sst2", "mnli"]
    assert skipped == [f"AX skipped: {missing}: no such file"]  # one line, saying why
    assert submission.prediction_tasks(with_mnli, known, None)[1] == [
        "AX skipped: no --data_dir to read its test file from"
    ]
    assert submission.prediction_tasks(resolve_tasks("sst2", known), known, empty) == (resolve_tasks("sst2", known), [])


def test_ax_predictions_use_the_mnli_head(glue_dir, tiny_encoder_factory, tmp_path):
    from mtkd_tf.data import readers
    from mtkd_tf.data.tasks import registry, resolve_tasks
    from mtkd_tf.export import submission
    from mtkd_tf.models.mtdnn import MTDNN
    from mtkd_tf.training.train import encoder_preprocessor

    known = registry()
    tasks, skipped = submission.prediction_tasks(resolve_tasks("mnli", known), known, glue_dir)
    encoder = tiny_encoder_factory(seed=0)
    model = MTDNN(encoder.backbone, tasks, preprocessor=encoder_preprocessor(encoder, 32))
    assert "ax" not in model.heads and "mnli" in model.heads
    test = {
        name: {split: data.take(8) for split, data in splits.items()}
        for name, splits in readers.load_splits(tasks, "test", data_dir=glue_dir).items()
    }
    written = submission.write_predictions(model, test, str(tmp_path))
    assert sorted(os.path.basename(path) for path in written) == ["AX.tsv", "MNLI-m.tsv", "MNLI-mm.tsv"]
    lines = (tmp_path / "AX.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 9
    assert {line.split("\t")[1] for line in lines[1:]} <= {"entailment", "neutral", "contradiction"}
