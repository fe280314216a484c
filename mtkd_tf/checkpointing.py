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
temporary name and renamed when complete; older ones are deleted after the rename.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from typing import Any, Sequence

import keras
import numpy as np

from mtkd_tf.errors import MtkdError
from mtkd_tf.files import sha256

logger = logging.getLogger(__name__)

PREFIX = "ckpt-"
WEIGHTS = "weights.weights.h5"
RNG = "rng.npz"
STATE = "state.json"


class CheckpointError(MtkdError, ValueError):
    """A training checkpoint is corrupt or belongs to a different run."""


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
        if name.startswith(PREFIX) and name[len(PREFIX):].isdigit():
            found.append((int(name[len(PREFIX):]), os.path.join(backup_dir, name)))
    return sorted(found)


class TrainingState:
    """Saves and restores one training run's checkpoints in `backup_dir`.

    `run` describes the run's shape (steps per epoch, epochs, ...); a checkpoint made by a
    run of another shape is refused, since resuming it would train on the wrong schedule.
    """

    def __init__(self, backup_dir: str, run: dict[str, Any]):
        self.backup_dir = backup_dir
        self.run = dict(run)

    def save(self, model: keras.Model, step: int) -> str:
        """Writes checkpoint `step` atomically and removes the older ones."""
        os.makedirs(self.backup_dir, exist_ok=True)
        final = os.path.join(self.backup_dir, f"{PREFIX}{step}")
        temporary = os.path.join(self.backup_dir, f".tmp-{os.getpid()}-{PREFIX}{step}")
        shutil.rmtree(temporary, ignore_errors=True)
        os.makedirs(temporary)
        try:
            model.save_weights(os.path.join(temporary, WEIGHTS))
            rng = _rng_variables(model)
            np.savez(os.path.join(temporary, RNG), **{f"rng_{i}": np.asarray(v.numpy()) for i, v in enumerate(rng)})
            state = {
                "step": step,
                "run": self.run,
                "rng_states": len(rng),
                "sha256": {name: sha256(os.path.join(temporary, name)) for name in (WEIGHTS, RNG)},
            }
            with open(os.path.join(temporary, STATE), "w", encoding="utf-8") as handle:
                json.dump(state, handle, indent=1)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(temporary, final)
        finally:
            shutil.rmtree(temporary, ignore_errors=True)
        for older, path in checkpoints(self.backup_dir):
            if older != step:
                shutil.rmtree(path, ignore_errors=True)
        return final

    def latest(self) -> tuple[int, str] | None:
        found = checkpoints(self.backup_dir)
        return found[-1] if found else None

    def restore(self, model: keras.Model) -> int:
        """Loads the latest checkpoint into `model` (and its optimizer); returns its step (0: none)."""
        latest = self.latest()
        if latest is None:
            return 0
        step, path = latest
        state = self._verify(path)
        rng = _rng_variables(model)
        if state["rng_states"] != len(rng):  # (variable names carry process-dependent suffixes)
            raise CheckpointError(f"checkpoint {path} was made by a different model ({state['rng_states']} RNG states, "
                                  f"this model has {len(rng)}); "
                                  f"delete {self.backup_dir} to start this training over")
        _build_optimizer(model)
        try:
            model.load_weights(os.path.join(path, WEIGHTS))
        except Exception as error:  # h5py / Keras mismatch errors
            raise CheckpointError(f"checkpoint {path} does not fit this model ({type(error).__name__}: {error}); "
                                  f"delete {self.backup_dir} to start this training over") from None
        with np.load(os.path.join(path, RNG)) as stored:
            for i, variable in enumerate(rng):
                variable.assign(stored[f"rng_{i}"])
        logger.info("resuming from %s (step %d of %d)", path, step, self.run.get("total_steps", -1))
        return step

    def _verify(self, path: str) -> dict:
        """The checkpoint's state after checking its files' checksums and the run's shape."""
        fix = f"delete {self.backup_dir} to start this training over"
        try:
            with open(os.path.join(path, STATE), encoding="utf-8") as handle:
                state = json.load(handle)
        except (OSError, ValueError) as error:
            raise CheckpointError(f"checkpoint {path}: unreadable {STATE} ({error}); {fix}") from None
        for name, expected in state.get("sha256", {}).items():
            file = os.path.join(path, name)
            if not os.path.isfile(file):
                raise CheckpointError(f"checkpoint {path}: {name} is missing; {fix}")
            if sha256(file) != expected:
                raise CheckpointError(f"checkpoint {path}: {name} is corrupt (SHA-256 differs from when it was written); {fix}")
        differs = {k: (state.get("run", {}).get(k), v) for k, v in self.run.items() if state.get("run", {}).get(k) != v}
        if differs:
            shown = ", ".join(f"{k}: {old} then, {new} now" for k, (old, new) in differs.items())
            raise CheckpointError(f"checkpoint {path} belongs to a run with other settings ({shown}); "
                                  f"re-run with the same flags, or {fix}")
        return state

    def remove(self) -> None:
        """Deletes the checkpoints once the trained model is saved."""
        shutil.rmtree(self.backup_dir, ignore_errors=True)


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

    def _save(self) -> None:
        if self.step != self.saved:
            self.state.save(self.model, self.step)
            self.saved = self.step

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        epoch_end = self.steps_per_epoch and self.step % self.steps_per_epoch == 0
        if self.every_steps and self.step % self.every_steps == 0 and not epoch_end:
            self._save()

    def on_epoch_end(self, epoch, logs=None):
        self._save()

    def on_train_end(self, logs=None):
        self._save()


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
        kept = f"the last good checkpoint {found[-1][1]} (step {found[-1][0]}) is kept" if found else "no checkpoint was written yet"
        raise NumericalError(
            f"the training loss became {value} at global step {step + 1} (epoch {step // self.steps_per_epoch + 1}, "
            f"batch {step % self.steps_per_epoch + 1}), "
            f"a batch of task {self.step_tasks[step % len(self.step_tasks)]}; {kept}. Lower learning_rate, check that "
            "task's data, and re-run the same command to resume from the checkpoint",
            "learning_rate",
        )
