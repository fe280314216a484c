"""Pairwise ranking data (MT-DNN's QNLI formulation): candidates grouped by question.

A ranking task's file holds (question, candidate, label) pairs. For training, every
positive candidate forms a group with `group_size - 1` negatives of the same question
(cycled when the question has fewer), so batches hold whole groups and the loss is
`-log softmax(rel)` of the positive within its group. Evaluation and prediction keep the
file's rows and mark each row's question (`SplitData.groups`); a question's top-scoring
candidate is predicted positive, the others negative, which maps back to per-pair labels.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from mtkd_tf.data.split import DataError, SplitData

logger = logging.getLogger(__name__)


def question_groups(data: SplitData) -> np.ndarray:
    """Each row's question index (in order of first appearance)."""
    index: dict[str, int] = {}
    return np.asarray([index.setdefault(question, len(index)) for question in data.text_a], np.int64)


def training_groups(data: SplitData) -> SplitData:
    """Rows rearranged into groups of `group_size`: one positive, then negatives of its question.

    Questions without a positive or without a negative teach the ranking nothing and are
    skipped (with a count in the log). Ids become `<original id>@<position>`, unique even
    where a negative serves several groups.
    """
    task = data.task
    if data.labels is None:
        raise DataError(f"{data.source}: ranking task {task.name!r} needs labels to form training groups")
    groups = question_groups(data)
    positive = np.asarray(data.labels) == task.positive_index
    rows: list[int] = []
    skipped = 0
    for question in range(int(groups.max()) + 1 if len(groups) else 0):
        members = np.flatnonzero(groups == question)
        positives, negatives = members[positive[members]], members[~positive[members]]
        if len(positives) == 0 or len(negatives) == 0:
            skipped += 1
            continue
        for answer in positives:
            rows.append(int(answer))
            rows.extend(int(negatives[k % len(negatives)]) for k in range(task.group_size - 1))
    if skipped:
        logger.warning(
            "%s: %d question(s) of task %s lack a positive or a negative candidate; not trained on",
            data.source,
            skipped,
            task.name,
        )
    if not rows:
        raise DataError(
            f"{data.source}: task {task.name!r} has no question with both a positive "
            f"({task.positive_label!r}) and a negative candidate"
        )
    return dataclasses.replace(
        data,
        ids=[f"{data.ids[row]}@{position}" for position, row in enumerate(rows)],
        text_a=[data.text_a[row] for row in rows],
        text_b=[data.text_b[row] for row in rows],
        labels=np.asarray(data.labels)[rows],
        groups=np.arange(len(rows)) // task.group_size,
    )


def with_question_groups(data: SplitData) -> SplitData:
    """The split as read, each row marked with its question (for evaluation and prediction)."""
    return dataclasses.replace(data, groups=question_groups(data))


def top_candidates(task, scores: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Per-pair class ids: the positive label for each question's best candidate, else the negative."""
    scores = np.asarray(scores, np.float64).reshape(-1)
    best = np.full(int(groups.max()) + 1, -np.inf)
    np.maximum.at(best, groups, scores)
    first_best = np.zeros(len(scores), bool)
    seen: set[int] = set()
    for row in np.flatnonzero(scores == best[groups]):  # ties: the first candidate wins
        if groups[row] not in seen:
            seen.add(int(groups[row]))
            first_best[row] = True
    negative = 1 - task.positive_index
    return np.where(first_best, task.positive_index, negative).astype(np.int64)
