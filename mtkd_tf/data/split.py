"""`SplitData`: one split of one task as columns with stable example ids, and `DataError`.

Readers (`mtkd_tf.data.readers`) and ranking groups (`mtkd_tf.data.ranking`) build it;
everything downstream (batching, soft labels, evaluation) reads it.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from mtkd_tf.data.tasks import UNLABELLED, Task
from mtkd_tf.errors import MtkdError


class DataError(MtkdError, ValueError):
    """Input data is missing or malformed; the message says where and how to fix it."""


@dataclasses.dataclass
class SplitData:
    """One split of one task, as columns. `labels` holds class ids or scores (None: no labels);
    `groups` (ranking tasks) each row's question, rows of a group adjacent in training splits."""

    task: Task
    split: str
    ids: list[str]
    text_a: list[str]
    text_b: list[str] | None = None
    labels: np.ndarray | None = None
    source: str = ""
    groups: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, count: int) -> "SplitData":
        """The first `count` examples (ids unchanged), for quick runs."""
        if count <= 0 or count >= len(self):
            return self
        if self.groups is not None:  # never cut a question's group in two
            while count < len(self) and self.groups[count] == self.groups[count - 1]:
                count += 1
        return dataclasses.replace(
            self,
            ids=self.ids[:count],
            text_a=self.text_a[:count],
            text_b=None if self.text_b is None else self.text_b[:count],
            labels=None if self.labels is None else self.labels[:count],
            groups=None if self.groups is None else self.groups[:count],
        )

    def select(self, rows: np.ndarray, split: str | None = None) -> "SplitData":
        """The examples at `rows` (ids unchanged), optionally renamed to `split`."""
        rows = np.asarray(rows, dtype=int)
        return dataclasses.replace(
            self,
            split=split or self.split,
            ids=[self.ids[i] for i in rows],
            text_a=[self.text_a[i] for i in rows],
            text_b=None if self.text_b is None else [self.text_b[i] for i in rows],
            labels=None if self.labels is None else self.labels[rows],
            groups=None if self.groups is None else self.groups[rows],
        )

    def rows(self, start: int, stop: int) -> "SplitData":
        """Examples `start:stop` (ids unchanged), for chunked inference; groups may be cut."""
        return dataclasses.replace(
            self,
            ids=self.ids[start:stop],
            text_a=self.text_a[start:stop],
            text_b=None if self.text_b is None else self.text_b[start:stop],
            labels=None if self.labels is None else self.labels[start:stop],
            groups=None if self.groups is None else self.groups[start:stop],
        )

    def concat(self, other: "SplitData") -> "SplitData":
        """This split followed by `other` (same task); labels of a split without any are zeros."""
        if self.groups is not None or other.groups is not None:
            raise DataError(
                f"task {self.task.name}: ranking splits cannot be concatenated (unlabelled text is not supported)"
            )

        def labels(data):
            return data.labels if data.labels is not None else np.zeros(len(data), _label_array([], data.task).dtype)

        return dataclasses.replace(
            self,
            split=f"{self.split}+{other.split}",
            ids=self.ids + other.ids,
            text_a=self.text_a + other.text_a,
            text_b=None if self.text_b is None else self.text_b + (other.text_b or [""] * len(other)),
            labels=np.concatenate([labels(self), labels(other)]),
        )

    def example_hashes(self) -> np.ndarray:
        """A 64-bit hash of each example's text: soft labels check them id by id."""
        second = self.text_b or [""] * len(self)
        return np.asarray(
            [
                int.from_bytes(hashlib.blake2b(f"{a}\0{b}".encode(), digest_size=8).digest(), "little")
                for a, b in zip(self.text_a, second, strict=True)
            ],
            dtype=np.uint64,
        )

    def fingerprint(self) -> str:
        """A hash of ids, texts and labels: soft labels record it to catch changed data."""
        digest = hashlib.sha256()
        for i, example_id in enumerate(self.ids):
            digest.update(example_id.encode())
            digest.update(b"\0" + self.text_a[i].encode())
            if self.text_b is not None:
                digest.update(b"\0" + self.text_b[i].encode())
            digest.update(b"\n")
        if self.labels is not None:
            digest.update(np.asarray(self.labels, np.float64).tobytes())
        return digest.hexdigest()[:16]


def _label_array(labels: list, task: Task) -> np.ndarray:
    dtype = np.int32 if task.labels else np.float32
    return np.asarray(labels, dtype=dtype)


HELDOUT = "heldout"


def _units(data: SplitData) -> tuple[list[str], list[str]]:
    """Each example's unit (its id; ranking: its question) and the distinct units, in order."""
    keys = [str(g) for g in data.groups] if data.groups is not None else list(data.ids)
    return keys, list(dict.fromkeys(keys))


def _first_by_hash(data: SplitData, count: int, salt: str) -> np.ndarray:
    """A mask of the examples whose unit is among the `count` whose blake2b(salt + unit) sort first:
    reproducible, and independent of row order and of how much else a run uses."""
    keys, units = _units(data)
    rank = {unit: hashlib.blake2b(f"{salt}\0{unit}".encode(), digest_size=8).digest() for unit in units}
    chosen = set(sorted(units, key=rank.__getitem__)[:count])
    return np.asarray([key in chosen for key in keys], bool)


def carve(data: SplitData, count: int) -> tuple[SplitData, SplitData]:
    """(the rest, the held-out split): `count` examples of `data` set aside by a hash of their ids
    (ranking: of their question), so the choice is reproducible and does not depend on row order
    or on how much of the rest a run trains on. Both keep `data`'s order."""
    _, units = _units(data)
    if count <= 0 or 2 * count > len(units):
        raise DataError(
            f"task {data.task.name}: cannot set {count} of its {len(units)} training "
            f"{'questions' if data.groups is not None else 'examples'} aside as the held-out split "
            "(heldout_examples may take at most half of a task's training data)"
        )
    held = _first_by_hash(data, count, HELDOUT)
    return data.select(np.flatnonzero(~held)), data.select(np.flatnonzero(held), HELDOUT)


def subset(data: SplitData, count: int, salt: str) -> SplitData:
    """`count` examples of `data` (ranking: questions) chosen by blake2b(salt + id), in `data`'s
    order; all of `data` when it has no more."""
    if count >= len(_units(data)[1]):
        return data
    return data.select(np.flatnonzero(_first_by_hash(data, count, salt)))


def keep_labels(data: SplitData, fraction: float) -> tuple[SplitData, SplitData]:
    """(labelled, unlabelled): `fraction` of `data`'s examples (ranking: questions), chosen by a
    hash of their ids, keep their labels; the rest lose them and become unlabelled text (split
    `unlabelled`). Both keep `data`'s order."""
    _, units = _units(data)
    count = max(1, round(fraction * len(units)))
    labelled = _first_by_hash(data, count, "labelled")
    rest = data.select(np.flatnonzero(~labelled), UNLABELLED)
    return data.select(np.flatnonzero(labelled)), dataclasses.replace(rest, labels=None)


def ids_digest(data: SplitData) -> str:
    """A short hash of a split's example ids (the held-out split's record)."""
    return hashlib.sha256("\n".join(data.ids).encode()).hexdigest()[:16]
