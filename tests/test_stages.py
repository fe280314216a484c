"""The stage protocol: the runner skips done stages (one log line, in one place), refuses stages whose
inputs are missing, and a stage can make data that later stages read; the layout owns every name."""

import json
import logging
import os
import re

import numpy as np
import pytest
from conftest import ROOT

import mtkd_tf as mt
from mtkd_tf.data.examples_file import read_examples, write_examples
from mtkd_tf.data.split import DataError, SplitData
from mtkd_tf.experiment import gate as gate_lib
from mtkd_tf.experiment import layout as layout_lib
from mtkd_tf.experiment import modes
from mtkd_tf.experiment.output_cache import OutputCache
from mtkd_tf.experiment.stages import MakeExamples, Stage, StageInputError


def _experiment(tmp_path, monkeypatch, **overrides):
    monkeypatch.setenv("MTKD_CACHE", str(tmp_path / "cache"))
    settings = dict(model_dir=str(tmp_path / "kd"), tasks=["sst2", "stsb"], teacher_tasks=["sst2"], verbose=0)
    settings.update(overrides)
    return mt.Experiment(mt.ExperimentConfig.from_flagfile(os.path.join(ROOT, "configs/tiny.cfg"), **settings))


class _Recorder(Stage):
    """A stage that writes one file, with its inputs and its completion under the test's control."""

    name = "recorder"

    def __init__(self, ctx, path, needs=()):
        super().__init__(ctx)
        self.path, self.needs, self.runs = path, list(needs), 0

    def inputs(self):
        return self.needs

    def outputs(self):
        return [self.path]

    def done(self):
        return os.path.isfile(self.path)

    def run(self):
        self.runs += 1
        with open(self.path, "w") as handle:
            handle.write("made")
        return "ran"


def _records(logger_name="mtkd_tf"):
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return records, lambda: logger.removeHandler(handler)


def test_the_runner_skips_a_done_stage_with_one_line_and_refuses_missing_inputs(tmp_path, monkeypatch):
    experiment = _experiment(tmp_path, monkeypatch)
    os.makedirs(experiment.layout.root, exist_ok=True)
    stage = _Recorder(experiment.ctx, str(tmp_path / "kd" / "made.txt"))
    records, stop = _records()
    try:
        assert stage() == "ran" and stage.runs == 1
        assert stage() == [stage.path] and stage.runs == 1  # done: skipped, its outputs returned
    finally:
        stop()
    skipped = [line for line in records if "skipping" in line]
    assert skipped == [f"recorder is done, skipping ({stage.path})"]

    missing = str(tmp_path / "nowhere" / "model")
    blocked = _Recorder(experiment.ctx, str(tmp_path / "kd" / "other.txt"), needs=[stage.path, missing])
    with pytest.raises(StageInputError, match=re.escape(missing)) as error:
        blocked()
    assert stage.path not in str(error.value)  # only the missing input is named
    assert blocked.runs == 0 and not os.path.exists(blocked.path)


def test_the_skip_line_is_written_by_the_runner_alone():
    """No stage, recipe or the experiment logs a skip of its own any more."""
    sources = {}
    for folder in ("experiment",):
        directory = os.path.join(ROOT, "mtkd_tf", folder)
        for name in os.listdir(directory):
            if name.endswith(".py"):
                sources[name] = open(os.path.join(directory, name), encoding="utf-8").read()
    writers = [name for name, text in sources.items() if re.search(r"skipping", text)]
    assert writers == ["stages.py"], writers
    assert len(re.findall(r"logger\.info\([^)]*skipping", sources["stages.py"])) == 1


def test_name_patterns_are_built_and_parsed_in_the_layout_alone():
    """`member_<k>`, `_ft`, `_s<n>`, `-finetuned` and `.partial` appear in no other module of mtkd_tf
    (export staging directories keep their own, and runtime/files.py names the `.partial` folder)."""
    pattern = re.compile(
        r"""["'](member_(?![a-z])|_ft|_s["']|-finetuned|\.partial)|f["'][^"']*_s\{|["']finetuned["']"""
    )
    offenders = []
    for folder, _, files in os.walk(os.path.join(ROOT, "mtkd_tf")):
        for name in files:
            path = os.path.join(folder, name)
            relative = os.path.relpath(path, ROOT)
            if not name.endswith(".py") or relative in ("mtkd_tf/experiment/layout.py", "mtkd_tf/runtime/files.py"):
                continue
            if relative.startswith("mtkd_tf/export/"):
                continue
            for number, line in enumerate(open(path, encoding="utf-8"), start=1):
                if pattern.search(line):
                    offenders.append(f"{relative}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_the_layout_builds_and_parses_every_name():
    layout = mt.ExperimentLayout("/r")
    assert layout_lib.member_name(3) == "member_3" and layout_lib.member_index("member_3") == 3
    assert layout_lib.member_index("member_x") is None and layout_lib.member_index("student") is None
    assert layout.member_dir(2) == "/r/teachers/member_2"
    assert layout.finetuned_dir(layout.member_dir(2), "rte") == "/r/teachers/finetuned/rte/member_2"
    assert layout.finetuned_dir(layout.run_dir("student", 1), "rte") == "/r/student_s2-finetuned/rte"
    assert (
        layout_lib.run_row("baseline", 2) == "baseline_s3" and layout_lib.finetuned_row("student", 1) == "student_ft_s2"
    )
    assert layout_lib.seed_runs(["student", "student_ft_s2", "member_0", "student_s2"]) == {
        "student": ["student", "student_s2"],
        "student_ft": ["student_ft_s2"],
    }
    assert layout_lib.members(["member_0", "ensemble", "member_12", "membership"]) == ["member_0", "member_12"]
    assert layout.partial_dir("evaluate") == "/r/.partial/evaluate"
    assert layout.made_examples("sst2", "augmented") == "/r/data/sst2.augmented.jsonl"


class _Augment(MakeExamples):
    """Each training sentence again, reversed word by word: enough to see the data flow through."""

    name = "augment"
    kind = "augmented"

    def make(self, task):
        data = self.ctx.data.train[task]
        texts = [" ".join(reversed(text.split())) for text in data.text_a]
        return SplitData(data.task, "augmented", [f"{i}/reversed" for i in data.ids], texts)


def test_a_stage_makes_examples_that_later_stages_read_and_a_rerun_skips_it(tmp_path, monkeypatch):
    experiment = _experiment(tmp_path, monkeypatch, max_train_examples=20)
    data = experiment.data
    before = data.soft_label_data()["sst2"]
    assert [len(split) for split in before] == [20] and "sst2" not in data.unlabelled
    stage = _Augment(experiment.ctx)
    assert stage() == [experiment.layout.made_examples("sst2", "augmented")]
    made = data.unlabelled["sst2"]
    assert len(made) == 20 and made.labels is None and made.ids[0].endswith("/reversed")
    assert made.text_a[0] == " ".join(reversed(data.train["sst2"].text_a[0].split()))
    assert [len(split) for split in data.soft_label_data()["sst2"]] == [20, 20]  # the teachers label it
    assert experiment.ctx.steps(1, extra=True) > experiment.ctx.steps(1)  # the student trains on it
    mtime = os.path.getmtime(stage.outputs()[0])
    assert _Augment(experiment.ctx)() == stage.outputs() and os.path.getmtime(stage.outputs()[0]) == mtime
    fresh = mt.Experiment(experiment.config)  # a later process reads it through the layout
    assert fresh.data.unlabelled["sst2"].ids == made.ids


def test_an_examples_file_round_trips_and_a_bad_row_names_its_line(tmp_path):
    task = mt.Task("pairs", "classification", labels=("a", "b"), segments=2)
    data = SplitData(task, "x", ["1", "2"], ["first", "second"], ["one", "two"], labels=np.array([0, 1]))
    path = str(tmp_path / "pairs.made.jsonl")
    write_examples(path, data)
    back = read_examples(path, task)
    assert (back.ids, back.text_a, back.text_b, back.labels) == (data.ids, data.text_a, data.text_b, None)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"text_a": "no id"}\n')
    with pytest.raises(DataError, match=re.escape(f"{path}:3")):
        read_examples(path, task)


def test_a_closed_gates_report_is_rebuilt_from_gate_json_alone(tmp_path, monkeypatch):
    experiment = _experiment(tmp_path, monkeypatch)
    root = experiment.layout.root
    os.makedirs(root)
    saved = {
        "margin": 1.0,
        "gain": -0.5,
        "open": False,
        "scores": {"sst2": {"ensemble": 60.0, "baseline": 60.5}},
        "members": {"sst2": ["a", "b"]},
        "verdict": "untestable: the ensemble does not beat one MT-DNN",
        gate_lib.EVIDENCE: {"config": experiment.config.to_dict(), "environment": {"cpu": "test"}},
    }
    with open(experiment.layout.gate_file, "w") as handle:
        json.dump(saved, handle)
    assert gate_lib.closed(root)
    report = modes.report(experiment.config)
    assert report["verdict"] == "untestable" and report["claims"] == []
    assert report["gate"] == {key: value for key, value in saved.items() if key != gate_lib.EVIDENCE}
    assert mt.ExperimentConfig.from_dict(report["config"]) == experiment.config
    assert report["environment"] == {"cpu": "test"}
    assert json.load(open(os.path.join(root, "report.json"))) == report
    assert "-0.50" in open(os.path.join(root, "report.md")).read()


def test_the_output_cache_cleans_up_after_a_finished_evaluation_only(tmp_path):
    directory = tmp_path / ".partial" / "evaluate"
    with OutputCache(str(directory)) as cache:
        os.makedirs(cache.directory)
        (directory / "x.npy").write_bytes(b"")
    assert not directory.exists() and not directory.parent.exists()
    with pytest.raises(RuntimeError):
        with OutputCache(str(directory)):
            os.makedirs(directory)
            raise RuntimeError("stopped")
    assert directory.exists()  # kept: a re-run resumes from it
