"""Teacher ensembles: K MT-DNNs that differ as the paper's did, and their averaged predictions.

Member k trains with seed `seed + 1000 (k + 1)`, shared-layer dropout
`dropouts[k % len]` and encoder `encoders[k % len]`; each member is an ordinary model
directory (named by `mtkd_tf.experiment.layout`), so it can be evaluated alone. The ensemble's
prediction is the mean of its members' class probabilities (regression: mean score).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import shutil
from typing import Mapping, Sequence

import numpy as np

from mtkd_tf.config import TeacherConfig
from mtkd_tf.data.batching import tokenize_all
from mtkd_tf.data.split import SplitData
from mtkd_tf.data.tasks import CLASSIFICATION, RANKING, Task
from mtkd_tf.distill import soft_labels
from mtkd_tf.errors import ConfigError
from mtkd_tf.models import model_dir as model_dir_lib
from mtkd_tf.models.families import tokenizer_family
from mtkd_tf.models.inference import labelled_splits, predict_outputs
from mtkd_tf.models.losses import soften
from mtkd_tf.models.mtdnn import MTDNN, in_precision
from mtkd_tf.runtime.directory_lock import DirectoryLock
from mtkd_tf.runtime.files import PARTIAL, write_atomic
from mtkd_tf.training import preemption

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class MemberSpec:
    index: int
    seed: int
    dropout: float
    encoder: str


def member_specs(num_teachers: int, seed: int, dropouts: Sequence[float], encoders: Sequence[str]) -> list[MemberSpec]:
    """The K members' settings; `num_teachers` and `dropouts` obey `TeacherConfig`'s rules."""
    TeacherConfig(num_teachers=num_teachers, teacher_dropouts=list(dropouts)).validate()
    if not encoders:
        raise ConfigError("teacher_encoders must list at least one value", "teacher_encoders")
    return [
        MemberSpec(k, seed + 1000 * (k + 1), float(dropouts[k % len(dropouts)]), encoders[k % len(encoders)])
        for k in range(num_teachers)
    ]


def member_targets(
    member: MTDNN,
    data: SplitData,
    temperature: float = 1.0,
    batch_size: int = 128,
    policy: str | None = None,
    tokens: tuple | None = None,
) -> np.ndarray:
    """One member's targets for `data`: probabilities at temperature T, or scores; the encoder
    computes under dtype `policy` (None: as the member is; mixed_bfloat16: faster on CPUs with
    AVX512-BF16 or AMX). `tokens`: `data` already tokenised by this member's preprocessor."""
    model = member if policy is None else in_precision(member, policy)
    outputs = predict_outputs(model, data, batch_size, tokens=tokens)
    return targets_from_outputs(data.task, outputs, temperature, data.groups)


def targets_from_outputs(
    task: Task, outputs: np.ndarray, temperature: float = 1.0, groups: np.ndarray | None = None
) -> np.ndarray:
    """Head outputs -> what an ensemble averages: class probabilities at temperature T; for
    ranking, each candidate's probability within its question, softmax(scores / T) over the
    group (so members' distributions are averaged, as for classes); for regression the score."""
    if task.type == CLASSIFICATION:
        return np.exp(np.asarray(soften(outputs, temperature)))
    if task.type == RANKING:
        if groups is None:
            raise ValueError(f"ranking task {task.name}: soft targets need each row's question (groups)")
        return group_softmax(np.asarray(outputs) / temperature, groups)
    return outputs


def group_softmax(scores: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """softmax of `scores` within each group of rows (any sizes, any order), float32."""
    scores = np.asarray(scores, np.float64)
    inverse = np.unique(np.asarray(groups), return_inverse=True)[1]
    top = np.full(inverse.max() + 1, -np.inf)
    np.maximum.at(top, inverse, scores)
    exps = np.exp(scores - top[inverse])
    totals = np.zeros(inverse.max() + 1)
    np.add.at(totals, inverse, exps)
    return (exps / totals[inverse]).astype(np.float32)


def ensemble_targets(
    members: Sequence[MTDNN],
    data: SplitData,
    temperature: float = 1.0,
    batch_size: int = 128,
    cache_dir: str | None = None,
    chunk_examples: int = 0,
    policy: str = "float32",
) -> np.ndarray:
    """Q = mean_k Q^k over the members (batched inference, one pass per member).

    With `cache_dir`, each member's targets are computed in chunks of `chunk_examples`
    (0: the whole split) and every chunk is saved there, so a killed run redoes only the
    chunk it was in. Chunks are keyed by the member's model checksum, the data's
    fingerprint and the settings; a stale or unreadable chunk is recomputed. `policy` is the
    members' encoder dtype policy (see `member_targets`).
    """
    if not members:
        raise ValueError("an ensemble needs at least one member")
    total = None
    tokenised: dict[tuple, tuple] = {}
    for member in members:
        member = in_precision(member, policy)
        tokens = _shared_tokens(tokenised, member, data)
        if cache_dir is None:
            targets = member_targets(member, data, temperature, batch_size, tokens=tokens)
        else:
            outputs = _cached_member_outputs(member, data, batch_size, cache_dir, chunk_examples, policy, tokens)
            targets = targets_from_outputs(data.task, outputs, temperature, data.groups)
        total = targets if total is None else total + targets
    return (total / len(members)).astype(np.float32)


def _shared_tokens(tokenised: dict, member: MTDNN, data: SplitData) -> tuple:
    """`data` tokenised by `member`'s preprocessor, once per tokenizer (cached in `tokenised`)."""
    key = _tokenizer_key(member)
    if key not in tokenised:
        tokenised[key] = tokenize_all(data, member.preprocessor)
    return tokenised[key]


def _tokenizer_key(member: MTDNN) -> tuple:
    """Members whose preprocessors tokenise alike (same vocabulary, casing, length) share tokens."""
    preprocessor = member.preprocessor
    tokenizer = preprocessor.tokenizer
    return (tuple(tokenizer.get_vocabulary()), getattr(tokenizer, "lowercase", None), preprocessor.sequence_length)


def _cached_member_outputs(
    member,
    data: SplitData,
    batch_size: int,
    cache_dir: str,
    chunk_examples: int,
    policy: str,
    tokens: tuple | None = None,
) -> np.ndarray:
    """The member's head outputs on `data`, computed in chunks that are saved as they finish, so
    a killed run resumes from the last saved chunk (ranking groups are softened afterwards,
    over the whole split, so a chunk may cut a question)."""
    with open(os.path.join(member.directory, model_dir_lib.MANIFEST_FILE), "rb") as handle:
        model_digest = hashlib.sha256(handle.read()).hexdigest()
    chunk = chunk_examples if chunk_examples > 0 else len(data)
    key = hashlib.sha256(json.dumps([model_digest, data.fingerprint(), "outputs", chunk, policy]).encode()).hexdigest()[
        :16
    ]
    directory = os.path.join(cache_dir, f"{data.split}-{key}")
    os.makedirs(directory, exist_ok=True)
    parts, reused = [], 0
    for start in range(0, len(data), chunk):
        rows = data.rows(start, start + chunk)
        path = os.path.join(directory, f"{os.path.basename(os.path.normpath(member.directory))}-{start}.npy")
        try:
            part = np.load(path, allow_pickle=False)
            if len(part) != len(rows) or not np.all(np.isfinite(part)):
                raise ValueError(f"{len(part)} rows for {len(rows)} examples, or non-finite values")
        except FileNotFoundError:
            part = None
        except Exception as error:  # a damaged chunk is recomputed, never used
            logger.warning("soft-label chunk %s is unusable (%s); recomputing it", path, error)
            part = None
        if part is None:
            part_tokens = None if tokens is None else tuple(segment[start : start + chunk] for segment in tokens)
            part = predict_outputs(member, rows, batch_size, tokens=part_tokens)
            buffer = io.BytesIO()
            np.save(buffer, part)
            write_atomic(path, buffer.getvalue())
            preemption.check(
                f"after saving soft-label chunk {path} (examples {start}-{start + len(rows)} of "
                f"{len(data)} of {data.task.name}/{data.split})"
            )
        else:
            reused += 1
        parts.append(part)
    if reused:
        logger.info(
            "%s on %s/%s: reused %d saved chunk(s) of an earlier run",
            member.directory,
            data.task.name,
            data.split,
            reused,
        )
    return np.concatenate(parts)


def member_outputs(
    members: Sequence[MTDNN],
    dev: Mapping[str, Mapping[str, SplitData]],
    batch_size: int = 128,
) -> tuple[list[dict[tuple[str, str], np.ndarray]], dict[tuple[str, str], np.ndarray]]:
    """Each member's head outputs on every labelled split and the ensemble's (averaged
    probabilities as log-probabilities, or averaged scores), `{(task, split): outputs}`: one
    forward pass per member and split, one tokenisation per tokenizer."""
    outputs: list[dict[tuple[str, str], np.ndarray]] = [{} for _ in members]
    for key, data in labelled_splits(dev):
        tokenised: dict[tuple, tuple] = {}
        for member, predictions in zip(members, outputs, strict=True):
            predictions[key] = predict_outputs(member, data, batch_size, tokens=_shared_tokens(tokenised, member, data))
    return outputs, average_outputs(dev, outputs)


def average_outputs(
    dev: Mapping[str, Mapping[str, SplitData]], outputs: Sequence[Mapping[tuple[str, str], np.ndarray]]
) -> dict[tuple[str, str], np.ndarray]:
    """The ensemble's outputs from its members' (`member_outputs`): averaged probabilities as
    log-probabilities, or averaged scores."""
    averaged: dict[tuple[str, str], np.ndarray] = {}
    for key, data in labelled_splits(dev):
        mean = np.mean(
            [targets_from_outputs(data.task, predictions[key], 1.0, data.groups) for predictions in outputs], axis=0
        )
        averaged[key] = np.log(np.maximum(mean, 1e-12)) if data.task.type == CLASSIFICATION else mean
    return averaged


def check_compatible(
    members: Sequence[MTDNN],
    tasks: Sequence[Task],
    vocabulary: list[str] | None = None,
    student_packing: bool | None = None,
) -> None:
    """Members must have the tasks' label sets and, as online teachers (`vocabulary` given), the
    student's tokenizer: the same vocabulary and pair packing (`student_packing`: double separator)."""
    for member in members:
        for task in tasks:
            try:
                theirs = member.task(task.name)
            except KeyError:
                raise ConfigError(f"teacher {member.directory} has no head for task {task.name!r}") from None
            if tuple(theirs.labels) != tuple(task.labels) or theirs.type != task.type:
                raise ConfigError(
                    f"teacher {member.directory}: task {task.name} has labels {list(theirs.labels)} ({theirs.type}), "
                    f"the student's has {list(task.labels)} ({task.type})"
                )
        if vocabulary is None:
            continue
        tokenizer = member.preprocessor.tokenizer
        theirs = list(tokenizer.get_vocabulary())
        packing = tokenizer_family(tokenizer).double_separator
        if theirs != list(vocabulary) or (student_packing is not None and packing != student_packing):
            raise ConfigError(
                f"teacher {member.directory} tokenises differently from the student ({type(tokenizer).__name__}, "
                f"{len(theirs)} tokens vs {len(vocabulary)}"
                f"{', other pair packing' if theirs == list(vocabulary) else ''}): "
                "online teachers read the student's token ids, so they must share its tokenizer; use cached soft "
                "labels (the default), where each teacher tokenises the text itself"
            )


def make_soft_labels(
    member_dirs: Sequence[str] | Mapping[str, Sequence[str]],
    data: Mapping[str, Sequence[SplitData]],
    temperature: float,
    output_dir: str,
    batch_size: int = 128,
    checkpoint_every_steps: int = 0,
    policy: str = "float32",
    partial_dir: str | None = None,
) -> dict[str, str]:
    """Averages the members' predictions over each task's examples and writes one file per task.

    Predictions are saved every `checkpoint_every_steps` batches under `<partial_dir>/<task>`
    (default `partial_dir`: `<output_dir>/.partial`), so a re-run after a crash resumes; the
    directory is removed once the task's file is written. On SIGTERM or SIGINT (`preemption`) the chunk being
    computed is finished and saved, then `Preempted` is raised. `output_dir` is locked meanwhile.
    `policy`: the teachers' encoder dtype policy
    (`distribute.inference_policy`); it is recorded in each file's metadata. `member_dirs` is
    one ensemble for every task, or `{task: its members}` (per-task ensembles of fine-tuned teachers).
    """
    by_task = member_dirs if isinstance(member_dirs, Mapping) else {task_name: member_dirs for task_name in data}
    if not all(by_task.get(task_name) for task_name in data):
        raise ConfigError(
            "no teacher models found: train them first (the teachers stage) or give teacher_dirs", "teacher_dirs"
        )
    with DirectoryLock(output_dir, "soft-label directory"):
        partial_dir = partial_dir or os.path.join(output_dir, PARTIAL)
        return _make_soft_labels(
            by_task, data, temperature, output_dir, batch_size, checkpoint_every_steps, policy, partial_dir
        )


def _make_soft_labels(
    by_task: Mapping[str, Sequence[str]],
    data: Mapping[str, Sequence[SplitData]],
    temperature: float,
    output_dir: str,
    batch_size: int,
    checkpoint_every_steps: int,
    policy: str,
    partial_dir: str,
) -> dict[str, str]:
    written, loaded = {}, {}
    for task_name, splits in data.items():
        task = splits[0].task
        dirs = tuple(by_task[task_name])
        if _written_before(output_dir, task_name, splits, temperature, dirs, policy):  # before an interruption
            logger.info(
                "soft labels of %s in %s were written by an earlier run of these teachers, skipping",
                task_name,
                output_dir,
            )
            written[task_name] = soft_labels.path_for(output_dir, task_name)
            continue
        if dirs not in loaded:  # one ensemble in memory at a time, loaded once
            raw = [model_dir_lib.load(directory) for directory in dirs]
            check_compatible(raw, [s[0].task for name, s in data.items() if tuple(by_task[name]) == dirs])
            loaded = {dirs: [in_precision(member, policy) for member in raw]}
        members = loaded[dirs]
        partial = os.path.join(partial_dir, task_name)
        targets = [
            ensemble_targets(
                members, split, temperature, batch_size, partial, checkpoint_every_steps * batch_size, policy
            )
            for split in splits
        ]
        soft = soft_labels.build(task, splits, targets, list(dirs), temperature)
        soft.metadata["precision"] = policy
        path = soft_labels.path_for(output_dir, task_name)
        soft_labels.write(path, soft)
        shutil.rmtree(partial, ignore_errors=True)
        written[task_name] = path
        logger.info(
            "soft labels of %s: %d examples from %d teachers -> %s", task_name, len(soft.ids), len(members), path
        )
    with contextlib.suppress(OSError):
        os.rmdir(partial_dir)
    return written


def _written_before(
    output_dir: str,
    task_name: str,
    splits: Sequence[SplitData],
    temperature: float,
    teachers: Sequence[str],
    policy: str,
) -> bool:
    """Whether the task's file is valid for `splits` and was made by these teachers in this precision."""
    if not _task_soft_labels_valid(output_dir, task_name, splits, temperature):
        return False
    metadata = soft_labels.read(soft_labels.path_for(output_dir, task_name)).metadata
    return metadata["teachers"] == [os.path.abspath(t) for t in teachers] and metadata.get("precision") == policy


def soft_labels_valid(output_dir: str, data: Mapping[str, Sequence[SplitData]], temperature: float) -> bool:
    """Whether every task's soft-label file exists and matches the data (a re-run skips it). A file
    that is there but damaged (truncated, empty, failing its checksums) or made for other data is
    never used: a warning names it, and the stage makes it again."""
    return all(
        _task_soft_labels_valid(output_dir, task_name, splits, temperature) for task_name, splits in data.items()
    )


def _task_soft_labels_valid(output_dir: str, task_name: str, splits: Sequence[SplitData], temperature: float) -> bool:
    path = soft_labels.path_for(output_dir, task_name)
    if not os.path.isfile(path):
        logger.info("soft labels need making: %s does not exist", path)
        return False
    try:
        soft = soft_labels.read(path)
        for split in splits:
            soft_labels.align(soft, split.task, split, temperature)
    except soft_labels.SoftLabelError as error:
        logger.warning("%s; it is not used: the soft labels will be made again", error)
        return False
    return True
