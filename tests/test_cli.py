"""End-to-end runs of bin/run on the built-in sample: train -> evaluate -> predict."""

import hashlib
import json
import os

import pytest
from conftest import run_cli

TASKS = "sst2,mnli,stsb,ax"


def _md5(path):
    with open(path, "rb") as handle:
        return hashlib.md5(handle.read()).hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("cache"))
    model_dir = str(tmp_path_factory.mktemp("model"))
    env = {"MTKD_CACHE": cache}
    result = run_cli(
        "--flagfile=configs/tiny.cfg", f"--tasks={TASKS}", f"--model_dir={model_dir}", "--epochs=7", env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return model_dir, env, result


@pytest.mark.slow
def test_train_lowers_loss_and_writes_glue_metrics(trained):
    model_dir, _, result = trained
    with open(os.path.join(model_dir, "history.json")) as handle:
        history = json.load(handle)
    assert [row["epoch"] for row in history] == list(range(7))  # --epochs on the command line beats the flagfile
    for key in ("loss", "sst2_loss", "mnli_loss", "stsb_loss"):
        assert history[-1][key] < 0.85 * history[0][key], (key, history[0][key], history[-1][key])
    with open(os.path.join(model_dir, "eval_results.json")) as handle:
        results = json.load(handle)
    assert set(results) == {"sst2", "mnli", "stsb"}
    assert set(results["mnli"]) == {"accuracy_matched", "accuracy_mismatched"}
    assert set(results["stsb"]) == {"pearson", "spearman"}
    assert results["sst2"]["accuracy"] > 0.75, results  # the sample's sentiment rule is learnable
    assert results["stsb"]["pearson"] > 0.3, results
    for name in ("model.keras", "vocab.txt", "preprocessing.json"):
        assert os.path.isfile(os.path.join(model_dir, name))
    assert os.listdir(os.path.join(model_dir, "logs"))  # TensorBoard
    assert "sst2_loss" in result.stdout + result.stderr


@pytest.mark.slow
def test_evaluate_and_predict_from_the_model_dir(trained):
    model_dir, env, _ = trained
    with open(os.path.join(model_dir, "eval_results.json")) as handle:
        before = json.load(handle)
    result = run_cli(
        "--flagfile=configs/tiny.cfg", f"--tasks={TASKS}", f"--model_dir={model_dir}", "--mode=evaluate", env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(model_dir, "eval_results.json")) as handle:
        after = json.load(handle)
    for task, metrics in before.items():
        for name, value in metrics.items():
            assert after[task][name] == pytest.approx(value, abs=1e-6)
    result = run_cli(
        "--flagfile=configs/tiny.cfg", f"--tasks={TASKS}", f"--model_dir={model_dir}", "--mode=predict", env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = os.path.join(model_dir, "predictions")
    assert sorted(os.listdir(out)) == ["AX.tsv", "MNLI-m.tsv", "MNLI-mm.tsv", "SST-2.tsv", "STS-B.tsv"]
    with open(os.path.join(out, "MNLI-m.tsv")) as handle:
        lines = handle.read().splitlines()
    assert lines[0] == "index\tprediction" and lines[1].startswith("0\t")
    assert {line.split("\t")[1] for line in lines[1:]} <= {"entailment", "neutral", "contradiction"}
    with open(os.path.join(out, "STS-B.tsv")) as handle:
        scores = [float(line.split("\t")[1]) for line in handle.read().splitlines()[1:]]
    assert all(0.0 <= s <= 5.0 for s in scores)
    # With mnli among the tasks, AX (scored with the MNLI head) is written too, unasked.
    other = os.path.join(model_dir, "predictions_no_ax")
    result = run_cli(
        "--flagfile=configs/tiny.cfg",
        "--tasks=sst2,mnli,stsb",
        f"--model_dir={model_dir}",
        "--mode=predict",
        f"--output_dir={other}",
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "AX.tsv" in os.listdir(other)


@pytest.mark.slow
def test_failed_run_keeps_what_model_dir_had(trained, tmp_path):
    model_dir, env, _ = trained
    before = {name: _md5(os.path.join(model_dir, name)) for name in ("model.keras", "eval_results.json")}
    bad = tmp_path / "SST-2"
    bad.mkdir()
    (bad / "train.tsv").write_text("sentence\tlabel\ngood\t1\nbad\t5\n")
    result = run_cli(
        "--flagfile=configs/tiny.cfg",
        "--suite=",
        f"--data_dir={tmp_path}",
        "--tasks=sst2",
        f"--model_dir={model_dir}",
        env=env,
    )
    assert result.returncode == 2
    assert "train.tsv:3: label '5' is not one of task sst2's labels" in result.stderr
    assert before == {name: _md5(os.path.join(model_dir, name)) for name in before}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tasks=sst2,nope"], "unknown task(s) nope"),
        (["--batch_size=0"], "batch_size"),
        (["--mode=bogus"], "mode"),
        (["--encoder=random:layers=x"], "bad item 'layers=x'"),
        (["--mode=evaluate", "--model_dir=/nonexistent/model"], "no such directory"),
        (["--model_dir="], "--model_dir is required"),
        (["--encoder=no_such_preset"], "unknown encoder 'no_such_preset'"),
        (["--checkpoint_every_steps=-1"], "--checkpoint_every_steps=-1: -1 is not a non-negative integer"),
        (["--mode=distill", "--alpha=1.5"], "--alpha must be in [0, 1], got 1.5"),
        (["--mode=distill", "--task_alpha=rte:-0.5"], "--task_alpha rte must be in [0, 1], got -0.5"),
        (["--mode=distill", "--task_alpha=rte"], "--task_alpha item 'rte' is not task:alpha"),
        (["--mode=distill", "--temperature=0"], "--temperature must be > 0, got 0.0"),
        # checked before the pipeline's first stage trains anything:
        (["--mode=pipeline", "--teacher_tasks=cola"], "teacher task(s) cola are not among the trained tasks"),
        (["--mode=pipeline", "--task_alpha=cola:0.5"], "--task_alpha names task(s) cola that are not trained"),
        (["--mode=pipeline", "--student_encoder=random:layers=two"], "bad item 'layers=two'"),
        (["--mode=pipeline", "--teacher_dropouts=0.1,1.5"], "teacher dropout must be in [0, 0.99], got 1.5"),
        (["--mode=pipeline", "--teacher_dirs=/nonexistent/t0"], "--teacher_dirs: no trained model in /nonexistent/t0"),
    ],
)
def test_bad_flags_fail_with_a_clear_message(args, message, tmp_path):
    result = run_cli(
        "--flagfile=configs/tiny.cfg", f"--model_dir={tmp_path}/m", *args, env={"MTKD_CACHE": str(tmp_path)}
    )
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-2000:]
    assert "== " not in result.stderr and not os.path.exists(f"{tmp_path}/m/teachers")  # no stage started


def test_one_table_dispatches_every_mode_to_something_that_exists():
    import inspect

    from mtkd_tf import cli, config
    from mtkd_tf.experiment import Experiment, modes

    assert list(cli.MODES) == list(config.MODES)
    for mode, entry in cli.MODES.items():
        named = inspect.getclosurevars(entry.run).nonlocals.get("name")  # _in_modes' and _experiment_method's
        if entry.run.__qualname__.startswith("_in_modes"):
            assert callable(getattr(modes, named)), mode
        elif entry.run.__qualname__.startswith("_experiment_method"):
            assert entry.needs_experiment and callable(getattr(Experiment, named)), mode
        else:
            assert entry.run is cli._report and not entry.needs_experiment
