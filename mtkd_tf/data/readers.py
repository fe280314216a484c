"""Readers: GLUE TSV layouts, custom TSV/CSV files, TFDS and Hugging Face `datasets`
(`mtkd_tf.data.hf_datasets`), all into `SplitData` columns.

Every example keeps a stable id `<task>/<split>/<row>` (the row's position in its split),
the key soft labels are attached by. Bad rows raise `DataError` naming file, line and
problem before any training starts; `skip_bad_rows` turns them into a counted warning.
"""

from __future__ import annotations

import csv
import io
import os
from typing import Sequence

import numpy as np

from mtkd_tf.data import ranking
from mtkd_tf.data.rows import _parse_label, _Rows, build_split
from mtkd_tf.data.split import DataError, SplitData, _label_array
from mtkd_tf.data.tasks import CLASSIFICATION, RANKING, FileLayout, Task

TSV = "tsv"
TFDS = "tfds"
HF = "hf"
SOURCES = (TSV, TFDS, HF)


def _decode(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read: {error}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: bytes that are not UTF-8 ({error.reason} at byte {error.start}); "
            "re-encode the file as UTF-8"
        ) from None


def _column_index(column, header: list[str] | None, path: str, what: str) -> int:
    if isinstance(column, int):
        return column
    if header is None:
        raise DataError(f"{path}: {what} column {column!r} is a name but the layout has no header")
    if column not in header:
        raise DataError(f"{path}:1: no {what} column {column!r} in header {header}")
    return header.index(column)


def read_delimited(path: str, task: Task, split: str, layout: FileLayout, skip_bad_rows: bool = False) -> SplitData:
    """Reads one TSV/CSV split of `task` with `layout` into columns, validating every row."""
    text = _decode(path)
    quoting = csv.QUOTE_MINIMAL if layout.quoting else csv.QUOTE_NONE
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=layout.delimiter, quoting=quoting, strict=True)
    rows = _Rows(path, skip_bad_rows)
    header = None
    try:
        if layout.header:
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: the file is empty (expected a header and rows)")
        text_at = [_column_index(c, header, path, "text") for c in layout.text_columns]
        label_at = None
        if layout.label_column is not None:
            label_at = _column_index(layout.label_column, header, path, "label")
        width = len(header) if header is not None else None
        needed = max(text_at + ([label_at] if label_at is not None else [])) + 1
        ids, text_a, text_b, labels = [], [], [], []
        for row in reader:
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if width is not None and len(row) != width:
                rows.bad_row(line, f"expected {width} columns (as in the header), found {len(row)}")
                continue
            if len(row) < needed:
                rows.bad_row(line, f"expected at least {needed} columns, found {len(row)}")
                continue
            label = None
            if label_at is not None:
                label, problem = _parse_label(row[label_at].strip(), task)
                if problem:
                    rows.bad_row(line, problem)
                    continue
            ids.append(f"{task.name}/{split}/{len(ids)}")
            text_a.append(row[text_at[0]])
            if len(text_at) > 1:
                text_b.append(row[text_at[1]])
            labels.append(label)
    except csv.Error as error:
        raise DataError(f"{path}:{reader.line_num}: malformed row ({error}); check quoting") from None
    rows.report()
    texts = [text_a, text_b] if len(text_at) > 1 else [text_a]
    return build_split(task, split, ids, texts, labels if label_at is not None else None, path)


def split_path(task: Task, split: str, data_dir: str) -> str:
    if split not in task.source.files:
        raise DataError(f"task {task.name!r} has no split {split!r}; its splits: {', '.join(task.source.files)}")
    name = task.source.files[split]
    if os.path.isabs(name):
        return name
    return os.path.join(data_dir, task.source.directory or task.name, name)


def read_tfds(task: Task, split: str, data_dir: str | None, download: bool = False) -> SplitData:
    """Reads a split through `tfds.load`; offline (`download=False`) a missing dataset fails fast."""
    if not task.source.tfds_name:
        raise DataError(f"task {task.name!r} has no TFDS dataset; set data_source to tsv", "data_source")
    if split not in task.source.tfds_splits:
        raise DataError(f"task {task.name!r} has no TFDS split for {split!r}")
    import tensorflow_datasets as tfds

    try:
        dataset = tfds.load(
            task.source.tfds_name,
            split=task.source.tfds_splits[split],
            data_dir=data_dir or None,
            download=download,
            shuffle_files=False,
        )
    except Exception as error:  # tfds raises AssertionError, DatasetNotFoundError, ...
        hint = "" if download else " (downloads are off: prepare it with `tfds build` or set tfds_download)"
        raise DataError(
            f"TFDS dataset {task.source.tfds_name} split {task.source.tfds_splits[split]} is not available "
            f"in {data_dir or 'the default TFDS data_dir'}{hint}: {str(error).splitlines()[0]}",
            "tfds_download",
        ) from None
    columns: dict[str, list] = {name: [] for name in task.source.tfds_text_features}
    labels, indices = [], []
    for example in tfds.as_numpy(dataset):
        for name in task.source.tfds_text_features:
            columns[name].append(example[name].decode("utf-8"))
        labels.append(example.get("label", -1))
        indices.append(int(example.get("idx", len(indices))))
    if not indices:
        raise DataError(f"TFDS dataset {task.source.tfds_name} split {split!r} has no examples")
    order = np.argsort(indices, kind="stable")
    texts = [[columns[name][i] for i in order] for name in task.source.tfds_text_features]
    label_array = None
    if split not in task.source.test_splits and task.source.label_column is not None:
        label_array = _label_array([labels[i] for i in order], task)
        if task.type == CLASSIFICATION and (label_array.min() < 0 or label_array.max() >= task.num_classes):
            raise DataError(f"TFDS {task.source.tfds_name} split {split!r}: labels outside 0..{task.num_classes - 1}")
    return SplitData(
        task=task,
        split=split,
        ids=[f"{task.name}/{split}/{indices[i]}" for i in order],
        text_a=texts[0],
        text_b=texts[1] if len(texts) > 1 else None,
        labels=label_array,
        source=f"tfds:{task.source.tfds_name}",
    )


def load_split(
    task: Task,
    split: str,
    source: str = TSV,
    data_dir: str | None = None,
    skip_bad_rows: bool = False,
    tfds_download: bool = False,
) -> SplitData:
    """One split of one task from `source` (tsv: the GLUE directory layout or a task file's).

    Ranking tasks come back grouped by question: training groups for `train`, question
    marks for the other splits (see `mtkd_tf.data.ranking`).
    """
    if task.source is None:
        raise DataError(
            f"task {task.name!r} has no data source (a task read back from a model); "
            "take it from the task registry or a task file"
        )
    if task.type == CLASSIFICATION and not task.labels and source != HF:
        raise DataError(
            f"task {task.name!r} lists no labels: list them in its task file (only data_source hf "
            "takes them from a ClassLabel column)",
            "data_source",
        )
    if source == HF:
        from mtkd_tf.data import hf_datasets

        data = hf_datasets.read_hf(task, split, data_dir, skip_bad_rows)
    elif source == TFDS and task.source.tfds_name:
        data = read_tfds(task, split, data_dir, download=tfds_download)
    elif source not in SOURCES:
        raise DataError(f"unknown data source {source!r}; choose one of {', '.join(SOURCES)}")
    elif not data_dir:
        raise DataError("data_dir is required to read TSV data", "data_dir")
    else:
        data = read_delimited(split_path(task, split, data_dir), task, split, task.source.layout(split), skip_bad_rows)
    if task.type == RANKING:
        data = ranking.training_groups(data) if split == "train" else ranking.with_question_groups(data)
    return data


def load_splits(tasks: Sequence[Task], splits: Sequence[str] | str, **kwargs) -> dict[str, dict[str, SplitData]]:
    """Reads `splits` ("train", "dev" = every dev split, "test" = every test split) of every task.

    All files are read and validated before anything trains, so bad input fails early.
    """
    if isinstance(splits, str):
        splits = [splits]
    result: dict[str, dict[str, SplitData]] = {}
    for task in tasks:
        names: list[str] = []
        for split in splits:
            if split == "dev":
                names += list(task.source.dev_splits)
            elif split == "test":
                names += list(task.source.test_splits)
            elif split in task.source.files or split in task.source.tfds_splits:
                names.append(split)
        result[task.name] = {name: load_split(task, name, **kwargs) for name in names}
    return result
