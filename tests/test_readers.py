import os

import numpy as np
import pytest

from mtkd_tf.data import readers
from mtkd_tf.data.readers import DataError
from mtkd_tf.data.tasks import GLUE_TASKS, load_task_file


@pytest.mark.parametrize("name", ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"])
def test_each_glue_reader_reads_train_dev_and_test(glue_dir, name):
    task = GLUE_TASKS[name]
    loaded = readers.load_splits([task], ["train", "dev", "test"], data_dir=glue_dir)[name]
    assert set(loaded) == {"train", *task.source.dev_splits, *task.source.test_splits}
    train = loaded["train"]
    assert len(train) == 64
    assert train.ids[:2] == [f"{name}/train/0", f"{name}/train/1"]
    assert (train.text_b is not None) == task.is_pair
    if task.labels:
        assert train.labels.dtype == np.int32 and set(train.labels) <= set(range(task.num_classes))
    else:
        assert train.labels.dtype == np.float32 and 0 <= train.labels.min() and train.labels.max() <= 5
    for split in task.source.test_splits:
        assert loaded[split].labels is None and len(loaded[split]) > 0


def test_quirks_cola_headerless_mnli_columns_and_literal_quotes(glue_dir):
    cola = readers.load_split(GLUE_TASKS["cola"], "train", data_dir=glue_dir)
    with open(os.path.join(glue_dir, "CoLA", "train.tsv")) as handle:
        first = handle.readline().rstrip("\n").split("\t")
    assert cola.text_a[0] == first[3] and cola.labels[0] == int(first[1])
    # MNLI dev has label1..label5 + gold_label (16 columns); train has 12.
    dev = readers.load_split(GLUE_TASKS["mnli"], "dev_mismatched", data_dir=glue_dir)
    with open(os.path.join(glue_dir, "MNLI", "dev_mismatched.tsv")) as handle:
        header, row = handle.readline().split("\t"), handle.readline().rstrip("\n").split("\t")
    assert len(header) == 16
    assert GLUE_TASKS["mnli"].labels[dev.labels[0]] == row[-1]
    # Quote characters stay literal text (QUOTE_NONE), as in the real GLUE files.
    sst2 = readers.load_split(GLUE_TASKS["sst2"], "train", data_dir=glue_dir)
    assert any(text.startswith('"') for text in sst2.text_a)
    ax = readers.load_split(GLUE_TASKS["ax"], "test", data_dir=glue_dir)
    assert ax.labels is None and ax.text_b is not None


def test_custom_csv_task_with_quoting(tmp_path):
    (tmp_path / "reviews").mkdir()
    (tmp_path / "reviews" / "train.csv").write_text('text,stars\n"good, really",pos\nbad,neg\n"multi\nline",pos\n')
    (tmp_path / "tasks.yaml").write_text(
        "tasks:\n  - name: reviews\n    type: classification\n    labels: [neg, pos]\n    text_columns: [text]\n"
        "    label_column: stars\n    delimiter: ','\n    quoting: true\n    files: {train: train.csv}\n"
    )
    task = load_task_file(str(tmp_path / "tasks.yaml"))["reviews"]
    data = readers.load_split(task, "train", data_dir=str(tmp_path))
    assert data.text_a == ["good, really", "bad", "multi\nline"]
    assert data.labels.tolist() == [1, 0, 1]


def _write(path, text, mode="w"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, mode) as handle:
        handle.write(text)
    return path


@pytest.mark.parametrize(
    "task, content, message",
    [
        (
            "sst2",
            "sentence\tlabel\ngood movie\t1\nbad movie\n",
            r"train.tsv:3: expected 2 columns \(as in the header\), found 1",
        ),
        (
            "sst2",
            "sentence\tlabel\ngood movie\t1\nbad movie\t7\n",
            r"train.tsv:3: label '7' is not one of task sst2's labels \['0', '1'\]",
        ),
        ("sst2", "sentence\tlabel\ngood movie\t\n", r"train.tsv:2: label 'an empty label' is not one of"),
        (
            "stsb",
            "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
            "0\tg\tf\t2017\t0\ts\ts\ta b\tc d\tfive\n",
            r"train.tsv:2: score 'five' is not a number",
        ),
        (
            "stsb",
            "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
            "0\tg\tf\t2017\t0\ts\ts\ta b\tc d\t7.5\n",
            r"score 7.5 is outside task stsb's range \[0.0, 5.0\]",
        ),
        (
            "stsb",
            "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
            "0\tg\tf\t2017\t0\ts\ts\ta b\tc d\tnan\n",
            r"score 'nan' is not finite",
        ),
        ("sst2", "sentence\tlabel\n", r"train.tsv: no examples in split 'train' of task 'sst2'"),
        ("sst2", "", r"train.tsv: the file is empty"),
        ("sst2", "text\tlabel\ngood\t1\n", r"train.tsv:1: no text column 'sentence' in header \['text', 'label'\]"),
        ("cola", "src\t1\n", r"CoLA/train.tsv:1: expected at least 4 columns, found 2"),
    ],
)
def test_bad_input_names_file_line_and_problem(tmp_path, task, content, message):
    directory = GLUE_TASKS[task].source.directory
    _write(str(tmp_path / directory / "train.tsv"), content)
    with pytest.raises(DataError, match=message):
        readers.load_split(GLUE_TASKS[task], "train", data_dir=str(tmp_path))


def test_bad_quoting_names_the_line(tmp_path):
    (tmp_path / "reviews").mkdir()
    (tmp_path / "reviews" / "train.csv").write_text('text,stars\n"fine",pos\n"broken" quote,neg\n')
    (tmp_path / "tasks.yaml").write_text(
        "tasks:\n  - name: reviews\n    type: classification\n    labels: [neg, pos]\n    text_columns: [text]\n"
        "    label_column: stars\n    delimiter: ','\n    quoting: true\n    files: {train: train.csv}\n"
    )
    task = load_task_file(str(tmp_path / "tasks.yaml"))["reviews"]
    with pytest.raises(DataError, match=r"train.csv:3: malformed row \(.*\); check quoting"):
        readers.load_split(task, "train", data_dir=str(tmp_path))


def test_undecodable_bytes_name_the_line(tmp_path):
    _write(str(tmp_path / "SST-2" / "train.tsv"), b"sentence\tlabel\ngood\t1\nbad \xff\xfe\t0\n", "wb")
    with pytest.raises(DataError, match=r"train.tsv:3: bytes that are not UTF-8"):
        readers.load_split(GLUE_TASKS["sst2"], "train", data_dir=str(tmp_path))


def test_missing_file_and_split(tmp_path):
    with pytest.raises(DataError, match=r"SST-2/train.tsv: no such file"):
        readers.load_split(GLUE_TASKS["sst2"], "train", data_dir=str(tmp_path))
    with pytest.raises(DataError, match=r"task 'sst2' has no split 'validation'"):
        readers.load_split(GLUE_TASKS["sst2"], "validation", data_dir=str(tmp_path))


def test_skip_bad_rows_warns_with_count_and_sample(tmp_path, caplog):
    _write(str(tmp_path / "SST-2" / "train.tsv"), "sentence\tlabel\ngood\t1\nbad\t9\nworse\nfine\t0\n")
    data = readers.load_split(GLUE_TASKS["sst2"], "train", data_dir=str(tmp_path), skip_bad_rows=True)
    assert data.text_a == ["good", "fine"]
    assert data.ids == ["sst2/train/0", "sst2/train/1"]
    assert "skipped 2 bad row(s)" in caplog.text and "train.tsv:3" in caplog.text


def test_take_and_fingerprint(glue_dir):
    data = readers.load_split(GLUE_TASKS["rte"], "train", data_dir=glue_dir)
    small = data.take(10)
    assert len(small) == 10 and small.ids == data.ids[:10]
    assert small.fingerprint() != data.fingerprint()
    assert data.fingerprint() == readers.load_split(GLUE_TASKS["rte"], "train", data_dir=glue_dir).fingerprint()


def test_tfds_source_maps_features_ids_and_labels():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12):
        data = readers.load_split(GLUE_TASKS["mnli"], "dev_matched", source="tfds")
        assert len(data) == 12 and data.text_b is not None
        assert data.ids[0].startswith("mnli/dev_matched/")
        assert set(data.labels) <= {0, 1, 2}
        single = readers.load_split(GLUE_TASKS["sst2"], "train", source="tfds")
        assert single.text_b is None and len(single) == 12


def test_tfds_offline_fails_fast_with_a_clear_message(tmp_path):
    import time

    started = time.time()
    with pytest.raises(DataError, match=r"TFDS dataset glue/rte split train is not available .*downloads are off"):
        readers.load_split(GLUE_TASKS["rte"], "train", source="tfds", data_dir=str(tmp_path))
    assert time.time() - started < 60
