"""What every reader shares: validating a row's label (`_parse_label`), collecting bad rows
(`_Rows`), and the `SplitData` of the rows kept (`build_split`).

`mtkd_tf.data.readers` (TSV/CSV files, TFDS) and `mtkd_tf.data.hf_datasets` (Hugging Face
`datasets`) both import it; neither imports the other for these.
"""

from __future__ import annotations

import logging
import math

from mtkd_tf.data.split import DataError, SplitData, _label_array
from mtkd_tf.data.tasks import Task

logger = logging.getLogger("mtkd_tf.data.readers")  # the bad-row warnings keep the logger they had


class _Rows:
    """Collects bad rows: raises on the first, or with skip_bad_rows counts and samples them.
    `place` spells a row's position (a file's `path:line`; a dataset's `where, row n`)."""

    def __init__(self, path: str, skip_bad_rows: bool, place: str = "{path}:{line}"):
        self.path = path
        self.skip = skip_bad_rows
        self.place = place
        self.bad: list[str] = []

    def bad_row(self, line: int, problem: str) -> None:
        message = f"{self.place.format(path=self.path, line=line)}: {problem}"
        if not self.skip:
            raise DataError(
                message + " (fix the row, or set skip_bad_rows to skip bad rows with a warning)", "skip_bad_rows"
            )
        self.bad.append(message)

    def report(self) -> None:
        if self.bad:
            sample = "\n  ".join(self.bad[:5])
            logger.warning("skipped %d bad row(s) in %s, e.g.:\n  %s", len(self.bad), self.path, sample)


def build_split(
    task: Task, split: str, ids: list[str], texts: list[list[str]], labels: list | None, source: str
) -> SplitData:
    """The `SplitData` of a reader's validated rows (one or two text columns); an error that
    names `source` if no row was kept."""
    if not ids:
        raise DataError(f"{source}: no examples in split {split!r} of task {task.name!r}")
    return SplitData(
        task=task,
        split=split,
        ids=ids,
        text_a=texts[0],
        text_b=texts[1] if len(texts) > 1 else None,
        labels=_label_array(labels, task) if labels is not None else None,
        source=source,
    )


def _parse_label(value: str, task: Task) -> tuple[float | int | None, str | None]:
    if task.labels:
        if value not in task.labels:
            shown = value if value else "an empty label"
            return None, f"label {shown!r} is not one of task {task.name}'s labels {list(task.labels)}"
        return task.labels.index(value), None
    try:
        score = float(value)
    except ValueError:
        return None, f"score {value!r} is not a number"
    if not math.isfinite(score):
        return None, f"score {value!r} is not finite"
    if task.score_range and not task.score_range[0] <= score <= task.score_range[1]:
        low, high = task.score_range
        return None, f"score {score} is outside task {task.name}'s range [{low}, {high}]"
    return score, None
