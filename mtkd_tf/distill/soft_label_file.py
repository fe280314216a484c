"""Soft targets from a file (`--soft_labels_file=task:PATH`): labels from any other system, such as
a large model served elsewhere, become a task's soft targets, in place of a trained ensemble's.

Two formats, chosen by the file's extension:
- JSON Lines (`.jsonl`, `.json`): one object per line, with `"id"` (the example id of the data
  pipeline, `<task>/<split>/<row>`) or the example's text (`"text"`, and `"text_b"` for pairs), and
  `"probabilities"`: a list in the task's label order or an object `{label: p}`; or, for
  regression, `"score"`;
- CSV or TSV (`.csv`, `.tsv`): a header with `id` (or `text`, and `text_b`), then one column per
  label name holding its probability, or a `score` column.

Each training example of the task (and its unlabelled text) needs one row; rows for other examples
are ignored. Probabilities must be finite, non-negative and sum to 1 (within 1e-3). At a
distillation temperature T other than 1 they are softened as p^(1/T), renormalised, which is
softmax(logits / T) for the logits they came from.

>>> import json, tempfile
>>> from mtkd_tf.data.split import SplitData
>>> from mtkd_tf.data.tasks import GLUE_TASKS
>>> data = SplitData(GLUE_TASKS["sst2"], "train", ["sst2/train/0"], ["a fine film"], labels=np.array([1]))
>>> path = tempfile.mktemp(suffix=".jsonl")
>>> _ = open(path, "w").write(json.dumps({"text": "a fine film", "probabilities": [0.2, 0.8]}) + "\\n")
>>> read_targets(path, data.task, [data])[0].tolist()
[[0.20000000298023224, 0.800000011920929]]
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from typing import Sequence

import numpy as np

from mtkd_tf.data.split import SplitData
from mtkd_tf.data.tasks import CLASSIFICATION, REGRESSION, Task
from mtkd_tf.distill.soft_labels import SoftLabelError

EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv"}
TEXT_KEYS = ("text", "text_b")


def file_digest(path: str) -> str:
    """The file's sha256: the soft labels made from it record it, so a changed file remakes them."""
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def read_targets(path: str, task: Task, splits: Sequence[SplitData], temperature: float = 1.0) -> list[np.ndarray]:
    """Each split's targets from the file at `path`, in data order (see the module docstring);
    every problem is a `SoftLabelError` naming the file and, where there is one, the line."""
    if task.type not in (CLASSIFICATION, REGRESSION):
        raise SoftLabelError(
            f"soft labels file {path}: task {task.name} is {task.type}: only classification and "
            "regression tasks take soft labels from a file"
        )
    kind = EXTENSIONS.get(os.path.splitext(path)[1].lower())
    if kind is None:
        raise SoftLabelError(f"soft labels file {path}: unknown extension (use one of {', '.join(EXTENSIONS)})")
    if not os.path.isfile(path):
        raise SoftLabelError(f"soft labels file {path}: no such file (given for task {task.name})")
    rows = _jsonl_rows(path) if kind == "jsonl" else _table_rows(path, "\t" if kind == "tsv" else ",")
    by_key: dict[tuple, tuple[int, np.ndarray]] = {}
    for line, record in rows:
        key = _key(record, path, line)
        if key in by_key:
            raise SoftLabelError(
                f"soft labels file {path}, line {line}: {_spell(key)} is also on line {by_key[key][0]}"
            )
        by_key[key] = (line, _values(record, task, path, line))
    return [_soften(_split_targets(by_key, data, path), task, temperature) for data in splits]


def _jsonl_rows(path: str):
    with open(path, encoding="utf-8") as handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as error:
                raise SoftLabelError(f"soft labels file {path}, line {line}: not JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise SoftLabelError(
                    f"soft labels file {path}, line {line}: expected an object, got {text.strip():.60}"
                )
            yield line, record


def _table_rows(path: str, delimiter: str):
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        header = reader.fieldnames or []
        for line, record in enumerate(reader, start=2):
            if None in record or any(value is None for value in record.values()):
                raise SoftLabelError(
                    f"soft labels file {path}, line {line}: {len(header)} columns in the header ({', '.join(header)}), "
                    "a different number here"
                )
            yield line, _typed(record, path, line)


def _typed(record: dict, path: str, line: int) -> dict:
    """A CSV row as a JSON Lines record: the id or texts, and the numbers of the other columns."""
    found = {key: record[key] for key in ("id", *TEXT_KEYS) if key in record}
    numbers = {}
    for key, value in record.items():
        if key in found:
            continue
        try:
            numbers[key] = float(value)
        except ValueError:
            raise SoftLabelError(
                f"soft labels file {path}, line {line}: column {key!r} is not a number: {value!r}"
            ) from None
    if "score" in numbers:
        found["score"] = numbers.pop("score")
    if numbers:
        found["probabilities"] = numbers
    return found


def _key(record: dict, path: str, line: int) -> tuple:
    if "id" in record:
        return ("id", str(record["id"]))
    if "text" in record:
        return ("text", str(record["text"]), str(record.get("text_b", "")))
    raise SoftLabelError(f'soft labels file {path}, line {line}: no "id" or "text" to match an example by')


def _spell(key: tuple) -> str:
    return f"id {key[1]!r}" if key[0] == "id" else f"text {key[1]!r:.60}"


def _values(record: dict, task: Task, path: str, line: int) -> np.ndarray:
    """The row's probabilities in label order (checked), or its score."""
    where = f"soft labels file {path}, line {line}"
    if task.type == REGRESSION:
        if "score" not in record:
            raise SoftLabelError(f'{where}: regression task {task.name} needs a "score"')
        score = _number(record["score"], where)
        return np.float32(score)
    given = record.get("probabilities")
    labels = list(task.labels)
    if isinstance(given, dict):
        unknown = sorted(set(given) - set(labels))
        if unknown or len(given) != len(labels):
            raise SoftLabelError(
                f"{where}: probabilities for labels {sorted(given)}, task {task.name} has {labels}"
                + (f" (unknown: {unknown})" if unknown else "")
            )
        given = [given[label] for label in labels]
    if not isinstance(given, list):
        raise SoftLabelError(f'{where}: needs "probabilities" (a list in label order {labels}, or {{label: p}})')
    if len(given) != len(labels):
        raise SoftLabelError(f"{where}: {len(given)} probabilities, task {task.name} has {len(labels)} labels {labels}")
    values = np.asarray([_number(value, where) for value in given], np.float64)
    if values.min() < 0 or abs(values.sum() - 1.0) > 1e-3:
        raise SoftLabelError(
            f"{where}: probabilities {values.tolist()} are negative or do not sum to 1 ({values.sum():.4f})"
        )
    return (values / values.sum()).astype(np.float32)


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise SoftLabelError(f"{where}: {value!r} is not a finite number")
    return float(value)


def _split_targets(by_key: dict, data: SplitData, path: str) -> np.ndarray:
    """`data`'s rows of the file, by id, else by text; every example must have one."""
    found, missing = [], []
    for index, example_id in enumerate(data.ids):
        text_b = data.text_b[index] if data.text_b is not None else ""
        row = by_key.get(("id", example_id)) or by_key.get(("text", data.text_a[index], text_b))
        if row is None:
            missing.append(example_id)
        else:
            found.append(row[1])
    if missing:
        raise SoftLabelError(
            f"soft labels file {path}: no row for {len(missing)} of the {len(data)} examples of "
            f"{data.task.name}/{data.split}, e.g. {missing[0]} ({data.text_a[data.ids.index(missing[0])]!r:.60}); "
            'each needs one, by "id" or by its text'
        )
    return np.stack(found) if found and np.ndim(found[0]) else np.asarray(found, np.float32)


def _soften(targets: np.ndarray, task: Task, temperature: float) -> np.ndarray:
    """Probabilities at temperature T: p^(1/T), renormalised (scores are left as they are)."""
    if task.type != CLASSIFICATION or temperature == 1.0:
        return targets.astype(np.float32)
    powered = np.power(np.maximum(targets.astype(np.float64), 1e-12), 1.0 / temperature)
    return (powered / powered.sum(axis=1, keepdims=True)).astype(np.float32)
