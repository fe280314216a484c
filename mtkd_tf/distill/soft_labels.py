"""The soft-label file: teacher-ensemble targets for every example, computed once, offline.

Format: `<soft_labels_dir>/<task>.npz`, a NumPy archive with
- `ids`: the example ids (`<task>/<split>/<row>`) of the data pipeline, one per row;
- `targets`: float32, `[N, num_classes]` averaged class probabilities Q = mean_k Q^k at the
  recorded temperature, or `[N]`: for ranking each candidate's probability within its question
  (softmax(scores / T) over the group, averaged over members), for regression the mean score;
- `hashes`: uint64, a hash of each example's text (checked id by id when aligning);
- `metadata`: a JSON string: format version, task, type, label names, teacher directories,
  K (num_teachers), temperature, and a fingerprint of each split's data.
Loading validates all of it and `align` checks the ids and fingerprints against the data a
student trains on, so soft labels made for other data are never used silently.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import numpy as np

from mtkd_tf.data.split import SplitData
from mtkd_tf.data.tasks import CLASSIFICATION, Task
from mtkd_tf.distill.checks import check_temperature
from mtkd_tf.errors import ConfigError, MtkdError
from mtkd_tf.runtime.files import write_npz

FORMAT_VERSION = 2  # 2: ranking targets are the members' averaged group probabilities (1: scores)


class SoftLabelError(MtkdError, ValueError):
    """A soft-label file is missing, corrupt, or does not match the task or data."""


@dataclasses.dataclass
class SoftLabels:
    ids: np.ndarray
    targets: np.ndarray
    metadata: dict[str, Any]
    hashes: np.ndarray | None = None
    source: str = ""  # the file it was read from: errors name it

    @property
    def task(self) -> str:
        return self.metadata["task"]


def path_for(directory: str, task: str) -> str:
    return os.path.join(directory, f"{task}.npz")


def build(
    task: Task,
    splits: Sequence[SplitData],
    targets: Sequence[np.ndarray],
    teachers: Sequence[str],
    temperature: float,
) -> SoftLabels:
    """Soft labels of one task from per-split ensemble targets (aligned with each split)."""
    metadata = {
        "format_version": FORMAT_VERSION,
        "task": task.name,
        "type": task.type,
        "labels": list(task.labels),
        "teachers": [os.path.abspath(t) for t in teachers],
        "num_teachers": len(teachers),
        "temperature": float(temperature),
        "fingerprints": {data.split: data.fingerprint() for data in splits},
    }
    ids = np.asarray([i for data in splits for i in data.ids])
    values = np.concatenate([np.asarray(t, np.float32) for t in targets])
    hashes = np.concatenate([data.example_hashes() for data in splits])
    soft = SoftLabels(ids, values, metadata, hashes)
    validate(soft, f"soft labels of {task.name}")
    return soft


def write(path: str, soft: SoftLabels) -> None:
    """Writes atomically (`files.write_npz`): a reader never sees half a file."""
    write_npz(
        path,
        {
            "ids": soft.ids.astype(str),
            "targets": soft.targets,
            "hashes": soft.hashes,
            "metadata": np.asarray(json.dumps(soft.metadata)),
        },
    )


def validate(soft: SoftLabels, where: str) -> None:
    """Structure checks: shapes, finite values, probabilities that sum to 1, unique ids."""
    meta, targets = soft.metadata, soft.targets
    _check_types(soft, where)
    if soft.hashes is None or len(soft.hashes) != len(soft.ids):
        raise SoftLabelError(f"{where}: lacks one text hash per example")
    if len(soft.ids) != len(targets):
        raise SoftLabelError(f"{where}: {len(soft.ids)} ids but {len(targets)} target rows")
    if len(set(soft.ids.tolist())) != len(soft.ids):
        raise SoftLabelError(f"{where}: duplicated example ids")
    if not np.all(np.isfinite(targets)):
        bad = int(np.argwhere(~np.isfinite(targets.reshape(len(targets), -1)))[0][0])
        raise SoftLabelError(f"{where}: target of example {soft.ids[bad]} is not finite (NaN or Inf)")
    if meta["type"] == CLASSIFICATION:
        if targets.ndim != 2 or targets.shape[1] != len(meta["labels"]):
            raise SoftLabelError(
                f"{where}: targets have shape {targets.shape}, expected [N, {len(meta['labels'])}] "
                f"for labels {meta['labels']}"
            )
        sums = targets.sum(axis=1)
        off = np.flatnonzero(np.abs(sums - 1.0) > 1e-3)
        if off.size or targets.min() < 0:
            first = off[0] if off.size else int(np.argwhere(targets < 0)[0][0])
            raise SoftLabelError(
                f"{where}: probabilities of example {soft.ids[first]} do not sum to 1 ({sums[first]:.4f})"
            )
    elif targets.ndim != 1:
        raise SoftLabelError(f"{where}: regression targets must be one score per example, got shape {targets.shape}")
    try:
        check_temperature(meta["temperature"])
    except ConfigError as error:  # the file's metadata, not a setting: a file error
        raise SoftLabelError(f"{where}: {error}") from None


_METADATA_TYPES = {
    "task": str,
    "type": str,
    "labels": list,
    "teachers": list,
    "num_teachers": int,
    "temperature": (int, float),
    "fingerprints": dict,
}


def _check_types(soft: SoftLabels, where: str) -> None:
    """Each member and metadata field has the type `write` gives it, so the checks after it (and
    `align`) never meet a 0-d array, a string of numbers or metadata that is not an object."""
    if not isinstance(soft.metadata, dict):
        raise SoftLabelError(f"{where}: metadata must be a JSON object, got {type(soft.metadata).__name__}")
    for key, kind in _METADATA_TYPES.items():
        if key not in soft.metadata:
            raise SoftLabelError(f"{where}: metadata lacks {key!r}")
        value = soft.metadata[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise SoftLabelError(
                f"{where}: metadata field {key!r} has the wrong type ({type(value).__name__}: {value!r:.60})"
            )
    if not all(isinstance(label, str) for label in soft.metadata["labels"]):
        raise SoftLabelError(f"{where}: metadata field 'labels' must list label names")
    members = {
        "ids": (soft.ids, "U", "strings"),
        "targets": (soft.targets, "f", "floats"),
        "hashes": (soft.hashes, "ui", "integers"),
    }
    for name, (array, kinds, spelled) in members.items():
        if array is None:
            continue
        if (
            not isinstance(array, np.ndarray)
            or array.dtype.kind not in kinds
            or array.ndim not in ((1, 2) if name == "targets" else (1,))
        ):
            shape, dtype = getattr(array, "shape", "?"), getattr(array, "dtype", type(array).__name__)
            raise SoftLabelError(
                f"{where}: member {name!r} must be a vector of {spelled}"
                f"{' (or [N, classes])' if name == 'targets' else ''}, got shape {shape} of {dtype}"
            )


def read(path: str) -> SoftLabels:
    """Reads and validates one soft-label file; a truncated or corrupt file is an error."""
    if not os.path.isfile(path):
        raise SoftLabelError(f"soft labels {path}: no such file (make them first: the soft_labels stage)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            soft = SoftLabels(
                archive["ids"], archive["targets"], json.loads(str(archive["metadata"])), archive["hashes"], source=path
            )
    except Exception as error:  # zipfile, KeyError, ValueError, JSON errors
        raise SoftLabelError(f"soft labels {path}: unreadable or corrupt ({type(error).__name__}: {error})") from None
    if not isinstance(soft.metadata, dict):
        raise SoftLabelError(f"soft labels {path}: metadata must be a JSON object, got {type(soft.metadata).__name__}")
    if soft.metadata.get("format_version") != FORMAT_VERSION:
        raise SoftLabelError(
            f"soft labels {path}: format version {soft.metadata.get('format_version')}, expected {FORMAT_VERSION}"
        )
    validate(soft, f"soft labels {path}")
    return soft


def align(
    soft: SoftLabels, task: Task, data: SplitData, temperature: float | None = None, where: str = ""
) -> np.ndarray:
    """The targets of `data`'s examples, in data order, after checking that they belong to it."""
    where = where or (f"soft labels {soft.source}" if soft.source else f"soft labels of {soft.task}")
    meta = soft.metadata
    if meta["task"] != task.name:
        raise SoftLabelError(f"{where}: made for task {meta['task']!r}, not {task.name!r}")
    if meta["type"] != task.type or list(meta["labels"]) != list(task.labels):
        raise SoftLabelError(
            f"{where}: label set {meta['labels']} ({meta['type']}) does not match "
            f"task {task.name}'s {list(task.labels)} ({task.type})"
        )
    if temperature is not None and abs(meta["temperature"] - temperature) > 1e-9:
        raise SoftLabelError(
            f"{where}: made at temperature {meta['temperature']}, but distillation uses {temperature}; regenerate them"
        )
    recorded = meta["fingerprints"].get(data.split)
    if recorded is None:
        raise SoftLabelError(
            f"{where}: has no targets for split {data.split!r} (has {', '.join(meta['fingerprints'])})"
        )
    index = {example_id: row for row, example_id in enumerate(soft.ids.tolist())}
    missing = [example_id for example_id in data.ids if example_id not in index]
    if missing:
        raise SoftLabelError(
            f"{where}: {len(missing)} example id(s) of {task.name}/{data.split} are missing, e.g. {missing[:3]}; "
            "were they made for other data? make them again (the soft_labels stage)"
        )
    rows = [index[example_id] for example_id in data.ids]
    changed = np.flatnonzero(soft.hashes[rows] != data.example_hashes())
    if changed.size:
        raise SoftLabelError(
            f"{where}: made for different {task.name}/{data.split} data: the text of {changed.size} example(s) "
            f"changed, e.g. {data.ids[changed[0]]} (fingerprint {recorded}, data {data.fingerprint()}); "
            "make them again (the soft_labels stage)"
        )
    return soft.targets[rows]


def statistics(targets: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """What a classification task's soft targets carry beyond its labels: their mean probability
    of the gold class, how often their top class is gold, and their mean entropy (nats; the
    uniform distribution's is `max_entropy`)."""
    targets, labels = np.asarray(targets, np.float64), np.asarray(labels, int)
    entropy = -np.sum(targets * np.log(np.maximum(targets, 1e-12)), axis=1)
    return {
        "examples": int(len(labels)),
        "gold_probability": float(np.mean(targets[np.arange(len(labels)), labels])),
        "agreement": float(np.mean(np.argmax(targets, axis=1) == labels)),
        "entropy": float(np.mean(entropy)),
        "max_entropy": float(np.log(targets.shape[1])),
    }
