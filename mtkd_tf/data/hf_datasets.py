"""The Hugging Face `datasets` data source (`data_source=hf`): a task's examples from a dataset on
disk or in the local `datasets` cache, never from the network.

`<data_dir>/<task name>` holds one of
- a `DatasetDict.save_to_disk` directory (it has `dataset_dict.json`);
- Parquet, JSON Lines or CSV files named after their splits (`train.parquet`, `validation.jsonl`,
  `test.csv`; shards as the hub names them, `train-00000-of-00002.parquet`, in any subdirectory),
  each split read through `datasets.load_dataset("parquet" | "json" | "csv", data_files=...)`.
Without that entry, a task naming a hub dataset (`hf_name`, `hf_config`; GLUE: `nyu-mll/glue`
and the task's name) is loaded with `load_dataset(hf_name, hf_config)` with the hub turned off:
a dataset the cache already holds loads, any other fails at once naming what was looked for.

Columns are the task's `hf_text_columns` / `hf_label_column` (GLUE: the hub's `sentence`,
`question1`, `premise`, ..., `label`), else its `text_columns` / `label_column` (a task file's).
A `ClassLabel` label column maps its ids to the task's labels by name (for labels `"0".."n-1"`,
by id), and names the labels of a task file that lists none (`with_label_names`); in other
columns a string is a label's name, an integer the label named like it or else a class id (what
`to_json` / `to_csv` make of a ClassLabel), a float a regression score. Our splits map
to the hub's (`dev` -> `validation`, `dev_matched` -> `validation_matched`) unless `hf_splits`
says otherwise; without `hf_splits`, a file or split under our own name (`dev.parquet`) is found
too. Ids are `<task>/<split>/<idx>` where the dataset has an `idx` column (GLUE's leaderboard
index), else the row's position, as the TSV reader's.

>>> from mtkd_tf.data.tasks import GLUE_TASKS
>>> hf_split_names(GLUE_TASKS["mnli"], "dev_matched"), hf_split_names(GLUE_TASKS["sst2"], "dev")
(('validation_matched',), ('validation',))
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from typing import Any, Callable, Iterator, Sequence

from mtkd_tf.data.rows import _parse_label, _Rows, build_split
from mtkd_tf.data.split import DataError, SplitData
from mtkd_tf.data.tasks import CLASSIFICATION, REGRESSION, Task, TaskError

FORMATS = {".parquet": "parquet", ".jsonl": "json", ".csv": "csv"}  # file suffix -> datasets builder
INSTALL = "pip install 'mtkd_tf[hf]' (or pip install datasets)"


def hf_split_names(task: Task, split: str) -> tuple[str, ...]:
    """The dataset split names our `split` is looked up under, in order: `hf_splits`' entry, or
    the hub's convention (`dev*` -> `validation*`) and then our own name."""
    if split in task.source.hf_splits:
        return (task.source.hf_splits[split],)
    mapped = "validation" + split[3:] if split == "dev" or split.startswith("dev_") else split
    return tuple(dict.fromkeys((mapped, split)))


def _import_datasets():
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"data_source hf reads through the Hugging Face datasets library, which is not installed: {INSTALL}",
            "data_source",
        ) from None
    return datasets


@contextlib.contextmanager
def _hub_off() -> Iterator[Any]:
    """`datasets` with the hub turned off for the duration (what HF_HUB_OFFLINE=1 sets at import):
    cached datasets load, anything else fails at once instead of reaching the network."""
    datasets = _import_datasets()
    from huggingface_hub import constants

    saved = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield datasets
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@dataclasses.dataclass
class _Found:
    """A task's dataset: where it is (for messages), its split names, and how to load one split."""

    where: str
    splits: list[str]
    load: Callable[[str], Any]


def _split_files(root: str) -> dict[str, tuple[str, list[str]]]:
    """`{split: (builder, files)}` of the Parquet / JSON Lines / CSV files under `root`."""
    found: dict[str, dict[str, list[str]]] = {}
    for directory, subdirectories, names in os.walk(root):
        subdirectories[:] = sorted(d for d in subdirectories if not d.startswith("."))
        for name in sorted(names):
            stem, suffix = os.path.splitext(name)
            if suffix in FORMATS:  # split names have no '-': the rest names a shard
                found.setdefault(stem.split("-", 1)[0], {}).setdefault(FORMATS[suffix], []).append(
                    os.path.join(directory, name)
                )
    result = {}
    for split, by_builder in found.items():
        if len(by_builder) > 1:
            listed = "; ".join(f"{builder}: {', '.join(files)}" for builder, files in by_builder.items())
            raise DataError(f"{root}: split {split!r} is in files of more than one format ({listed}); keep one")
        result[split] = next(iter(by_builder.items()))
    return result


def _no_rows(builder: str, paths: Sequence[str]) -> bool:
    """Whether `paths` hold no rows (a CSV file: no line after its header)."""
    if builder == "parquet":
        import pyarrow.parquet as pq

        try:
            return all(pq.ParquetFile(path).metadata.num_rows == 0 for path in paths)
        except Exception:  # not Parquet at all: datasets says so when it reads it
            return False
    for path in paths:
        with open(path, "rb") as handle:
            rows = (line for line in handle if line.strip())
            if next(rows, None) is not None and (builder != "csv" or next(rows, None) is not None):
                return False
    return True


def _saved(path: str) -> _Found:
    """A `DatasetDict.save_to_disk` directory: each split is a saved Dataset in `<path>/<split>`."""
    try:
        with open(os.path.join(path, "dataset_dict.json"), encoding="utf-8") as handle:
            splits = list(json.load(handle)["splits"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"{path}/dataset_dict.json: not a save_to_disk split list: {_first_line(error)}") from None
    where = f"{path} (save_to_disk)"

    def load(split: str):
        datasets = _import_datasets()
        try:
            with open(os.path.join(path, split, "state.json"), encoding="utf-8") as handle:
                empty = not json.load(handle).get("_data_files")
        except (OSError, ValueError) as error:
            raise DataError(f"{where}: cannot read split {split!r}: {_first_line(error)}") from None
        if empty:  # datasets cannot load an empty saved split: say what it means
            raise DataError(f"{where}: no examples in split {split!r}")
        try:
            return datasets.load_from_disk(os.path.join(path, split))
        except Exception as error:  # FileNotFoundError, ArrowInvalid, ...
            raise DataError(f"{where}: cannot load split {split!r}: {_first_line(error)}") from None

    return _Found(where, splits, load)


def _on_disk(path: str) -> _Found:
    if not os.path.isdir(path):
        raise DataError(
            f"{path}: not a directory (data_source hf reads <data_dir>/<task>: a save_to_disk "
            "directory, or Parquet / JSON Lines / CSV files named after their splits)"
        )
    if os.path.isfile(os.path.join(path, "dataset_dict.json")):
        return _saved(path)
    if os.path.isfile(os.path.join(path, "state.json")):
        raise DataError(
            f"{path}: a single Dataset saved with save_to_disk, without split names; save a DatasetDict "
            "instead: DatasetDict({'train': ..., 'validation': ...}).save_to_disk(path)"
        )
    files = _split_files(path)
    if not files:
        raise DataError(
            f"{path}: neither a save_to_disk directory (no dataset_dict.json) nor Parquet / JSON Lines / "
            "CSV files named after their splits (train.parquet, validation.jsonl, test.csv, ...)"
        )

    def load(split: str):
        builder, paths = files[split]
        if _no_rows(builder, paths):  # datasets' Parquet reader fails on empty files: say what it means
            raise DataError(f"{', '.join(paths)}: no examples in split {split!r}")
        with _hub_off() as datasets:
            try:
                return datasets.load_dataset(builder, data_files={split: paths}, split=split)
            except Exception as error:  # malformed JSON lines, CSV, Parquet: datasets wraps them
                cause = error.__cause__ or error
                raise DataError(f"{', '.join(paths)}: cannot read as {builder}: {_first_line(cause)}") from None

    return _Found(path, sorted(files), load)


def _in_cache(task: Task, looked: str) -> _Found:
    name, config = task.source.hf_name, task.source.hf_config
    label = f"{name}" + (f" (config {config})" if config else "")
    with _hub_off() as datasets:
        try:
            loaded = datasets.load_dataset(name, config)
        except Exception as error:  # ConnectionError, ValueError("Couldn't find cache ..."), ...
            raise DataError(
                f"task {task.name!r}: no dataset {looked}, and the Hugging Face dataset {label} is not in the "
                f"datasets cache {datasets.config.HF_DATASETS_CACHE} ({_first_line(error)}); nothing was downloaded "
                "(the hub stays off): save it under that directory with save_to_disk, or load it once online",
                "data_dir",
            ) from None
    return _Found(f"Hugging Face dataset {label} (cached)", list(loaded), loaded.__getitem__)


def find_dataset(task: Task, data_dir: str | None) -> _Found:
    """`<data_dir>/<task>` when it exists, else the task's hub dataset from the cache."""
    path = os.path.join(data_dir, task.name) if data_dir else None
    if path and os.path.exists(path):
        return _on_disk(path)
    looked = f"at {path}" if path else "on disk (no data_dir)"
    if not task.source.hf_name:
        raise DataError(
            f"task {task.name!r}: no dataset {looked}, and the task names no Hugging Face dataset "
            "(hf_name) to look up in the datasets cache",
            "data_dir",
        )
    return _in_cache(task, looked)


def _split(found: _Found, task: Task, split: str) -> tuple[str, Any]:
    for name in hf_split_names(task, split):
        if name in found.splits:
            return name, found.load(name)
    names = " or ".join(repr(name) for name in hf_split_names(task, split))
    raise DataError(
        f"{found.where}: no split {names} (split {split!r} of task {task.name!r}); its splits: "
        f"{', '.join(found.splits)}"
    )


def _column(task: Task, which: str) -> Any:
    source = task.source
    if which == "text":
        return source.hf_text_columns or source.text_columns
    return source.hf_label_column or source.label_column


def _check_columns(dataset: Any, columns: Sequence, what: str, where: str) -> None:
    for column in columns:
        if not isinstance(column, str):
            raise DataError(
                f"{where}: {what} column {column!r} is a position; a dataset's columns have names "
                f"({list(dataset.column_names)}): name it in the task file"
            )
        if column not in dataset.column_names:
            raise DataError(f"{where}: no {what} column {column!r} among the columns {list(dataset.column_names)}")


def _label_decoder(task: Task, feature: Any, column: str, where: str) -> Callable[[Any], tuple[Any, str | None]]:
    """value -> (class id or score, problem): a ClassLabel's ids through their names, other values
    as the TSV reader parses label strings."""
    import datasets

    if not isinstance(feature, datasets.ClassLabel):

        def plain(value: Any) -> tuple[Any, str | None]:
            if value is None:
                return None, "no label (null)"
            if isinstance(value, int) and not isinstance(value, bool) and task.labels and str(value) not in task.labels:
                if 0 <= value < len(task.labels):  # a class id, as ClassLabel and TFDS ints are
                    return value, None
                return None, (
                    f"label {value} is outside task {task.name}'s labels {list(task.labels)} "
                    f"(ids 0..{len(task.labels) - 1})"
                )
            return _parse_label(str(value).strip(), task)

        return plain
    names = list(feature.names)
    if task.type == REGRESSION:
        raise DataError(
            f"{where}: label column {column!r} is a ClassLabel {names}, but task {task.name!r} "
            "is a regression task (it needs scores)"
        )
    if all(name in task.labels for name in names):
        index = [task.labels.index(name) for name in names]
    elif task.labels == tuple(str(i) for i in range(len(task.labels))) and len(names) <= len(task.labels):
        index = list(range(len(names)))  # labels "0".."n-1" name the ids themselves (GLUE's TSV labels)
    else:
        raise DataError(
            f"{where}: the ClassLabel names {names} of column {column!r} are not task {task.name!r}'s "
            f"labels {list(task.labels)}: give the task these labels (or none, to take the ClassLabel's)"
        )

    def decode(value: Any) -> tuple[Any, str | None]:
        if value is None or not 0 <= value < len(names):
            return None, f"label {value} is outside the ClassLabel names {names} (ids 0..{len(names) - 1})"
        return index[value], None

    return decode


def with_label_names(tasks: Sequence[Task], data_dir: str | None) -> list[Task]:
    """`tasks`, a task file's classification tasks that list no labels named by their ClassLabel
    column (read from the training split's features)."""
    result = []
    for task in tasks:
        if task.type != CLASSIFICATION or task.labels or task.source is None:
            result.append(task)
            continue
        found = find_dataset(task, data_dir)
        split, dataset = _split(found, task, "train" if "train" in task.source.files else next(iter(task.source.files)))
        where = f"{found.where} split {split!r}"
        column = _column(task, "label")
        _check_columns(dataset, [column], "label", where)
        feature = dataset.features[column]
        if not isinstance(feature, _import_datasets().ClassLabel):
            raise TaskError(
                f"task {task.name!r} lists no labels, and its label column {column!r} in {where} is "
                f"{feature}, not a ClassLabel that names them: list the labels in the task file"
            )
        result.append(dataclasses.replace(task, labels=tuple(feature.names)))
    return result


def read_hf(task: Task, split: str, data_dir: str | None, skip_bad_rows: bool = False) -> SplitData:
    """One split of `task` from its Hugging Face dataset (module docstring), every row validated."""
    if split not in task.source.files:
        raise DataError(f"task {task.name!r} has no split {split!r}; its splits: {', '.join(task.source.files)}")
    task = with_label_names([task], data_dir)[0]
    found = find_dataset(task, data_dir)
    hf_split, dataset = _split(found, task, split)
    where = f"{found.where} split {hf_split!r}"
    texts = _column(task, "text")
    _check_columns(dataset, texts, "text", where)
    for column in texts:
        feature = dataset.features[column]
        if not isinstance(feature, _import_datasets().Value):
            raise DataError(f"{where}: text column {column!r} holds {feature}, not text")
    label = _column(task, "label") if task.source.layout(split).label_column is not None else None
    if label is not None:
        _check_columns(dataset, [label], "label", where)
        decode = _label_decoder(task, dataset.features[label], label, where)
    if len(dataset) == 0:
        raise DataError(f"{where}: no examples in split {split!r} of task {task.name!r}")
    columns = [list(dataset[column]) for column in texts]
    labels_in = list(dataset[label]) if label is not None else None
    indices = list(dataset["idx"]) if "idx" in dataset.column_names else None
    if indices is not None and len(set(indices)) != len(indices):
        raise DataError(f"{where}: the idx column repeats values; ids must be unique")
    rows = _Rows(where, skip_bad_rows, place="{path}, row {line}")
    ids, text, labels = [], [[] for _ in texts], []
    for row in range(len(dataset)):
        values = [column[row] for column in columns]
        empty = [column for column, value in zip(texts, values, strict=True) if value is None]
        if empty:
            rows.bad_row(row, f"no text (null) in column {empty[0]!r}")
            continue
        if labels_in is not None:
            value, problem = decode(labels_in[row])
            if problem:
                rows.bad_row(row, problem)
                continue
            labels.append(value)
        ids.append(f"{task.name}/{split}/{indices[row] if indices is not None else len(ids)}")
        for kept, value in zip(text, values, strict=True):
            kept.append(str(value))
    rows.report()
    return build_split(task, split, ids, text, labels if labels_in is not None else None, where)
