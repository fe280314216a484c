"""Soft targets from a file (`--soft_labels_file=task:PATH`, issue #43 item 3): the formats, every
refusal with its file and line, and a student distilled from a file with no teacher trained."""

import dataclasses
import json
import os

import numpy as np
import pytest
from conftest import ROOT, run_cli

import mtkd_tf as mt
from mtkd_tf.data.split import SplitData
from mtkd_tf.data.tasks import GLUE_TASKS
from mtkd_tf.distill import soft_label_file as slf
from mtkd_tf.distill.soft_labels import SoftLabelError, read

SST2, STSB, MRPC = GLUE_TASKS["sst2"], GLUE_TASKS["stsb"], GLUE_TASKS["mrpc"]


def _split(task=SST2, pairs=False):
    texts = ["a fine film", "a dull film", "a long film"]
    return SplitData(
        task,
        "train",
        [f"{task.name}/train/{k}" for k in range(3)],
        texts,
        text_b=["x", "y", "z"] if pairs else None,
        labels=np.array([1, 0, 1]) if task.type == "classification" else np.array([4.0, 1.0, 2.5]),
    )


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_json_lines_by_id_with_labels_by_name_or_in_order(tmp_path):
    rows = [
        {"id": "sst2/train/0", "probabilities": {"1": 0.9, "0": 0.1}},
        {"id": "sst2/train/1", "probabilities": [0.7, 0.3]},
        {"id": "sst2/train/2", "probabilities": [0.4, 0.6]},
        {"id": "sst2/dev/9", "probabilities": [0.5, 0.5]},  # not in the data: ignored
    ]
    path = _write(tmp_path, "t.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    (targets,) = slf.read_targets(path, SST2, [_split()])
    np.testing.assert_allclose(targets, [[0.1, 0.9], [0.7, 0.3], [0.4, 0.6]], rtol=1e-6)
    (hot,) = slf.read_targets(path, SST2, [_split()], temperature=2.0)  # p^(1/2), renormalised
    expected = np.sqrt([0.1, 0.9]) / np.sqrt([0.1, 0.9]).sum()
    np.testing.assert_allclose(hot[0], expected, rtol=1e-6)


def test_csv_and_tsv_by_text_and_regression_scores(tmp_path):
    path = _write(tmp_path, "t.csv", "text,0,1\na fine film,0.2,0.8\na dull film,0.9,0.1\na long film,0.5,0.5\n")
    (targets,) = slf.read_targets(path, SST2, [_split()])
    np.testing.assert_allclose(targets[:, 1], [0.8, 0.1, 0.5], rtol=1e-6)
    path = _write(
        tmp_path, "p.tsv", "text\ttext_b\t0\t1\na fine film\tx\t1\t0\na dull film\ty\t0\t1\na long film\tz\t0.5\t0.5\n"
    )
    (targets,) = slf.read_targets(path, MRPC, [_split(MRPC, pairs=True)])
    assert targets.shape == (3, 2) and targets[0, 0] == 1
    path = _write(
        tmp_path, "s.jsonl", "".join(json.dumps({"id": f"stsb/train/{k}", "score": k + 0.5}) + "\n" for k in range(3))
    )
    (scores,) = slf.read_targets(path, STSB, [_split(STSB)])
    assert scores.tolist() == [0.5, 1.5, 2.5] and scores.dtype == np.float32


@pytest.mark.parametrize(
    "name, text, message",
    [
        (
            "a.jsonl",
            '{"id": "sst2/train/0", "probabilities": [0.9, 0.2]}\n',
            "line 1: probabilities [0.9, 0.2] are negative or do not sum to 1 (1.1000)",
        ),
        (
            "a.jsonl",
            '{"id": "sst2/train/0", "probabilities": [1.0]}\n',
            "line 1: 1 probabilities, task sst2 has 2 labels",
        ),
        ("a.jsonl", '{"id": "sst2/train/0", "probabilities": {"pos": 1.0, "0": 0}}\n', "unknown: ['pos']"),
        ("a.jsonl", '\n{"probabilities": [0.5, 0.5]}\n', 'line 2: no "id" or "text"'),
        ("a.jsonl", '{"id": "sst2/train/0", "probabilities": [0.5, 0.5]}\n{oops\n', "line 2: not JSON"),
        ("a.jsonl", '{"id": "sst2/train/0", "probabilities": [0.5, "a"]}\n', "line 1: 'a' is not a finite number"),
        (
            "a.jsonl",
            '{"id": "sst2/train/0", "probabilities": [0.5, 0.5]}\n' * 2,
            "line 2: id 'sst2/train/0' is also on line 1",
        ),
        (
            "a.jsonl",
            '{"id": "sst2/train/0", "probabilities": [0.5, 0.5]}\n',
            "no row for 2 of the 3 examples of sst2/train, e.g. sst2/train/1",
        ),
        ("a.csv", "id,0,1\nsst2/train/0,0.5\n", "line 2: 3 columns in the header (id, 0, 1), a different number here"),
        ("a.csv", "id,0,1\nsst2/train/0,0.5,half\n", "line 2: column '1' is not a number: 'half'"),
        ("a.txt", "", "unknown extension"),
    ],
)
def test_each_problem_is_refused_naming_the_file_and_line(tmp_path, name, text, message):
    path = _write(tmp_path, name, text)
    with pytest.raises(SoftLabelError) as error:
        slf.read_targets(path, SST2, [_split()])
    assert str(error.value).startswith(f"soft labels file {path}") and message in str(error.value), error.value


def test_a_missing_file_and_the_flag_items(tmp_path):
    with pytest.raises(SoftLabelError, match="no such file"):
        slf.read_targets(str(tmp_path / "none.jsonl"), SST2, [_split()])
    config = mt.ExperimentConfig.from_flagfile(
        os.path.join(ROOT, "configs/tiny.cfg"), soft_labels_file={"sst2": "gs://bucket/sst2.jsonl"}
    )
    assert config.teachers.soft_labels_file == {"sst2": "gs://bucket/sst2.jsonl"}
    from mtkd_tf.config import GROUP_OF_FIELD, from_flag_value

    field = {f.name: f for f in dataclasses.fields(GROUP_OF_FIELD["soft_labels_file"])}["soft_labels_file"]
    assert from_flag_value(field, ["sst2:gs://b/x.csv"]) == {"sst2": "gs://b/x.csv"}
    with pytest.raises(mt.ConfigError, match="soft_labels_file item 'sst2' is not task:PATH"):
        from_flag_value(field, ["sst2"])


def _config(root, **overrides):
    settings = dict(
        model_dir=str(root),
        tasks=["sst2", "stsb"],
        teacher_tasks=["sst2"],
        epochs=2,
        verbose=0,
        max_train_examples=64,
        max_eval_examples=32,
        teacher_check="skip",
    )
    return mt.ExperimentConfig.from_flagfile(os.path.join(ROOT, "configs/tiny.cfg"), **{**settings, **overrides})


@pytest.mark.slow
def test_a_student_distils_from_a_file_with_no_teacher_trained(tmp_path, monkeypatch):
    monkeypatch.setenv("MTKD_CACHE", str(tmp_path / "cache"))
    train = mt.Experiment(_config(tmp_path / "kd")).data.train["sst2"]
    rows = [
        {"id": i, "probabilities": [0.2, 0.8] if y else [0.8, 0.2]}
        for i, y in zip(train.ids, train.labels.tolist(), strict=True)
    ]
    path = _write(tmp_path, "llm.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    experiment = mt.Experiment(_config(tmp_path / "kd", soft_labels_file={"sst2": path}))
    assert [stage.name for stage in experiment.stages()][:2] == ["soft_labels", "student"]  # no teachers stage
    report = experiment.run()
    assert not os.path.exists(tmp_path / "kd" / "teachers")
    soft = read(str(tmp_path / "kd" / "soft_labels" / "sst2.npz"))
    assert soft.metadata["teachers"] == [path] and soft.metadata["source_sha256"] == slf.file_digest(path)
    np.testing.assert_allclose(soft.targets[:, 1], np.where(train.labels == 1, 0.8, 0.2), rtol=1e-6)
    history = json.load(open(tmp_path / "kd" / "student" / "history.json"))
    assert all(row["sst2_soft"] > 0 for row in history)
    assert report["teacher_check"]["tasks"]["sst2"]["decision"] == f"not checked: soft targets from the file {path}"
    assert set(report["rows"]) == {"baseline", "student"}
    # a re-run finds the soft labels done; a changed file makes them again
    again = mt.Experiment(_config(tmp_path / "kd", soft_labels_file={"sst2": path}))
    from mtkd_tf.experiment.stages import SoftLabels

    assert SoftLabels(again.ctx).done()
    open(path, "a").write("\n")
    assert not SoftLabels(again.ctx).done()


@pytest.mark.slow
def test_the_command_line_refuses_a_bad_file_without_a_traceback(tmp_path):
    path = _write(tmp_path, "bad.jsonl", '{"id": "sst2/train/0", "probabilities": [0.9, 0.3]}\n')
    result = run_cli(
        "--flagfile=configs/tiny.cfg",
        "--tasks=sst2,stsb",
        "--teacher_tasks=sst2",
        "--mode=soft_labels",
        f"--soft_labels_file=sst2:{path}",
        f"--model_dir={tmp_path / 'kd'}",
        env={"MTKD_CACHE": str(tmp_path / "cache")},
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"soft labels file {path}, line 1: probabilities [0.9, 0.3]" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_cli(
        "--flagfile=configs/tiny.cfg",
        "--tasks=sst2,stsb",
        "--teacher_tasks=sst2",
        "--mode=soft_labels",
        f"--soft_labels_file=stsb:{path}",
        f"--model_dir={tmp_path / 'kd2'}",
        env={"MTKD_CACHE": str(tmp_path / "cache")},
    )
    assert result.returncode == 2 and "soft_labels_file names stsb, not among the teacher tasks sst2" in result.stderr
    assert "Traceback" not in result.stderr
