"""Resumable training: step checkpoints of the whole training state, and a guard on the loss.

Keras's `BackupAndRestore` restores weights and the epoch, but restarts an interrupted
epoch from its first batch and does not save the dropout RNG, so a resumed run is not
the run that was interrupted. A checkpoint here holds everything the next step depends
on: model and optimizer variables (the optimizer's `iterations` drives the learning-rate
schedule), every `SeedGenerator` state (dropout, SAN step dropout) and the global step,
from which `training_data` rebuilds the data stream at the exact batch. Resumed with the
same command, training is bit-identical to an uninterrupted run (see tests/test_resume.py).

Layout: `<work_dir>/backup/ckpt-<step>/` with `weights.weights.h5`, `rng.npz` and
`state.json` (step, run shape, SHA-256 of both files). A checkpoint is written under a
temporary name, flushed to disk, renamed when complete and verified (its files re-read against
their SHA-256); only then are checkpoints beyond the newest `keep` deleted, so the last good one
is never lost to a bad write. A damaged checkpoint (truncated, empty, altered) is never loaded:
resume warns, names the bad file, moves the checkpoint aside (`damaged-ckpt-<step>`) and falls
back to the newest valid one; with none valid it stops with an error. A write that fails for
want of room stops the run (`files.DiskFullError`) with the previous checkpoint intact.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import shutil
from typing import Any, Sequence

import keras
import numpy as np

from mtkd_tf.errors import MtkdError
from mtkd_tf.runtime.files import disk_full, fsync_directory, no_room, sha256
from mtkd_tf.training import distribute, preemption

logger = logging.getLogger(__name__)

PREFIX = "ckpt-"
DAMAGED = "damaged-"  # a checkpoint that failed verification, moved aside (kept until the model is saved)
WEIGHTS = "weights.weights.h5"
RNG = "rng.npz"
STATE = "state.json"


class CheckpointError(MtkdError, ValueError):
    """A training checkpoint is corrupt or belongs to a different run."""


class DamagedCheckpoint(CheckpointError):
    """A checkpoint's files are missing, unreadable or differ from their recorded SHA-256."""


class NumericalError(MtkdError, RuntimeError):
    """The training loss became NaN or Inf."""


def _rng_variables(model: keras.Model) -> list:
    """The states of every `SeedGenerator` the model's layers own (dropout masks depend on them)."""
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


def _build_optimizer(model: keras.Model) -> None:
    optimizer = model.optimizer
    if optimizer is not None and not optimizer.built:
        optimizer.build(model.trainable_variables)


def checkpoints(backup_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints in `backup_dir` as (step, path), oldest first."""
    if not os.path.isdir(backup_dir):
        return []
    found = []
    for name in os.listdir(backup_dir):
        if name.startswith(PREFIX) and name[len(PREFIX) :].isdigit():
            found.append((int(name[len(PREFIX) :]), os.path.join(backup_dir, name)))
    return sorted(found)


class TrainingState:
    """Saves and restores one training run's checkpoints in `backup_dir`.

    `run` describes the run's shape (steps per epoch, epochs, ...); a checkpoint made by a
    run of another shape is refused, since resuming it would train on the wrong schedule.
    `keep`: how many verified checkpoints to keep (the newest ones). `extra`: an object whose
    `state()` (a JSON value) each checkpoint records and whose `load(state)` a restore calls, for
    training state outside the model (dev selection's best score and patience counter).
    """

    def __init__(self, backup_dir: str, run: dict[str, Any], keep: int = 2, extra=None):
        self.backup_dir = backup_dir
        self.run = dict(run)
        self.keep = max(int(keep), 1)
        self.extra = extra

    def save(self, model: keras.Model, step: int) -> str:
        """Writes checkpoint `step` atomically, verifies it, then removes all but the newest `keep`."""
        os.makedirs(self.backup_dir, exist_ok=True)
        for name in os.listdir(self.backup_dir):  # left by a killed save (one process writes here: the lock)
            if name.startswith(".tmp-"):
                shutil.rmtree(os.path.join(self.backup_dir, name), ignore_errors=True)
        final = os.path.join(self.backup_dir, f"{PREFIX}{step}")
        temporary = os.path.join(self.backup_dir, f".tmp-{os.getpid()}-{PREFIX}{step}")
        os.makedirs(temporary)
        failure = None
        try:
            with open(os.path.join(temporary, WEIGHTS), "wb") as handle:
                handle.write(_weights_file(model))
            rng = _rng_variables(model)
            np.savez(os.path.join(temporary, RNG), **{f"rng_{i}": np.asarray(v.numpy()) for i, v in enumerate(rng)})
            state = {
                "step": step,
                "run": self.run,
                "rng_states": len(rng),
                "sha256": {name: sha256(os.path.join(temporary, name)) for name in (WEIGHTS, RNG)},
            }
            if self.extra is not None:
                state["extra"] = self.extra.state()
            with open(os.path.join(temporary, STATE), "w", encoding="utf-8") as handle:
                json.dump(state, handle, indent=1)
            for name in (WEIGHTS, RNG, STATE):  # on disk before the rename makes the checkpoint visible
                with open(os.path.join(temporary, name), "rb") as handle:
                    os.fsync(handle.fileno())
            shutil.rmtree(final, ignore_errors=True)
            os.replace(temporary, final)
            fsync_directory(self.backup_dir)
        except Exception as error:
            if not disk_full(error):
                raise
            failure = no_room(f"checkpoint {final}", error, self._kept(step))
        finally:
            shutil.rmtree(temporary, ignore_errors=True)
        if failure is not None:
            raise failure
        try:
            self._verify(final)
        except DamagedCheckpoint as error:
            raise CheckpointError(
                f"{error}: it failed its check right after it was written; {self._kept(step)}"
            ) from None
        for _, path in checkpoints(self.backup_dir)[: -self.keep]:
            shutil.rmtree(path, ignore_errors=True)
        return final

    def _kept(self, step: int) -> str:
        """What remains to resume from when checkpoint `step` could not be written."""
        older = [(s, path) for s, path in checkpoints(self.backup_dir) if s != step]
        if not older:
            return "no earlier checkpoint exists (the run starts over)"
        return f"the previous checkpoint {older[-1][1]} (step {older[-1][0]}) is intact"

    def latest(self) -> tuple[int, str] | None:
        found = checkpoints(self.backup_dir)
        return found[-1] if found else None

    def restore(self, model: keras.Model) -> int:
        """Loads the newest valid checkpoint into `model` (and its optimizer); returns its step (0: none).

        Damaged checkpoints newer than it are moved aside with a warning naming the bad file;
        when every checkpoint is damaged, raises `CheckpointError` listing them.
        """
        found = checkpoints(self.backup_dir)
        damaged = []
        for step, path in reversed(found):
            try:
                state = self._verify(path)
            except DamagedCheckpoint as error:
                damaged.append((path, error))
                continue
            for bad, error in damaged:
                aside = _move_aside(bad)
                logger.warning(
                    "%s; it is not used: moved aside to %s, resuming from the older %s (step %d)",
                    error,
                    aside,
                    path,
                    step,
                )
            return self._load(model, step, path, state)
        if damaged:
            listed = "; ".join(str(error) for _, error in damaged)
            raise CheckpointError(
                f"no valid checkpoint to resume from in {self.backup_dir}: {listed}; delete "
                f"{self.backup_dir} to start this training over"
            )
        return 0

    def _load(self, model: keras.Model, step: int, path: str, state: dict) -> int:
        rng = _rng_variables(model)
        if state["rng_states"] != len(rng):  # (variable names carry process-dependent suffixes)
            raise CheckpointError(
                f"checkpoint {path} was made by a different model ({state['rng_states']} RNG states, "
                f"this model has {len(rng)}); "
                f"delete {self.backup_dir} to start this training over"
            )
        _build_optimizer(model)
        try:
            model.load_weights(os.path.join(path, WEIGHTS))
        except Exception as error:  # h5py / Keras mismatch errors
            raise CheckpointError(
                f"checkpoint {path} does not fit this model ({type(error).__name__}: {error}); "
                f"delete {self.backup_dir} to start this training over"
            ) from None
        with np.load(os.path.join(path, RNG)) as stored:
            for i, variable in enumerate(rng):
                variable.assign(stored[f"rng_{i}"])
        if self.extra is not None:
            self.extra.load(state.get("extra"))
        logger.info("resuming from %s (step %d of %d)", path, step, self.run.get("total_steps", -1))
        return step

    def _verify(self, path: str) -> dict:
        """The checkpoint's state after checking its files' checksums (`DamagedCheckpoint`) and the
        run's shape (`CheckpointError`)."""
        fix = f"delete {self.backup_dir} to start this training over"
        state_file = os.path.join(path, STATE)
        try:
            with open(state_file, encoding="utf-8") as handle:
                state = json.load(handle)
            digests = dict(state["sha256"])
            state["step"], state["rng_states"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise DamagedCheckpoint(
                f"checkpoint {path}: {STATE} is unreadable or incomplete ({type(error).__name__}: {error})"
            ) from None
        for name in (WEIGHTS, RNG):
            file = os.path.join(path, name)
            if name not in digests:
                raise DamagedCheckpoint(f"checkpoint {path}: {STATE} records no SHA-256 of {name}")
            if not os.path.isfile(file):
                raise DamagedCheckpoint(f"checkpoint {path}: {name} is missing")
            if sha256(file) != digests[name]:
                size = os.path.getsize(file)
                raise DamagedCheckpoint(
                    f"checkpoint {path}: {name} is corrupt (SHA-256 differs from when it was "
                    f"written; {'empty' if not size else f'{size} bytes'})"
                )
        differs = {k: (state.get("run", {}).get(k), v) for k, v in self.run.items() if state.get("run", {}).get(k) != v}
        if differs:
            shown = ", ".join(f"{k}: {old} then, {new} now" for k, (old, new) in differs.items())
            raise CheckpointError(
                f"checkpoint {path} belongs to a run with other settings ({shown}); "
                f"re-run with the same flags, or {fix}"
            )
        return state

    def remove(self) -> None:
        """Deletes the checkpoints once the trained model is saved."""
        shutil.rmtree(self.backup_dir, ignore_errors=True)


def _weights_file(model: keras.Model) -> bytes:
    """The bytes of the `.weights.h5` file `model.save_weights` writes, built in memory by Keras's
    own writer: a write that fails for want of room then fails in plain Python file I/O. (HDF5
    writing straight to a full disk leaves its file half-open, and the interpreter crashes at
    exit trying to close it.)"""
    from keras.src.saving import saving_lib

    buffer = io.BytesIO()
    store = saving_lib.H5IOStore(buffer, mode="w")
    saving_lib._save_state(model, weights_store=store, assets_store=None, inner_path="", visited_saveables=set())
    store.close()
    return buffer.getvalue()


def _move_aside(path: str) -> str:
    """Renames a damaged checkpoint out of `checkpoints()`'s sight, keeping it for inspection."""
    parent, name = os.path.split(path)
    target, number = os.path.join(parent, DAMAGED + name), 1
    while os.path.exists(target):
        number += 1
        target = os.path.join(parent, f"{DAMAGED}{name}.{number}")
    os.replace(path, target)
    return target


class StepCheckpoint(keras.callbacks.Callback):
    """Saves the training state every `every_steps` global steps, at each epoch's end and at the end.

    An epoch's last step is saved at the epoch's end, after the callbacks placed before this
    one (the history file) have recorded the epoch: a run killed between the two then
    resumes inside that epoch and records it, instead of skipping its row.
    """

    def __init__(self, state: TrainingState, every_steps: int, start_step: int, steps_per_epoch: int = 0):
        super().__init__()
        self.state = state
        self.every_steps = every_steps
        self.steps_per_epoch = steps_per_epoch
        self.step = start_step
        self.saved = start_step

    def save(self) -> str:
        """Checkpoints the current step (unless it is saved already); returns its directory."""
        if self.step != self.saved:
            self.state.save(self.model, self.step)
            self.saved = self.step
        return os.path.join(self.state.backup_dir, f"{PREFIX}{self.saved}")

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        epoch_end = self.steps_per_epoch and self.step % self.steps_per_epoch == 0
        if self.every_steps and self.step % self.every_steps == 0 and not epoch_end:
            self.save()

    def on_epoch_end(self, epoch, logs=None):
        self.save()

    def on_train_end(self, logs=None):
        self.save()


class StopOnRequest(keras.callbacks.Callback):
    """Ends training at the first step end after SIGTERM or SIGINT (`preemption`): the checkpoint of
    that step is saved, then `Preempted` is raised. Placed after `StepCheckpoint`, whose step count
    it reads; an epoch's last step stops at the epoch's end, after the history has its row.

    Under MultiWorkerMirroredStrategy the workers decide together after every step (a sum of their
    requests), so a signal to any worker stops all of them at the same step, each with its checkpoint.
    """

    def __init__(self, saver: StepCheckpoint, label: str = "training"):
        super().__init__()
        self.saver = saver
        self.label = label

    def _requested(self) -> int | None:
        local = preemption.requested()
        strategy = self.model.distribute_strategy
        if distribute.is_multi_worker(strategy):
            return preemption.agree(strategy, local)
        return local

    def _stop_if_requested(self) -> None:
        number = self._requested()
        if number is None:
            return
        saver = self.saver
        path = saver.save()
        per_epoch = saver.steps_per_epoch or 1
        epoch, batch = divmod(saver.step - 1, per_epoch)
        cause = "" if preemption.requested() else "sent to another worker of this run, "
        raise preemption.stopped(
            f"{cause}at global step {saver.step} of {self.label} (epoch {epoch + 1}, batch "
            f"{batch + 1} of {per_epoch}), after saving checkpoint {path}",
            number,
        )

    def on_train_batch_end(self, batch, logs=None):
        per_epoch = self.saver.steps_per_epoch
        if not (per_epoch and self.saver.step % per_epoch == 0):
            self._stop_if_requested()

    def on_epoch_end(self, epoch, logs=None):
        self._stop_if_requested()


class LossGuard(keras.callbacks.Callback):
    """Stops training at the first non-finite loss, naming the global step and its task.

    It runs before `StepCheckpoint`, so the step that produced NaN is never saved and the
    last checkpoint stays the last good state.
    """

    def __init__(self, step_tasks: Sequence[str], steps_per_epoch: int, start_step: int, backup_dir: str):
        super().__init__()
        self.step_tasks = step_tasks
        self.steps_per_epoch = steps_per_epoch
        self.step = start_step
        self.backup_dir = backup_dir

    def on_train_batch_end(self, batch, logs=None):
        step = self.step
        self.step += 1
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        value = float(np.asarray(loss).reshape(-1)[0])
        if math.isfinite(value):
            return
        self.model.stop_training = True
        found = checkpoints(self.backup_dir)
        kept = (
            f"the last good checkpoint {found[-1][1]} (step {found[-1][0]}) is kept"
            if found
            else "no checkpoint was written yet"
        )
        raise NumericalError(
            f"the training loss became {value} at global step {step + 1} (epoch {step // self.steps_per_epoch + 1}, "
            f"batch {step % self.steps_per_epoch + 1}), "
            f"a batch of task {self.step_tasks[step % len(self.step_tasks)]}; {kept}. Lower learning_rate, check that "
            "task's data, and re-run the same command to resume from the checkpoint",
            "learning_rate",
        )
