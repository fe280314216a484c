"""data_source=hf: Hugging Face datasets that the tests write themselves (save_to_disk, Parquet,
JSON Lines, CSV, the local datasets cache), read and trained on with the hub turned off."""

import dataclasses
import glob
import json
import os
import socket
import sys
import time

import datasets  # noqa: E402  (the test extra installs it)
import numpy as np
import pytest
from conftest import ROOT

import mtkd_tf as mt
from mtkd_tf.data import readers
from mtkd_tf.data.readers import DataError
from mtkd_tf.data.tasks import GLUE_TASKS, TaskError, load_task_file

SST2_NAMES = ["negative", "positive"]
REVIEWS_TASK_FILE = """\
tasks:
  - name: reviews
    type: classification
    text_columns: [review]
    label_column: verdict
  - name: notes
    type: classification
    labels: [low, high]
    text_columns: [note, context]
    label_column: grade
"""


def _glue(glue_dir, name, split):
    return readers.load_split(GLUE_TASKS[name], split, data_dir=glue_dir)


def _sst2(glue_dir, split, label=None):
    data = _glue(glue_dir, "sst2", split)
    features = datasets.Features(
        {
            "sentence": datasets.Value("string"),
            "label": datasets.ClassLabel(names=SST2_NAMES),
            "idx": datasets.Value("int32"),
        }
    )
    labels = [-1] * len(data) if data.labels is None else data.labels.tolist()
    return datasets.Dataset.from_dict(
        {"sentence": data.text_a, "label": labels if label is None else label(labels), "idx": list(range(len(data)))},
        features=features,
    )


@pytest.fixture(scope="module")
def hf_dir(glue_dir, tmp_path_factory):
    """GLUE-shaped sst2 (save_to_disk), stsb (Parquet written by pyarrow), mnli (CSV), and a task
    file's tasks: reviews (hub-layout Parquet shards, ClassLabel, no labels listed) and notes (JSON Lines)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("hf")
    datasets.DatasetDict(
        {"train": _sst2(glue_dir, "train"), "validation": _sst2(glue_dir, "dev"), "test": _sst2(glue_dir, "test")}
    ).save_to_disk(str(root / "sst2"))
    (root / "stsb").mkdir()
    for split, ours in (("train", "train"), ("validation", "dev")):
        data = _glue(glue_dir, "stsb", ours)
        pq.write_table(
            pa.table(
                {
                    "sentence1": data.text_a,
                    "sentence2": data.text_b,
                    "label": pa.array(data.labels, pa.float32()),
                    "idx": pa.array(range(len(data)), pa.int32()),
                }
            ),
            str(root / "stsb" / f"{split}.parquet"),
        )
    (root / "mnli").mkdir()
    for split, ours in (
        ("train", "train"),
        ("validation_matched", "dev_matched"),
        ("validation_mismatched", "dev_mismatched"),
    ):
        data = _glue(glue_dir, "mnli", ours)
        datasets.Dataset.from_dict(
            {
                "premise": data.text_a,
                "hypothesis": data.text_b,
                "label": data.labels.tolist(),
                "idx": list(range(len(data))),
            }
        ).to_csv(str(root / "mnli" / f"{split}.csv"), index=False)
    (root / "reviews" / "data").mkdir(parents=True)
    for split, ours in (("train", "train"), ("validation", "dev")):
        data = _glue(glue_dir, "cola", ours)
        features = datasets.Features(
            {"review": datasets.Value("string"), "verdict": datasets.ClassLabel(names=["bad", "good"])}
        )
        datasets.Dataset.from_dict(
            {"review": data.text_a, "verdict": data.labels.tolist()}, features=features
        ).to_parquet(str(root / "reviews" / "data" / f"{split}-00000-of-00001.parquet"))
    (root / "notes").mkdir()
    for split, ours in (("train", "train"), ("validation", "dev")):
        data = _glue(glue_dir, "rte", ours)
        with open(root / "notes" / f"{split}.jsonl", "w", encoding="utf-8") as handle:
            for a, b, label in zip(data.text_a, data.text_b, data.labels, strict=True):
                handle.write(json.dumps({"note": a, "context": b, "grade": ["low", "high"][label]}) + "\n")
    (root / "tasks.yaml").write_text(REVIEWS_TASK_FILE)
    return str(root)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty datasets cache of this test's own (what the user's cache is to a reader)."""
    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    return cache


@pytest.fixture
def no_network(monkeypatch):
    """Every attempt to resolve a name or open a connection is recorded (and refused)."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("the network is off in this test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


def test_glue_tasks_read_from_save_to_disk_parquet_and_csv_with_hf_names(hf_dir, glue_dir, hf_cache, no_network):
    for name, split in (
        ("sst2", "train"),
        ("sst2", "dev"),
        ("stsb", "train"),
        ("stsb", "dev"),
        ("mnli", "train"),
        ("mnli", "dev_matched"),
        ("mnli", "dev_mismatched"),
    ):
        data = readers.load_split(GLUE_TASKS[name], split, source="hf", data_dir=hf_dir)
        tsv = _glue(glue_dir, name, split)
        assert data.text_a == tsv.text_a and data.text_b == tsv.text_b, (name, split)
        np.testing.assert_allclose(data.labels, tsv.labels, rtol=1e-6)  # ClassLabel ids, float32 scores, CSV ints
        assert data.labels.dtype == tsv.labels.dtype and data.ids == tsv.ids
    matched = readers.load_split(GLUE_TASKS["mnli"], "dev_matched", source="hf", data_dir=hf_dir)
    assert matched.source.endswith("split 'validation_matched'")
    test = readers.load_split(GLUE_TASKS["sst2"], "test", source="hf", data_dir=hf_dir)
    assert test.labels is None and test.ids[:2] == ["sst2/test/0", "sst2/test/1"]  # GLUE's idx: the leaderboard index
    assert no_network == []


def test_a_task_files_tasks_take_columns_and_classlabel_names(hf_dir, glue_dir, hf_cache, no_network):
    known = load_task_file(os.path.join(hf_dir, "tasks.yaml"))
    assert known["reviews"].labels == ()  # the ClassLabel column names them
    reviews = readers.load_split(known["reviews"], "dev", source="hf", data_dir=hf_dir)
    assert reviews.task.labels == ("bad", "good")
    cola = _glue(glue_dir, "cola", "dev")
    assert reviews.text_a == cola.text_a and reviews.labels.tolist() == cola.labels.tolist()
    assert reviews.ids[:2] == ["reviews/dev/0", "reviews/dev/1"]  # no idx column: the row's position
    notes = readers.load_split(known["notes"], "train", source="hf", data_dir=hf_dir)
    rte = _glue(glue_dir, "rte", "train")
    assert notes.text_b == rte.text_b and notes.labels.tolist() == rte.labels.tolist()
    with pytest.raises(DataError, match="task 'reviews' lists no labels: list them in its task file"):
        readers.load_split(known["reviews"], "train", source="tsv", data_dir=hf_dir)
    assert no_network == []


def _cache_glue(cache, name, splits):
    """Writes `splits` ({hf split: Dataset}) into the datasets cache as load_dataset('nyu-mll/glue', name)
    leaves them there (the Parquet builder under the hub's directory names)."""
    from datasets.packaged_modules.parquet.parquet import Parquet

    files = {}
    for split, dataset in splits.items():
        files[split] = str(cache.parent / f"{name}-{split}.parquet")
        dataset.to_parquet(files[split])
    builder = Parquet(
        cache_dir=str(cache),
        dataset_name="glue",
        config_name=name,
        data_files=files,
        features=next(iter(splits.values())).features,
        hash="0123456789abcdef",
    )
    builder.download_and_prepare()
    (cache / "nyu-mll___glue").mkdir(exist_ok=True)
    os.rename(glob.glob(str(cache / "glue" / f"{name}-*"))[0], cache / "nyu-mll___glue" / name)


def test_a_glue_task_missing_on_disk_loads_from_the_datasets_cache_with_the_hub_off(
    hf_dir, glue_dir, hf_cache, no_network
):
    offline_before = datasets.config.HF_HUB_OFFLINE
    _cache_glue(hf_cache, "sst2", {"train": _sst2(glue_dir, "train"), "validation": _sst2(glue_dir, "dev")})
    for data_dir in (str(hf_cache.parent / "elsewhere"), None):  # not in data_dir, or no data_dir at all
        data = readers.load_split(GLUE_TASKS["sst2"], "dev", source="hf", data_dir=data_dir)
        tsv = _glue(glue_dir, "sst2", "dev")
        assert data.text_a == tsv.text_a and data.labels.tolist() == tsv.labels.tolist()
        assert data.source == "Hugging Face dataset nyu-mll/glue (config sst2) (cached) split 'validation'"
    # a task file's task names its hub dataset, config and split mapping itself
    mine = load_task_file(
        _task_file(
            hf_cache.parent,
            "text_columns: [sentence]\n    hf_name: nyu-mll/glue\n    hf_config: sst2\n    hf_splits: {dev: train}",
        )
    )["mine"]
    data = readers.load_split(mine, "dev", source="hf", data_dir=None)
    assert data.task.labels == tuple(SST2_NAMES) and data.text_a == _glue(glue_dir, "sst2", "train").text_a
    assert no_network == [] and datasets.config.HF_HUB_OFFLINE == offline_before  # the hub's setting restored


def test_bin_run_reads_data_source_hf_and_reports_a_missing_dataset(tmp_path):
    from conftest import run_cli

    result = run_cli(
        "--flagfile=configs/tiny.cfg",
        "--suite=",
        "--data_source=hf",
        f"--data_dir={tmp_path}",
        "--tasks=sst2",
        "--mode=train",
        f"--model_dir={tmp_path / 'm'}",
        env={"HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0"},
        timeout=300,
    )
    assert result.returncode != 0
    assert (
        f"task 'sst2': no dataset at {tmp_path}/sst2, and the Hugging Face dataset nyu-mll/glue (config sst2) "
        "is not in the datasets cache" in result.stderr
    ), result.stderr[-3000:]
    assert "Traceback" not in result.stderr


def test_a_dataset_neither_on_disk_nor_in_the_cache_fails_at_once_without_the_network(tmp_path, hf_cache, no_network):
    started = time.time()
    with pytest.raises(DataError) as error:
        readers.load_split(GLUE_TASKS["rte"], "train", source="hf", data_dir=str(tmp_path))
    message = str(error.value)
    assert f"task 'rte': no dataset at {tmp_path}/rte" in message
    assert f"the Hugging Face dataset nyu-mll/glue (config rte) is not in the datasets cache {hf_cache}" in message
    assert "nothing was downloaded" in message
    assert time.time() - started < 20 and no_network == []
    custom = load_task_file(_task_file(tmp_path, "labels: [a, b]\n    text_columns: [text]"))["mine"]
    with pytest.raises(
        DataError,
        match=r"task 'mine': no dataset at .*/mine, and the task names no Hugging Face dataset "
        r"\(hf_name\)",
    ):
        readers.load_split(custom, "train", source="hf", data_dir=str(tmp_path))


def _task_file(tmp_path, fields):
    path = tmp_path / "tasks.yaml"
    path.write_text(f"tasks:\n  - name: mine\n    type: classification\n    {fields}\n")
    return str(path)


def _parquet(directory, split, columns):
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(directory, exist_ok=True)
    pq.write_table(pa.table(columns), os.path.join(directory, f"{split}.parquet"))


def test_a_missing_column_is_named_with_the_columns_there(tmp_path, hf_cache):
    _parquet(tmp_path / "sst2", "train", {"text": ["a fine film"], "label": [1]})
    with pytest.raises(
        DataError,
        match=rf"{tmp_path}/sst2 split 'train': no text column 'sentence' among the columns "
        r"\['text', 'label'\]",
    ):
        readers.load_split(GLUE_TASKS["sst2"], "train", source="hf", data_dir=str(tmp_path))
    _parquet(tmp_path / "mine", "train", {"text": ["a fine film"], "label": ["a"]})
    task = load_task_file(_task_file(tmp_path, "labels: [a, b]\n    text_columns: [text]\n    label_column: stars"))[
        "mine"
    ]
    with pytest.raises(
        DataError, match=r"split 'train': no label column 'stars' among the columns \['text', 'label'\]"
    ):
        readers.load_split(task, "train", source="hf", data_dir=str(tmp_path))


def test_a_label_outside_the_names_names_the_row(tmp_path, glue_dir, hf_cache, caplog):
    datasets.DatasetDict(
        {"train": _sst2(glue_dir, "train", label=lambda labels: [labels[0], -1, *labels[2:]])}
    ).save_to_disk(str(tmp_path / "sst2"))
    with pytest.raises(
        DataError,
        match=r"sst2 \(save_to_disk\) split 'train', row 1: label -1 is outside the ClassLabel "
        r"names \['negative', 'positive'\] \(ids 0..1\) \(fix the row, or set skip_bad_rows",
    ):
        readers.load_split(GLUE_TASKS["sst2"], "train", source="hf", data_dir=str(tmp_path))
    data = readers.load_split(GLUE_TASKS["sst2"], "train", source="hf", data_dir=str(tmp_path), skip_bad_rows=True)
    assert len(data) == 63 and "sst2/train/1" not in data.ids and "skipped 1 bad row(s)" in caplog.text
    _parquet(tmp_path / "mine", "train", {"text": ["good", "meh"], "label": ["a", "meh"]})
    task = load_task_file(_task_file(tmp_path, "labels: [a, b]\n    text_columns: [text]"))["mine"]
    with pytest.raises(
        DataError, match=r"split 'train', row 1: label 'meh' is not one of task mine's labels \['a', 'b'\]"
    ):
        readers.load_split(task, "train", source="hf", data_dir=str(tmp_path))
    _parquet(tmp_path / "mine", "train", {"text": ["good", "meh"], "label": [1, 7]})  # ints: class ids
    with pytest.raises(DataError, match=r"row 1: label 7 is outside task mine's labels \['a', 'b'\] \(ids 0..1\)"):
        readers.load_split(task, "train", source="hf", data_dir=str(tmp_path))
    # ClassLabel names the task does not know: refused before any row
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["x", "y"])})
    datasets.Dataset.from_dict({"text": ["t"], "label": [0]}, features=features).to_parquet(
        str(tmp_path / "mine" / "train.parquet")
    )
    with pytest.raises(
        DataError, match=r"the ClassLabel names \['x', 'y'\] of column 'label' are not task 'mine''s labels"
    ):
        readers.load_split(task, "train", source="hf", data_dir=str(tmp_path))


def test_an_empty_split_is_refused(tmp_path, hf_cache):
    import pyarrow as pa

    _parquet(tmp_path / "sst2", "train", {"sentence": pa.array([], pa.string()), "label": pa.array([], pa.int64())})
    with pytest.raises(DataError, match=r"sst2/train.parquet: no examples in split 'train'"):
        readers.load_split(GLUE_TASKS["sst2"], "train", source="hf", data_dir=str(tmp_path))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "train.csv").write_text("text,label\n")
    task = load_task_file(_task_file(tmp_path, "labels: [a, b]\n    text_columns: [text]"))["mine"]
    with pytest.raises(DataError, match=r"mine/train.csv: no examples in split 'train'"):
        readers.load_split(task, "train", source="hf", data_dir=str(tmp_path))
    empty = datasets.Dataset.from_dict(
        {"sentence": [], "label": []},
        features=datasets.Features(
            {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=SST2_NAMES)}
        ),
    )
    datasets.DatasetDict({"train": empty}).save_to_disk(str(tmp_path / "rte"))
    with pytest.raises(DataError, match=r"rte \(save_to_disk\): no examples in split 'train'"):
        readers.load_split(GLUE_TASKS["rte"], "train", source="hf", data_dir=str(tmp_path))


def test_a_split_that_does_not_exist_lists_the_splits_there(tmp_path, hf_cache):
    _parquet(tmp_path / "sst2", "train", {"sentence": ["a fine film"], "label": [1]})
    with pytest.raises(
        DataError,
        match=rf"{tmp_path}/sst2: no split 'validation' \(split 'dev' of task 'sst2'\); "
        r"its splits: train",
    ):
        readers.load_split(GLUE_TASKS["sst2"], "dev", source="hf", data_dir=str(tmp_path))
    _parquet(tmp_path / "mine", "train", {"text": ["a"], "label": ["a"]})
    task = load_task_file(_task_file(tmp_path, "labels: [a, b]\n    text_columns: [text]"))["mine"]
    with pytest.raises(
        DataError, match=r"no split 'validation' or 'dev' \(split 'dev' of task 'mine'\); its splits: train"
    ):
        readers.load_split(task, "dev", source="hf", data_dir=str(tmp_path))
    with pytest.raises(DataError, match=r"task 'sst2' has no split 'validation'; its splits: train, dev, test"):
        readers.load_split(GLUE_TASKS["sst2"], "validation", source="hf", data_dir=str(tmp_path))


def test_what_is_not_a_dataset_and_labels_without_a_classlabel(tmp_path, glue_dir, hf_cache):
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "notes.txt").write_text("nothing here")
    with pytest.raises(
        DataError, match=r"sst2: neither a save_to_disk directory .* nor Parquet / JSON Lines / CSV files"
    ):
        readers.load_split(GLUE_TASKS["sst2"], "train", source="hf", data_dir=str(tmp_path))
    _sst2(glue_dir, "dev").save_to_disk(str(tmp_path / "rte"))
    with pytest.raises(DataError, match=r"rte: a single Dataset saved with save_to_disk, without split names"):
        readers.load_split(GLUE_TASKS["rte"], "train", source="hf", data_dir=str(tmp_path))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "train.jsonl").write_text('{"text": "fine", "label": "a"}\n{"text": "broken\n')
    notes = load_task_file(_task_file(tmp_path, "labels: [a, b]\n    text_columns: [text]"))["mine"]
    with pytest.raises(DataError, match=r"notes/train.jsonl: cannot read as json: "):
        readers.load_split(dataclasses.replace(notes, name="notes"), "train", source="hf", data_dir=str(tmp_path))
    _parquet(tmp_path / "mine", "train", {"text": ["a"], "label": ["a"]})
    task = load_task_file(_task_file(tmp_path, "text_columns: [text]"))["mine"]
    with pytest.raises(
        TaskError,
        match=r"task 'mine' lists no labels, and its label column 'label' in .* is "
        r"Value\('string'\), not a ClassLabel",
    ):
        readers.load_split(task, "train", source="hf", data_dir=str(tmp_path))


def test_without_the_datasets_library_the_error_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets raises ImportError
    _parquet(tmp_path / "sst2", "train", {"sentence": ["a fine film"], "label": [1]})
    with pytest.raises(
        DataError, match=r"Hugging Face datasets library, which is not installed: pip install 'mtkd_tf\[hf\]'"
    ):
        readers.load_split(GLUE_TASKS["sst2"], "train", source="hf", data_dir=str(tmp_path))


@pytest.mark.slow
def test_the_pipeline_runs_on_hugging_face_datasets(hf_dir, tmp_path, monkeypatch, hf_cache, no_network):
    monkeypatch.setenv("MTKD_CACHE", str(tmp_path / "cache"))
    config = mt.ExperimentConfig.from_flagfile(
        os.path.join(ROOT, "configs/tiny.cfg"),
        model_dir=str(tmp_path / "kd"),
        suite=None,
        data_source="hf",
        data_dir=hf_dir,
        task_file=os.path.join(hf_dir, "tasks.yaml"),
        tasks=["sst2", "stsb", "reviews"],
        num_teachers=1,
        train_baseline=False,
        epochs=1,
        teacher_tasks=["sst2", "reviews"],
        verbose=0,
        max_train_examples=32,
        max_eval_examples=16,
        max_seq_length=32,
    )
    report = mt.Experiment(config).run()
    assert set(report["results"]) == {"sst2", "stsb", "reviews"}
    assert report["rows"] == ["member_0", "ensemble", "student"]
    assert all(os.path.isfile(tmp_path / "kd" / "soft_labels" / f"{name}.npz") for name in ("sst2", "reviews"))
    for metrics in report["results"].values():
        for values in metrics.values():
            assert all(np.isfinite(values[row]) for row in report["rows"])
    student = mt.load_model(str(tmp_path / "kd" / "student"))
    assert {task.name: task.labels for task in student.tasks}["reviews"] == ("bad", "good")
    assert student.predict_texts("reviews", ["the old film shows a dog ."])["label"][0] in ("bad", "good")
    assert no_network == []


def test_ax_joins_mnli_for_prediction_when_its_hf_test_split_is_there(tmp_path, hf_cache, no_network):
    from mtkd_tf.data.tasks import registry, resolve_tasks
    from mtkd_tf.export import submission

    known = registry()
    mnli = resolve_tasks("mnli", known)
    tasks, skipped = submission.prediction_tasks(mnli, known, str(tmp_path), source="hf")
    assert tasks == mnli and len(skipped) == 1
    assert skipped[0].startswith(
        f"AX skipped: task 'ax': no dataset at {tmp_path}/ax, and the Hugging Face dataset "
        "nyu-mll/glue (config ax) is not in the datasets cache"
    )
    datasets.DatasetDict(
        {
            "test": datasets.Dataset.from_dict(
                {"premise": ["a dog runs"], "hypothesis": ["an animal moves"], "label": [-1], "idx": [0]}
            )
        }
    ).save_to_disk(str(tmp_path / "ax"))
    tasks, skipped = submission.prediction_tasks(mnli, known, str(tmp_path), source="hf")
    assert [task.name for task in tasks] == ["mnli", "ax"] and skipped == []
    assert no_network == []
