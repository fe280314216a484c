"""Task definitions, in two parts: what a model knows of a task, and where its data lives.

`Task` is the model-facing spec (name, type, labels, metrics, head settings) that models,
losses and evaluation use and `model.keras` stores; `TaskSource` is the data source (files,
delimiter, quoting, TFDS and Hugging Face names, leaderboard names) that readers use. GLUE and a user's own
TSV/CSV data are described the same way: GLUE by the registry below, custom data by a YAML
or JSON task file (`load_task_file`), both in one flat form that `define_task` splits.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from typing import Any, Iterable, Sequence

from mtkd_tf.errors import MtkdError

CLASSIFICATION = "classification"
REGRESSION = "regression"
RANKING = "ranking"
TASK_TYPES = (CLASSIFICATION, REGRESSION, RANKING)

ANSWER_MODULES = ("linear", "san")  # pair-classification heads: W^T [CLS], or the SAN answer module

UNLABELLED = "unlabelled"  # a split of extra text without labels, labelled by the teachers

METRICS = ("accuracy", "f1", "matthews_corr", "pearson", "spearman")

Column = str | int  # a header name, or a 0-based position for files without a header


class TaskError(MtkdError, ValueError):
    """A task name, definition or task file is wrong."""


@dataclasses.dataclass(frozen=True)
class FileLayout:
    """Where a task's text and label live in a delimited file."""

    text_columns: tuple[Column, ...]
    label_column: Column | None = None
    header: bool = True
    delimiter: str = "\t"
    quoting: bool = False  # GLUE files contain literal quotes: never interpret them

    def to_config(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class TaskSource:
    """Where a task's examples come from: files, their layout, TFDS names, leaderboard names.

    Readers and prediction files use it; models never store it. `files` maps split names to
    file names under `<data_dir>/<directory>` (an `unlabelled` split holds extra text the
    teachers label for distillation); `test_layout` describes test files when they differ
    from train/dev (GLUE test files have an index column and no label). The `hf_*` fields
    serve `data_source=hf` (`mtkd_tf.data.hf_datasets`): the hub dataset and config looked up
    in the local cache, and column and split names where they differ from `text_columns`,
    `label_column` and the default mapping (dev -> validation, dev_x -> validation_x).
    """

    text_columns: tuple[Column, ...]
    label_column: Column | None = "label"
    directory: str = ""
    files: dict[str, str] = dataclasses.field(
        default_factory=lambda: {"train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"}
    )
    header: bool = True
    delimiter: str = "\t"
    quoting: bool = False
    test_layout: FileLayout | None = None
    dev_splits: tuple[str, ...] = ("dev",)
    test_splits: tuple[str, ...] = ("test",)
    submission_name: str | None = None
    tfds_name: str | None = None
    tfds_text_features: tuple[str, ...] = ()
    tfds_splits: dict[str, str] = dataclasses.field(default_factory=dict)
    hf_name: str | None = None
    hf_config: str | None = None
    hf_text_columns: tuple[str, ...] = ()
    hf_label_column: str | None = None
    hf_splits: dict[str, str] = dataclasses.field(default_factory=dict)

    def layout(self, split: str) -> FileLayout:
        if split in self.test_splits and self.test_layout is not None:
            return self.test_layout
        label = None if split in self.test_splits or split == UNLABELLED else self.label_column
        return FileLayout(self.text_columns, label, self.header, self.delimiter, self.quoting)

    def to_config(self) -> dict[str, Any]:
        config = dataclasses.asdict(self)
        if self.test_layout is not None:
            config["test_layout"] = self.test_layout.to_config()
        return config


SOURCE_FIELDS = tuple(field.name for field in dataclasses.fields(TaskSource))


@dataclasses.dataclass(frozen=True)
class Task:
    """What a model knows of a task: its head, its labels and its metrics (what `model.keras`
    stores). `source` says where its data lives (`TaskSource`); a task read back from a
    model has none. `predict_with` names the task whose head predicts this one (AX is
    scored with the MNLI head); `segments` is 2 for sentence-pair tasks.
    """

    name: str
    type: str
    labels: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ("accuracy",)
    segments: int = 1
    dropout: float = 0.1
    score_range: tuple[float, float] | None = None
    predict_with: str | None = None
    answer_module: str = "linear"  # pair classification: "san" for the SAN answer module
    san_steps: int = 5  # SAN reasoning steps K
    san_step_dropout: float = 0.1  # SAN stochastic prediction dropout
    group_size: int = 0  # ranking: candidates per training group (1 positive + negatives)
    positive_label: str | None = None  # ranking: the label that marks a question's answer
    source: TaskSource | None = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        _check_task(self)

    @property
    def is_pair(self) -> bool:
        return self.segments == 2

    @property
    def num_classes(self) -> int:
        """Width of the head's output: classes, or 1 for a score."""
        return len(self.labels) if self.type == CLASSIFICATION else 1

    @property
    def positive_index(self) -> int:
        """Ranking: the class id of a question's answer."""
        return self.labels.index(self.positive_label)

    @property
    def trainable(self) -> bool:
        return self.predict_with is None and (self.source is None or "train" in self.source.files)

    def to_config(self) -> dict[str, Any]:
        """The model-facing fields (no data source): what a saved model stores."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self) if field.name != "source"}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Task":
        """A task from `to_config`; models saved before the data source moved out of `Task`
        stored it inline (`text_columns`, `delimiter`, ...): it is dropped here."""
        config = dict(config)
        if "text_columns" in config:  # the pre-0.2 layout
            config.setdefault("segments", len(config["text_columns"]))
        values = {key: value for key, value in config.items() if key in MODEL_FIELDS}
        for key in ("labels", "metrics"):
            if key in values:
                values[key] = tuple(values[key])
        if values.get("score_range") is not None:
            values["score_range"] = tuple(values["score_range"])
        return cls(**values)


MODEL_FIELDS = tuple(field.name for field in dataclasses.fields(Task) if field.name != "source")


def _check_task(task: Task) -> None:
    where = f"task {task.name!r}"
    if not task.name or not str(task.name).replace("_", "").replace("-", "").isalnum():
        raise TaskError(f"{where}: name must be letters, digits, '_' or '-'")
    if task.type not in TASK_TYPES:
        raise TaskError(f"{where}: type {task.type!r} is not one of {', '.join(TASK_TYPES)}")
    if task.segments not in (1, 2):
        raise TaskError(f"{where}: text_columns must name 1 or 2 columns")
    if task.source is not None and len(task.source.text_columns) != task.segments:
        raise TaskError(f"{where}: {task.segments} segment(s) but {len(task.source.text_columns)} text column(s)")
    if task.type == CLASSIFICATION and len(task.labels) < 2 and (task.labels or task.source is None):
        # no labels at all: a task file's task whose Hugging Face ClassLabel column names them
        raise TaskError(f"{where}: a classification task needs at least 2 labels")
    if task.type == REGRESSION and task.labels:  # the readers would take its labels for classes, not scores
        raise TaskError(f"{where}: a regression task reads scores and takes no labels, got labels {list(task.labels)}")
    if task.type == RANKING:
        if task.segments != 2 or task.group_size < 2:
            raise TaskError(f"{where}: a ranking task needs 2 text columns (question, candidate) and group_size >= 2")
        if len(task.labels) != 2 or task.positive_label not in task.labels:
            raise TaskError(
                f"{where}: a ranking task needs 2 labels and positive_label naming the one that marks an answer"
            )
    if task.answer_module not in ANSWER_MODULES:
        raise TaskError(f"{where}: answer_module {task.answer_module!r} is not one of {', '.join(ANSWER_MODULES)}")
    if task.answer_module == "san" and (task.type != CLASSIFICATION or not task.is_pair):
        raise TaskError(f"{where}: the SAN answer module is for pair classification tasks only")
    if task.san_steps < 1 or not 0.0 <= task.san_step_dropout < 1.0:
        raise TaskError(f"{where}: san_steps must be >= 1 and san_step_dropout in [0, 1)")
    if len(set(task.labels)) != len(task.labels):
        raise TaskError(f"{where}: labels are duplicated: {list(task.labels)}")
    for metric in task.metrics:
        if metric not in METRICS:
            raise TaskError(f"{where}: unknown metric {metric!r}; known: {', '.join(METRICS)}")
    if not 0.0 <= task.dropout < 1.0:
        raise TaskError(f"{where}: dropout must be in [0, 1), got {task.dropout}")


def define_task(**fields: Any) -> Task:
    """A task and its data source from one flat set of fields (as a task file writes them)."""
    source = TaskSource(**{key: value for key, value in fields.items() if key in SOURCE_FIELDS})
    model = {key: value for key, value in fields.items() if key not in SOURCE_FIELDS}
    model.setdefault("segments", len(source.text_columns))
    return Task(**model, source=source)


# ---------------------------------------------------------------------------------------
# GLUE, in the official directory layout (download_glue_data.py), in TFDS and in Hugging Face
# `datasets` (nyu-mll/glue: the same column and split names as TFDS). Label order follows the
# ClassLabel order of both, so TSV strings and TFDS / HF ints agree.


def _glue(**kwargs: Any) -> Task:
    tfds_splits = {"train": "train", "dev": "validation", "test": "test"}
    tfds_splits.update(kwargs.pop("tfds_splits", {}))
    hf = dict(
        hf_name="nyu-mll/glue",
        hf_config=kwargs["name"],
        hf_text_columns=kwargs["tfds_text_features"],
        hf_label_column="label",
        hf_splits=tfds_splits,
    )
    return define_task(tfds_splits=tfds_splits, **hf, **kwargs)


GLUE_TASKS: dict[str, Task] = {
    task.name: task
    for task in [
        _glue(
            name="cola",
            type=CLASSIFICATION,
            labels=("0", "1"),
            directory="CoLA",
            text_columns=(3,),
            label_column=1,
            header=False,
            metrics=("matthews_corr",),
            test_layout=FileLayout(("sentence",)),
            dropout=0.05,
            submission_name="CoLA",
            tfds_name="glue/cola",
            tfds_text_features=("sentence",),
        ),
        _glue(
            name="sst2",
            type=CLASSIFICATION,
            labels=("0", "1"),
            directory="SST-2",
            text_columns=("sentence",),
            submission_name="SST-2",
            tfds_name="glue/sst2",
            tfds_text_features=("sentence",),
        ),
        _glue(
            name="mrpc",
            answer_module="san",
            type=CLASSIFICATION,
            labels=("0", "1"),
            directory="MRPC",
            text_columns=("#1 String", "#2 String"),
            label_column="Quality",
            metrics=("f1", "accuracy"),
            submission_name="MRPC",
            tfds_name="glue/mrpc",
            tfds_text_features=("sentence1", "sentence2"),
        ),
        _glue(
            name="stsb",
            type=REGRESSION,
            directory="STS-B",
            text_columns=("sentence1", "sentence2"),
            label_column="score",
            metrics=("pearson", "spearman"),
            score_range=(0.0, 5.0),
            submission_name="STS-B",
            tfds_name="glue/stsb",
            tfds_text_features=("sentence1", "sentence2"),
        ),
        _glue(
            name="qqp",
            answer_module="san",
            type=CLASSIFICATION,
            labels=("0", "1"),
            directory="QQP",
            text_columns=("question1", "question2"),
            label_column="is_duplicate",
            metrics=("f1", "accuracy"),
            submission_name="QQP",
            tfds_name="glue/qqp",
            tfds_text_features=("question1", "question2"),
        ),
        _glue(
            name="mnli",
            type=CLASSIFICATION,
            labels=("entailment", "neutral", "contradiction"),
            answer_module="san",
            directory="MNLI",
            text_columns=("sentence1", "sentence2"),
            label_column="gold_label",
            files={
                "train": "train.tsv",
                "dev_matched": "dev_matched.tsv",
                "dev_mismatched": "dev_mismatched.tsv",
                "test_matched": "test_matched.tsv",
                "test_mismatched": "test_mismatched.tsv",
            },
            dev_splits=("dev_matched", "dev_mismatched"),
            test_splits=("test_matched", "test_mismatched"),
            dropout=0.3,
            submission_name="MNLI",
            tfds_name="glue/mnli",
            tfds_text_features=("premise", "hypothesis"),
            tfds_splits={
                "dev_matched": "validation_matched",
                "dev_mismatched": "validation_mismatched",
                "test_matched": "test_matched",
                "test_mismatched": "test_mismatched",
            },
        ),
        _glue(
            name="qnli",
            type=CLASSIFICATION,
            labels=("entailment", "not_entailment"),
            directory="QNLI",
            text_columns=("question", "sentence"),
            submission_name="QNLI",
            tfds_name="glue/qnli",
            tfds_text_features=("question", "sentence"),
        ),
        _glue(
            name="rte",
            answer_module="san",
            type=CLASSIFICATION,
            labels=("entailment", "not_entailment"),
            directory="RTE",
            text_columns=("sentence1", "sentence2"),
            submission_name="RTE",
            tfds_name="glue/rte",
            tfds_text_features=("sentence1", "sentence2"),
        ),
        _glue(
            name="wnli",
            answer_module="san",
            type=CLASSIFICATION,
            labels=("0", "1"),
            directory="WNLI",
            text_columns=("sentence1", "sentence2"),
            submission_name="WNLI",
            tfds_name="glue/wnli",
            tfds_text_features=("sentence1", "sentence2"),
        ),
        _glue(
            name="ax",
            type=CLASSIFICATION,
            labels=("entailment", "neutral", "contradiction"),
            directory="diagnostic",
            text_columns=("sentence1", "sentence2"),
            label_column=None,
            files={"test": "diagnostic.tsv"},
            dev_splits=(),
            predict_with="mnli",
            submission_name="AX",
            tfds_name="glue/ax",
            tfds_text_features=("premise", "hypothesis"),
            tfds_splits={"test": "test"},
        ),
    ]
}

# Test files carry an index column first; the text columns keep their names.
for _name, _task in list(GLUE_TASKS.items()):
    if _task.source.test_layout is None:
        _source = dataclasses.replace(_task.source, test_layout=FileLayout(_task.source.text_columns))
        GLUE_TASKS[_name] = dataclasses.replace(_task, source=_source)


# ---------------------------------------------------------------------------------------
# Custom tasks from a task file.

_REQUIRED = ("name", "type", "text_columns")


def _is_a(value: Any, hint: Any) -> bool:
    """Whether a task-file value has a field's annotated type (`tuple[str | int, ...]`, `float | None`);
    a number may be an int where a float is asked, never a bool."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_is_a(value, arg) for arg in args)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_is_a(item, args[0]) for item in value)
        return len(value) == len(args) and all(_is_a(item, arg) for item, arg in zip(value, args, strict=True))
    if origin is dict:
        return isinstance(value, dict) and all(_is_a(k, args[0]) and _is_a(v, args[1]) for k, v in value.items())
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _check_types(values: dict[str, Any], cls: type, where: str) -> None:
    """Every value has its field's type in `cls`, or a TaskError names the field (YAML and JSON
    give any type: `header: "false"` would be true, `files: {train: 3}` fail in a reader)."""
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if key in hints and not _is_a(value, hints[key]):
            hint = hints[key]
            shown = hint.__name__ if isinstance(hint, type) else str(hint).replace("mtkd_tf.data.tasks.", "")
            raise TaskError(f"{where}: field {key!r} must be {shown}, got {value!r}")
    delimiter = values.get("delimiter")
    if isinstance(delimiter, str) and (len(delimiter) != 1 or delimiter in "\r\n"):
        raise TaskError(f"{where}: field 'delimiter' must be one character (not a line end), got {delimiter!r}")


def _check_fields(entry: Any, where: str) -> None:
    """A task-file entry is a mapping with every required field and no unknown one."""
    if not isinstance(entry, dict):
        raise TaskError(f"{where}: a task must be a mapping, got {type(entry).__name__}")
    missing = [key for key in _REQUIRED if key not in entry]
    if missing:
        raise TaskError(f"{where}: missing field(s) {', '.join(missing)}")
    known = (set(MODEL_FIELDS) | set(SOURCE_FIELDS)) - {"segments"}
    unknown = sorted(repr(key) if not isinstance(key, str) else key for key in entry if key not in known)
    if unknown:
        raise TaskError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def _normalise_sequences(values: dict[str, Any], where: str) -> None:
    """In place: list fields become tuples (a lone string or number a 1-tuple; labels as strings) and
    score_range a tuple of floats."""
    for key in (
        "text_columns",
        "labels",
        "metrics",
        "dev_splits",
        "test_splits",
        "tfds_text_features",
        "hf_text_columns",
    ):
        if key in values:
            if isinstance(values[key], (str, int)):
                values[key] = [values[key]]
            if not isinstance(values[key], (list, tuple)):
                raise TaskError(f"{where}: field {key!r} must be a list, got {values[key]!r}")
            values[key] = tuple(str(v) if key == "labels" else v for v in values[key])
    if "score_range" in values and values["score_range"] is not None:
        try:
            values["score_range"] = tuple(float(v) for v in values["score_range"])
        except (TypeError, ValueError):
            raise TaskError(
                f"{where}: field 'score_range' must be [low, high], got {values['score_range']!r}"
            ) from None


def task_from_dict(entry: dict[str, Any], where: str) -> Task:
    """Builds a Task from a task-file entry; errors name `where` and the field."""
    _check_fields(entry, where)
    values = dict(entry)
    _normalise_sequences(values, where)
    if isinstance(values.get("test_layout"), dict):
        layout = dict(values["test_layout"])
        if isinstance(layout.get("text_columns"), (list, tuple)):
            layout["text_columns"] = tuple(layout["text_columns"])
        _check_types(layout, FileLayout, f"{where}, test_layout")
        try:
            values["test_layout"] = FileLayout(**layout)
        except TypeError:  # a missing or unknown field
            fields = ", ".join(field.name for field in dataclasses.fields(FileLayout))
            raise TaskError(
                f"{where}: test_layout needs text_columns and takes only {fields}; "
                f"got {', '.join(map(str, layout)) or 'no field'}"
            ) from None
    for key in ("files", "hf_splits"):
        if key in values and not isinstance(values[key], dict):
            raise TaskError(f"{where}: {key} must map split names to {'file' if key == 'files' else 'split'} names")
    _check_types(values, Task, where)
    _check_types(values, TaskSource, where)
    if values.get("type") == REGRESSION:
        values.setdefault("metrics", ("pearson", "spearman"))
    if "metrics" not in values and values.get("type") == CLASSIFICATION and len(values.get("labels", ())) == 2:
        values["metrics"] = ("accuracy", "f1")
    try:
        return define_task(**values)
    except TaskError as error:
        raise TaskError(f"{where}: {error}") from None
    except TypeError as error:
        raise TaskError(f"{where}: {error}") from None


def _unique_keys(pairs: list[tuple[str, Any]], line: int | None = None) -> dict[str, Any]:
    """A mapping that refuses duplicated keys (YAML and JSON would keep the last silently)."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            where = f"the mapping at line {line}" if line else "one mapping"
            raise TaskError(f"field {key!r} is given twice in {where}")
        result[key] = value
    return result


def _load_yaml(text: str) -> Any:
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            pairs = [(self.construct_object(k, deep=deep), self.construct_object(v, deep=deep)) for k, v in node.value]
            return _unique_keys(pairs, node.start_mark.line + 1)

    return yaml.load(text, Loader=UniqueKeyLoader)


def load_task_file(path: str) -> dict[str, Task]:
    """Reads custom tasks from a YAML or JSON file: `{tasks: [{name, type, ...}, ...]}`.

    `directory` defaults to the task name; relative file names resolve under
    `<data_dir>/<directory>`.
    """
    if not os.path.isfile(path):
        raise TaskError(f"task file {path}: no such file")
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        from mtkd_tf.runtime.files import not_utf8

        raise TaskError(f"task file {path}:{not_utf8(data, error)}") from None
    try:
        document = json.loads(text, object_pairs_hook=_unique_keys) if path.endswith(".json") else _load_yaml(text)
    except TaskError as error:
        raise TaskError(f"task file {path}: {error}") from None
    except Exception as error:  # yaml and json raise their own error types
        raise TaskError(f"task file {path}: cannot parse: {error}") from None
    entries = document.get("tasks") if isinstance(document, dict) else document
    if not isinstance(entries, list) or not entries:
        raise TaskError(f"task file {path}: expected a non-empty list under 'tasks'")
    tasks: dict[str, Task] = {}
    for number, entry in enumerate(entries, start=1):
        where = f"task file {path}, task #{number}"
        if isinstance(entry, dict) and "name" in entry:
            where += f" ({entry['name']})"
            entry = {"directory": entry["name"], **entry}
        task = task_from_dict(entry, where)
        if task.name in tasks:
            raise TaskError(f"{where}: task name {task.name!r} is defined twice")
        tasks[task.name] = task
    return tasks


def registry(task_file: str | None = None, extra: dict[str, Task] | None = None) -> dict[str, Task]:
    """All known tasks: GLUE, then built-in suites (`extra`), then the task file's."""
    known = dict(GLUE_TASKS)
    known.update(extra or {})
    if task_file:
        known.update(load_task_file(task_file))
    return known


def resolve_tasks(names: Iterable[str] | str, known: dict[str, Task]) -> list[Task]:
    """Looks names up in `known`; an unknown name is an error that lists the choices."""
    if isinstance(names, str):
        names = [name for name in names.split(",") if name.strip()]
    names = [name.strip() for name in names]
    if not names:
        raise TaskError("no tasks given (tasks)", "tasks")
    unknown = [name for name in names if name not in known]
    if unknown:
        raise TaskError(
            f"unknown task(s) {', '.join(unknown)}; known: {', '.join(sorted(known))} (define your own with task_file)",
            ("task_file", "tasks"),
        )
    if len(set(names)) != len(names):
        raise TaskError(f"a task is listed twice in {','.join(names)}")
    return [known[name] for name in names]


def head_tasks(tasks: Sequence[Task]) -> list[Task]:
    """The tasks that own a head: trainable ones (AX borrows MNLI's)."""
    return [task for task in tasks if task.predict_with is None]


def with_answer_modules(tasks: Sequence[Task], spec: Sequence[str] | str) -> list[Task]:
    """Applies `--answer_module`: `san` or `linear` for every pair-classification task, or
    `task=module` items for single tasks (empty: each task's default, SAN as in the paper)."""
    if isinstance(spec, str):
        spec = [item for item in spec.split(",") if item.strip()]
    choices: dict[str | None, str] = {}
    names = {task.name for task in tasks}
    for item in spec:
        name, _, module = item.strip().rpartition("=")
        if module not in ANSWER_MODULES:
            raise TaskError(
                f"answer_module {item!r}: {module!r} is not one of {', '.join(ANSWER_MODULES)}", "answer_module"
            )
        if name and name not in names:
            raise TaskError(
                f"answer_module {item!r}: no task {name!r} among {', '.join(sorted(names))}", "answer_module"
            )
        choices[name or None] = module
    result = []
    for task in tasks:
        module = choices.get(task.name, choices.get(None))
        pair_classification = task.type == CLASSIFICATION and task.is_pair
        if module and task.name in choices and not pair_classification and module == "san":
            raise TaskError(f"answer_module: task {task.name!r} is not a pair-classification task", "answer_module")
        if module and pair_classification:
            task = dataclasses.replace(task, answer_module=module)
        result.append(task)
    return result
