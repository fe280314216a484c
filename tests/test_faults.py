"""Faults injected into a tiny deterministic pipeline run by `bin/run` in a child process: SIGINT in the
middle of soft-label chunks, SIGTERM in the middle of the evaluation, a full disk while the student
trains, damaged soft-label files. Each run is compared with one uninterrupted run of the same command."""

import glob
import json
import os
import re
import shutil
import signal

import numpy as np
import pytest
from child_runs import Child, run

from mtkd_tf.models import model_dir
from mtkd_tf.runtime.files import sha256
from mtkd_tf.training import checkpointing

PIPELINE = [
    "--flagfile=configs/tiny.cfg",
    "--mode=pipeline",
    "--tasks=sst2,stsb",
    "--num_teachers=1",
    "--epochs=1",
    "--max_train_examples=32",
    "--max_eval_examples=16",
    "--batch_size=8",
    "--train_baseline=false",
    "--verbose=0",
    "--select_best_on_dev",
    "--deterministic",
    "--seed=3",
    "--checkpoint_every_steps=2",
    "--eval_batch_size=8",
]


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory):
    return {"MTKD_CACHE": str(tmp_path_factory.mktemp("cache"))}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache_env):
    """The uninterrupted pipeline: a teacher (8 steps), its soft labels (2 chunks of 16 examples per
    task), the student (8 steps, a checkpoint every 2), the evaluation and the report."""
    root = tmp_path_factory.mktemp("reference") / "run"
    status, err = run([*PIPELINE, f"--model_dir={root}"], cache_env)
    assert status == 0, err[-3000:]
    return root


def _arguments(root, *extra):
    return [*PIPELINE, f"--model_dir={root}", *extra]


def _same_soft_labels(a, b):
    for task in ("sst2", "stsb"):
        with np.load(a / "soft_labels" / f"{task}.npz") as x, np.load(b / "soft_labels" / f"{task}.npz") as y:
            for name in ("ids", "targets", "hashes"):
                assert np.array_equal(x[name], y[name]), (task, name)
            meta_x, meta_y = json.loads(str(x["metadata"])), json.loads(str(y["metadata"]))
            meta_x.pop("teachers"), meta_y.pop("teachers")  # absolute paths of the two runs' teachers
            assert meta_x == meta_y


def _same_evidence(a, b):
    with np.load(a / "report_outputs.npz") as x, np.load(b / "report_outputs.npz") as y:
        assert sorted(x.files) == sorted(y.files)
        for name in x.files:
            assert np.array_equal(x[name], y[name]), name
    assert (
        json.loads((a / "report.json").read_text())["results"] == json.loads((b / "report.json").read_text())["results"]
    )


@pytest.mark.slow
def test_sigint_mid_soft_label_chunks_saves_the_chunk_and_the_rerun_gives_identical_soft_labels(
    reference, tmp_path, cache_env
):
    root = tmp_path / "run"
    shutil.copytree(reference / "teachers", root / "teachers")
    chunks = lambda: glob.glob(str(root / "soft_labels" / ".partial" / "*" / "*" / "*.npy"))  # noqa: E731
    child = Child(_arguments(root, "--mode=soft_labels"), cache_env)
    child.wait_for(lambda: len(chunks()) >= 1)
    child.send(signal.SIGINT)
    assert child.finish() == 130, child.stderr[-3000:]
    stopped = re.search(
        r"stopped by SIGINT after saving soft-label chunk (\S+\.npy) \(examples \d+-\d+ of 32 of "
        r"(sst2|stsb)/\w+\); run the same command again to resume",
        child.stderr,
    )
    assert stopped, child.stderr[-3000:]
    assert os.path.isfile(stopped.group(1))
    assert not all((root / "soft_labels" / f"{task}.npz").exists() for task in ("sst2", "stsb"))
    assert not (root / "soft_labels" / ".lock").exists() and not (root / ".lock").exists()
    status, err = run(_arguments(root, "--mode=soft_labels"), cache_env)
    assert status == 0, err[-3000:]
    assert re.search(r"reused \d+ saved chunk\(s\) of an earlier run", err)
    _same_soft_labels(reference, root)
    assert not (root / "soft_labels" / ".partial").exists()


@pytest.mark.slow
def test_sigterm_mid_evaluation_saves_the_outputs_so_far_and_the_rerun_gives_identical_evidence(
    reference, tmp_path, cache_env
):
    root = tmp_path / "run"
    shutil.copytree(reference, root, ignore=shutil.ignore_patterns("report*", "eval_results.json", "*.png"))
    saved = lambda: glob.glob(str(root / ".partial" / "evaluate" / "*.npy"))  # noqa: E731
    child = Child(_arguments(root), cache_env)
    child.wait_for(lambda: len(saved()) >= 1)
    child.send(signal.SIGTERM)
    assert child.finish() == 143, child.stderr[-3000:]
    assert re.search(
        r"stopped by SIGTERM after saving the outputs of \S+ on (sst2|stsb)/\w+ \(\S+\.npy\); run the "
        r"same command again to resume",
        child.stderr,
    ), child.stderr[-3000:]
    kept = len(saved())
    assert 1 <= kept < 4  # the teacher and the student, on 2 dev splits
    assert not (root / "report_outputs.npz").exists()
    status, err = run(_arguments(root), cache_env)
    assert status == 0, err[-3000:]
    _same_evidence(reference, root)
    assert not (root / ".partial").exists()


def _digests(paths):
    return {str(path): sha256(str(path)) for path in paths}


@pytest.mark.slow
def test_full_disk_while_the_student_trains_stops_keeps_every_finished_stage_and_the_checkpoint_and_resumes(
    reference, tmp_path, cache_env
):
    root = tmp_path / "run"
    shutil.copytree(reference, root, ignore=shutil.ignore_patterns("student", "report*", "eval_results.json", "*.png"))
    finished = _digests([p for p in root.rglob("*") if p.is_file()])  # the teachers and the soft labels
    backup = root / "student" / "backup"
    child = Child(_arguments(root, "--mode=distill"), cache_env)
    child.wait_for(lambda: any(step >= 2 for step, _ in checkpointing.checkpoints(str(backup))))
    child.limit_file_size(4096)  # every checkpoint's weights file is larger
    assert child.finish() == 2, child.stderr[-3000:]
    failed = re.search(
        r"error: no room to write checkpoint \S+/ckpt-(\d+) \(File too large\); the run stopped; the "
        r"previous checkpoint (\S+) \(step (\d+)\) is intact\. Everything written before is intact: "
        r"free some space .* and run the same command again to resume",
        child.stderr,
    )
    assert failed, child.stderr[-3000:]
    kept = int(failed.group(3))
    assert kept >= 2 and int(failed.group(1)) > kept and failed.group(2) == str(backup / f"ckpt-{kept}")
    assert checkpointing.checkpoints(str(backup))[-1][0] == kept
    checkpointing.TrainingState(str(backup), {})._verify(failed.group(2))  # intact
    assert not [name for name in os.listdir(backup) if name.startswith(".tmp-")]  # nothing half-written
    assert _digests(finished) == finished  # the finished stages, byte for byte
    assert all(model_dir.complete(str(d)) for d in (root / "teachers").glob("member_*"))
    assert not model_dir.exists(str(root / "student")) and not (root / ".lock").exists()
    status, err = run(_arguments(root, "--mode=distill"), cache_env)  # room again
    assert status == 0, err[-3000:]
    assert f"resuming from {backup}/ckpt-{kept}" in err
    for a, b in zip(
        model_dir.load(str(reference / "student")).get_weights(),
        model_dir.load(str(root / "student")).get_weights(),
        strict=True,
    ):
        assert np.array_equal(a, b)
    assert (root / "student" / "eval_results.json").read_bytes() == (
        reference / "student" / "eval_results.json"
    ).read_bytes()


@pytest.mark.slow
def test_soft_label_file_failing_its_checksum_is_never_used_nor_silently_replaced(reference, tmp_path, cache_env):
    root = tmp_path / "run"
    shutil.copytree(reference, root, ignore=shutil.ignore_patterns("student", "report*", "eval_results.json", "*.png"))
    path = root / "soft_labels" / "stsb.npz"
    data = path.read_bytes()
    with np.load(path) as archive:
        targets = archive["targets"].tobytes()
    offset = data.index(targets) + len(targets) // 2  # one bit inside the targets: only the archive's CRC-32 tells
    path.write_bytes(data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :])
    # the student alone refuses it, naming the file
    status, err = run(_arguments(root, "--mode=distill"), cache_env)
    assert status == 2, err[-3000:]
    assert re.search(
        rf"error: soft labels {re.escape(str(path))}: unreadable or corrupt \(BadZipFile: Bad CRC-32", err
    ), err[-3000:]
    assert not model_dir.exists(str(root / "student"))
    # the soft-label stage warns, names it and makes it again: the reference's soft labels
    status, err = run(_arguments(root, "--mode=soft_labels"), cache_env)
    assert status == 0, err[-3000:]
    assert re.search(
        rf"soft labels {re.escape(str(path))}: unreadable or corrupt .*; it is not used: the soft labels "
        r"will be made again",
        err,
    ), err[-3000:]
    _same_soft_labels(reference, root)
