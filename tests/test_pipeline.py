"""The whole method through bin/run: teachers -> soft labels -> student + baseline -> report."""

import json
import os

import numpy as np
import pytest
from conftest import run_cli

COMMON = [
    "--flagfile=configs/tiny.cfg",
    "--tasks=sst2,rte,stsb",
    "--num_teachers=2",
    "--epochs=3",
    "--verbose=0",
    "--select_best_on_dev",
]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("experiment"))
    env = {"MTKD_CACHE": str(tmp_path_factory.mktemp("cache"))}
    result = run_cli(*COMMON, "--mode=pipeline", f"--model_dir={root}", env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    return root, env, result


@pytest.mark.slow
def test_pipeline_writes_report_with_every_row(experiment):
    root, _, result = experiment
    with open(os.path.join(root, "report.json")) as handle:
        report = json.load(handle)
    assert report["rows"] == ["member_0", "member_1", "ensemble", "baseline", "student"]
    results = report["results"]
    assert set(results) == {"sst2", "rte", "stsb"}
    assert set(results["stsb"]) == {"pearson", "spearman"}
    for _task, metrics in results.items():
        for _metric, values in metrics.items():
            assert set(report["rows"]) <= set(values)
            assert all(np.isfinite(values[row]) for row in report["rows"])
    table = open(os.path.join(root, "report.md")).read()
    assert table.startswith(
        "Dev scores (x100):\n\n| task | metric | member_0 | member_1 | ensemble | baseline | student |"
    )
    # one seed: no verdict on the student, only "untested"
    for claim in report["claims"]:
        if claim["key"] in ("student_vs_baseline", "kept_share", "gain_carries"):
            assert claim["verdict"] == "untested", claim
    assert "| sst2 | accuracy |" in result.stdout
    for task in ("sst2", "rte", "stsb"):
        assert os.path.isfile(os.path.join(root, "soft_labels", f"{task}.npz"))
    for name in ("teachers/member_0", "teachers/member_1", "student", "baseline"):
        assert os.path.isfile(os.path.join(root, name, "eval_results.json"))
        selection = json.load(open(os.path.join(root, name, "preprocessing.json")))["selection"]  # dev-based
        curve = selection["dev_curve"]
        assert sorted(curve, key=int) == ["1", "2", "3"] and selection["stopped"]
        assert selection["kept_epoch"] == min((-curve[e], int(e)) for e in curve)[1]  # the first best epoch
    history = json.load(open(os.path.join(root, "student", "history.json")))
    assert {"hard_loss", "soft_loss", "sst2_hard", "sst2_soft", "stsb_loss"} <= set(history[0])


@pytest.mark.slow
def test_pipeline_rerun_skips_finished_stages(experiment):
    root, env, _ = experiment
    files = [
        os.path.join(root, p)
        for p in ("teachers/member_0/model.keras", "soft_labels/rte.npz", "student/model.keras", "baseline/model.keras")
    ]
    before = [os.path.getmtime(f) for f in files]
    result = run_cli(*COMMON, "--mode=pipeline", f"--model_dir={root}", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [os.path.getmtime(f) for f in files] == before
    assert "soft_labels is done, skipping" in result.stderr and "student is done, skipping" in result.stderr


@pytest.mark.slow
def test_mode_report_rebuilds_the_report_from_its_evidence_alone(experiment, tmp_path):
    import shutil

    root, env, _ = experiment
    copy = tmp_path / "evidence"  # the evidence files alone: no model, no data
    copy.mkdir()
    for name in ("report_inputs.json", "report_outputs.npz"):
        shutil.copy(os.path.join(root, name), copy / name)
    result = run_cli("--mode=report", f"--model_dir={copy}", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (copy / "report.json").read_bytes() == open(os.path.join(root, "report.json"), "rb").read()
    assert (copy / "report.md").read_text() == open(os.path.join(root, "report.md")).read()
    missing = run_cli("--mode=report", f"--model_dir={tmp_path / 'nothing'}", env=env)
    assert missing.returncode != 0 and "no report evidence here" in missing.stderr


@pytest.mark.slow
def test_separate_modes_with_online_teachers_and_a_smaller_student(experiment, tmp_path):
    root, env, _ = experiment
    student = str(tmp_path / "small")
    result = run_cli(
        *COMMON,
        "--mode=distill",
        f"--model_dir={root}",
        f"--student_dir={student}",
        "--online_teachers",
        "--student_encoder=random:layers=1,hidden=32,heads=2,intermediate=64",
        "--hidden_loss_weight=0.5",
        "--teacher_tasks=rte,stsb",
        "--task_alpha=rte:0.7",
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.load(open(os.path.join(student, "eval_results.json")))
    assert set(results) == {"sst2", "rte", "stsb"}
    history = json.load(open(os.path.join(student, "history.json")))
    assert history[0]["sst2_soft"] == 0.0 and history[0]["rte_soft"] > 0  # sst2 has no teacher here
    assert "hidden_loss" in history[0]


@pytest.mark.slow
def test_self_distillation_from_an_earlier_student(experiment, tmp_path):
    root, env, _ = experiment
    other = str(tmp_path / "self")
    result = run_cli(
        *COMMON,
        "--mode=soft_labels",
        f"--model_dir={other}",
        f"--teacher_dirs={root}/student",
        "--soft_labels_precision=bfloat16",
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    meta = json.loads(str(np.load(os.path.join(other, "soft_labels", "rte.npz"))["metadata"]))
    assert meta["num_teachers"] == 1 and meta["teachers"] == [os.path.join(root, "student")]
    assert meta["precision"] == "mixed_bfloat16"


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (["--alpha=1.5"], "--alpha must be in [0, 1], got 1.5"),
        (["--temperature=0"], "--temperature must be > 0"),
        (["--temperature=2"], "made at temperature 1.0, but distillation uses 2.0"),
        (["--teacher_tasks=cola"], "teacher task(s) cola are not among the trained tasks"),
        (["--task_alpha=rte"], "is not task:alpha"),
    ],
)
def test_bad_distillation_input_fails_before_training(experiment, tmp_path, args, message):
    root, env, _ = experiment
    result = run_cli(*COMMON, "--mode=distill", f"--model_dir={root}", f"--student_dir={tmp_path}/s", *args, env=env)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-2000:]
    assert not os.path.exists(os.path.join(tmp_path, "s", "model.keras"))


@pytest.mark.slow
def test_soft_labels_for_other_data_are_rejected(experiment, tmp_path):
    root, env, _ = experiment
    result = run_cli(
        *COMMON,
        "--mode=distill",
        f"--model_dir={root}",
        f"--student_dir={tmp_path}/s",
        "--seed=0",
        "--suite_size=100",
        env=env,
    )
    # a different (smaller, regenerated) sample: same ids exist but the data changed
    assert result.returncode == 2
    assert "made for different" in result.stderr or "are missing" in result.stderr, result.stderr[-2000:]


@pytest.mark.slow
def test_distillation_on_unlabelled_text(tmp_path):
    """A task file's `unlabelled` split: teachers label it, the student trains on it with the soft loss only."""
    data = tmp_path / "data" / "reviews"
    data.mkdir(parents=True)
    words = {1: "good great fine", 0: "bad awful dull"}
    rng = np.random.default_rng(0)
    rows = [
        (f"the film was {words[int(label)].split()[i % 3]}", int(label))
        for i, label in enumerate(rng.integers(0, 2, 60))
    ]
    (data / "train.tsv").write_text("text\tlabel\n" + "".join(f"{t}\t{label}\n" for t, label in rows))
    (data / "dev.tsv").write_text("text\tlabel\n" + "".join(f"{t}\t{label}\n" for t, label in rows[:20]))
    (data / "extra.tsv").write_text(
        "text\n" + "".join(f"a plot so {w}\n" for w in ("good", "dull", "fine", "awful") * 10)
    )
    task_file = tmp_path / "tasks.yaml"
    task_file.write_text(
        "tasks:\n  - name: reviews\n    type: classification\n    labels: ['0', '1']\n    text_columns: [text]\n"
        "    files: {train: train.tsv, dev: dev.tsv, unlabelled: extra.tsv}\n"
    )
    root = str(tmp_path / "kd")
    args = [
        "--flagfile=configs/tiny.cfg",
        "--suite=",
        f"--data_dir={tmp_path / 'data'}",
        f"--task_file={task_file}",
        "--tasks=reviews",
        "--num_teachers=1",
        "--epochs=2",
        "--verbose=0",
        f"--model_dir={root}",
    ]
    env = {"MTKD_CACHE": str(tmp_path / "cache")}
    for mode in ("train_teachers", "soft_labels", "distill"):
        result = run_cli(*args, f"--mode={mode}", env=env)
        assert result.returncode == 0, (mode, result.stderr[-3000:])
    archive = np.load(os.path.join(root, "soft_labels", "reviews.npz"))
    ids = archive["ids"].tolist()
    assert len(ids) == 100 and ids[60] == "reviews/unlabelled/0"
    assert set(json.loads(str(archive["metadata"]))["fingerprints"]) == {"train", "unlabelled"}
    history = json.load(open(os.path.join(root, "student", "history.json")))
    assert history[0]["reviews_soft"] > 0 and history[0]["reviews_hard"] > 0


@pytest.mark.slow
def test_pipeline_writes_plots(experiment):
    """scores.png (a bar per model and task) and training_curves.png (a panel per task), as PNGs."""
    import matplotlib.image

    root, _, _ = experiment
    for name, min_width in (("scores.png", 700), ("training_curves.png", 900)):
        path = os.path.join(root, name)
        with open(path, "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
        pixels = matplotlib.image.imread(path)
        height, width = pixels.shape[:2]
        assert width >= min_width and 250 <= height <= 2000, (name, pixels.shape)
        assert pixels[..., :3].std() > 0.05  # not a blank canvas
