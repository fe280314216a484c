"""GLUE-leaderboard files: one `index<TAB>prediction` TSV per test split (`write_predictions`),
and which tasks `--mode=predict` writes them for (diagnostic AX only when its test data is present).
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

from mtkd_tf.data import readers
from mtkd_tf.data.split import SplitData
from mtkd_tf.data.tasks import REGRESSION, Task
from mtkd_tf.models.evaluation import decide, split_suffix
from mtkd_tf.models.inference import predict_outputs
from mtkd_tf.models.mtdnn import MTDNN
from mtkd_tf.runtime.files import write_atomic


def submission_file_name(task: Task, split: str) -> str:
    base = (task.source.submission_name if task.source else None) or task.name
    suffix = split_suffix(task, split)
    short = {"matched": "m", "mismatched": "mm"}.get(suffix, suffix)
    return f"{base}-{short}.tsv" if short else f"{base}.tsv"


def write_predictions(
    model: MTDNN,
    test: Mapping[str, Mapping[str, SplitData]],
    output_dir: str,
    batch_size: int = 128,
) -> list[str]:
    """GLUE-leaderboard files (`index<TAB>prediction`, label names; STS-B clipped to [0, 5])."""
    written = []
    for splits in test.values():
        for split, data in splits.items():
            task = data.task
            predictions = decide(task, predict_outputs(model, data, batch_size), data.groups)
            lines = ["index\tprediction"]
            for example_id, value in zip(data.ids, predictions, strict=True):  # one prediction per example
                index = example_id.rsplit("/", 1)[1]
                if task.type == REGRESSION:
                    low, high = task.score_range or (-np.inf, np.inf)
                    lines.append(f"{index}\t{float(np.clip(value, low, high)):.3f}")
                else:
                    lines.append(f"{index}\t{task.labels[int(value)]}")
            path = os.path.join(output_dir, submission_file_name(task, split))
            write_atomic(path, "\n".join(lines) + "\n")
            written.append(path)
    return written


# --- diagnostic tasks (AX) --------------------------------------------------------------


def with_diagnostic_tasks(tasks: Sequence[Task], known: Mapping[str, Task]) -> list[Task]:
    """`tasks` plus every task of `known` scored with one of their heads and not listed yet.

    Diagnostic sets have no head and no training data: `ax` is predicted with the MNLI head
    (`predict_with="mnli"`), so it is added when `mnli` is among `tasks` and `ax` is not.
    The order of `tasks` is kept; added tasks follow in `known`'s order.
    """
    names = {task.name for task in tasks}
    added = [task for task in known.values() if task.predict_with in names and task.name not in names]
    return [*tasks, *added]


def missing_test_data(task: Task, data_dir: str | None, source: str = "tsv", tfds_download: bool = False) -> str | None:
    """Why `task`'s test data cannot be read (None: it is present), without reading it.

    TSV: every test file must exist under `data_dir` (AX: `<data_dir>/diagnostic/diagnostic.tsv`).
    TFDS (`source="tfds"` and a task with a TFDS name): the dataset is loaded, unless
    `tfds_download` is on; Hugging Face datasets (`source="hf"`): the test split is loaded. A
    file that exists but is malformed is not "missing": reading it fails later with the file
    and line, as for any other task.
    """
    where = task.source
    if where is None:
        return f"task {task.name} has no data source"
    splits = list(where.test_splits)
    if not splits:
        return f"task {task.name} has no test split"
    if source == readers.HF or source == readers.TFDS and where.tfds_name:
        if tfds_download and source == readers.TFDS:
            return None
        try:
            for split in splits:
                readers.load_split(task, split, source=source, data_dir=data_dir)
        except readers.DataError as error:
            return str(error)
        return None
    if not data_dir:
        return "no --data_dir to read its test file from"
    for split in splits:
        path = readers.split_path(task, split, data_dir)
        if not os.path.isfile(path):
            return f"{path}: no such file"
    return None


def prediction_tasks(
    tasks: Sequence[Task],
    known: Mapping[str, Task],
    data_dir: str | None,
    source: str = "tsv",
    tfds_download: bool = False,
) -> tuple[list[Task], list[str]]:
    """The tasks `--mode=predict` writes files for, and one line per diagnostic task skipped.

    `tasks` always stay (a listed task with missing data fails when read, as before); a
    diagnostic task added by `with_diagnostic_tasks` (AX, with MNLI) stays only when its test
    data is present, otherwise it is dropped with the line `AX skipped: <why>` for the
    caller to log.
    """
    kept, skipped = list(tasks), []
    for task in with_diagnostic_tasks(tasks, known)[len(tasks) :]:
        why = missing_test_data(task, data_dir, source, tfds_download)
        if why is None:
            kept.append(task)
        else:
            label = (task.source.submission_name if task.source else None) or task.name
            skipped.append(f"{label} skipped: {why}")
    return kept, skipped
