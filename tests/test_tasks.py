import json

import pytest

from mtkd_tf.data import tasks
from mtkd_tf.data.tasks import TaskError


def test_glue_registry_has_every_task_with_its_metrics():
    assert set(tasks.GLUE_TASKS) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli", "ax"}
    assert tasks.GLUE_TASKS["cola"].metrics == ("matthews_corr",)
    assert tasks.GLUE_TASKS["mrpc"].metrics == ("f1", "accuracy")
    assert tasks.GLUE_TASKS["qqp"].metrics == ("f1", "accuracy")
    assert tasks.GLUE_TASKS["stsb"].metrics == ("pearson", "spearman")
    assert tasks.GLUE_TASKS["stsb"].type == tasks.REGRESSION
    mnli = tasks.GLUE_TASKS["mnli"]
    assert mnli.source.dev_splits == ("dev_matched", "dev_mismatched")
    assert mnli.source.test_splits == ("test_matched", "test_mismatched")
    assert mnli.num_classes == 3 and mnli.dropout == 0.3
    assert tasks.GLUE_TASKS["cola"].dropout == 0.05
    ax = tasks.GLUE_TASKS["ax"]
    assert ax.predict_with == "mnli" and not ax.trainable
    assert [t.name for t in tasks.head_tasks([mnli, ax])] == ["mnli"]


def test_task_config_round_trip():
    for task in tasks.GLUE_TASKS.values():
        config = json.loads(json.dumps(task.to_config()))
        assert tasks.Task.from_config(config) == task


def test_task_file_yaml_and_json(tmp_path):
    yaml_file = tmp_path / "tasks.yaml"
    yaml_file.write_text(
        "tasks:\n"
        "  - name: reviews\n    type: classification\n    labels: [neg, pos]\n"
        "    text_columns: [text]\n    label_column: stars\n    delimiter: ','\n    quoting: true\n"
        "    files: {train: train.csv, dev: dev.csv}\n"
        "  - name: similarity\n    type: regression\n    text_columns: [a, b]\n    label_column: score\n"
    )
    loaded = tasks.load_task_file(str(yaml_file))
    assert loaded["reviews"].labels == ("neg", "pos")
    assert loaded["reviews"].metrics == ("accuracy", "f1")
    assert loaded["reviews"].source.directory == "reviews"
    assert loaded["similarity"].is_pair and loaded["similarity"].metrics == ("pearson", "spearman")
    json_file = tmp_path / "tasks.json"
    json_file.write_text(
        json.dumps({"tasks": [{"name": "x", "type": "classification", "labels": [0, 1], "text_columns": [1]}]})
    )
    assert tasks.load_task_file(str(json_file))["x"].labels == ("0", "1")
    known = tasks.registry(str(yaml_file))
    assert "reviews" in known and "mnli" in known


@pytest.mark.parametrize(
    "body, message",
    [
        ("tasks:\n  - name: a\n    type: classification\n    labels: [x, y]\n", "missing field(s) text_columns"),
        ("tasks:\n  - name: a\n    type: sorting\n    text_columns: [t]\n", "type 'sorting' is not one of"),
        (
            "tasks:\n  - name: a\n    type: classification\n    labels: [x]\n    text_columns: [t]\n",
            "at least 2 labels",
        ),
        (
            "tasks:\n  - name: a\n    type: regression\n    text_columns: [t]\n    colour: red\n",
            "unknown field(s) colour",
        ),
        (
            "tasks:\n"
            "  - {name: a, type: regression, text_columns: [t]}\n"
            "  - {name: a, type: regression, text_columns: [t]}\n",
            "task name 'a' is defined twice",
        ),
        (
            "tasks:\n  - name: a\n    type: classification\n    labels: [x, x]\n    text_columns: [t]\n",
            "labels are duplicated",
        ),
        (
            "tasks:\n  - name: a\n    type: regression\n    text_columns: [t]\n    metrics: [bleu]\n",
            "unknown metric 'bleu'",
        ),
        ("tasks: []\n", "non-empty list"),
        (
            "tasks:\n  - name: a\n    type: regression\n    text_columns: [t]\n    type: classification\n",
            "field 'type' is given twice in the mapping at line 2",
        ),
        ("tasks: [\n", "cannot parse"),
    ],
)
def test_bad_task_files_name_the_problem(tmp_path, body, message):
    path = tmp_path / "tasks.yaml"
    path.write_text(body)
    with pytest.raises(TaskError, match=r"task file .*tasks.yaml") as error:
        tasks.load_task_file(str(path))
    assert message in str(error.value)


def test_duplicated_field_in_a_json_task_file(tmp_path):
    path = tmp_path / "tasks.json"
    path.write_text('{"tasks": [{"name": "a", "type": "regression", "text_columns": ["t"], "name": "b"}]}')
    with pytest.raises(TaskError, match=r"tasks.json: field 'name' is given twice"):
        tasks.load_task_file(str(path))


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(TaskError, match="unknown task\\(s\\) sst3; known: .*sst2"):
        tasks.resolve_tasks("sst2,sst3", tasks.GLUE_TASKS)
    with pytest.raises(TaskError, match="no tasks"):
        tasks.resolve_tasks("", tasks.GLUE_TASKS)
    with pytest.raises(TaskError, match="no such file"):
        tasks.load_task_file("/nonexistent/tasks.yaml")
