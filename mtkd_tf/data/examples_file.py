"""Examples that a stage made (unlabelled or augmented text), as a JSON Lines file of
`{"id", "text_a", "text_b"}` rows: what a data-producing stage writes under the experiment
directory and later stages read back as a task's unlabelled text."""

from __future__ import annotations

import json

from mtkd_tf.data.split import DataError, SplitData
from mtkd_tf.data.tasks import UNLABELLED, Task
from mtkd_tf.runtime.files import write_atomic


def write_examples(path: str, data: SplitData) -> None:
    """Writes `data`'s texts (not its labels) to `path`, atomically."""
    second = data.text_b or [None] * len(data)
    rows = [
        json.dumps({"id": example_id, "text_a": a, "text_b": b}, ensure_ascii=False)
        for example_id, a, b in zip(data.ids, data.text_a, second, strict=True)
    ]
    write_atomic(path, ("\n".join(rows) + "\n").encode())


def read_examples(path: str, task: Task) -> SplitData:
    """The examples in `path` as `task`'s unlabelled split; a malformed row is refused with its line."""
    ids, first, second = [], [], []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                row = json.loads(line)
                ids.append(str(row["id"]))
                first.append(str(row["text_a"]))
                second.append(row.get("text_b"))
            except (ValueError, KeyError, TypeError) as error:
                raise DataError(f"{path}:{number}: not an example row of id, text_a[, text_b] ({error})") from None
    if not ids:
        raise DataError(f"{path}: no examples")
    return SplitData(
        task, UNLABELLED, ids, first, [text or "" for text in second] if task.is_pair else None, source=path
    )
