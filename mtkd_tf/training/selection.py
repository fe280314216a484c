"""Dev-based model selection: score the model on dev after every epoch, keep the best epoch's
weights, and stop after `patience` epochs without improvement.

MT-DNN picks its checkpoints on dev; Hugging Face's Trainer (`load_best_model_at_end`,
`EarlyStoppingCallback`) and Keras (`EarlyStopping(restore_best_weights=True)`) offer the same to
every user. Keras's `EarlyStopping` is not used as is, for four reasons:
- the score is not a logged metric: it is each selection task's first GLUE metric (accuracy,
  Pearson, ...) computed from the model's outputs on dev, averaged over the tasks;
- resume must be exact: the best score, the best epoch's weights and the patience counter are
  part of the training checkpoint (`state`/`load`, called by `checkpointing.TrainingState`), so a
  run killed after epoch k and resumed makes the decisions the uninterrupted run makes, even when
  it resumes in the middle of an epoch;
- the weights kept are the MT-DNN's (`model`), not the trainer's: a distilled student trains
  inside a `Distiller` whose other variables (projections, teachers) are not part of the model;
- `EarlyStopping` keeps its best weights in memory only, which a preempted run loses.

Ties go to the earlier epoch (a later epoch must score strictly higher). The best weights are
written under the checkpoint directory (`<backup>/best/epoch_<k>.weights.h5`, removed with it
once the model is saved). Under `tf.distribute` the dev pass runs like any inference, on the
chief's copy of the weights (they are identical on every replica after each step).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Mapping, Sequence

import keras
import numpy as np

from mtkd_tf.data.split import SplitData, subset
from mtkd_tf.models import evaluation
from mtkd_tf.models.inference import labelled_splits, predict_prepared, prepare

logger = logging.getLogger("mtkd_tf")

SALT = "selection"  # the seeded subset of a large dev split: blake2b("selection\0" + id)


def selection_splits(
    dev: Mapping[str, Mapping[str, SplitData]],
    tasks: Sequence[str],
    examples: int,
    limits: Mapping[str, int] | None = None,
) -> dict[str, dict[str, SplitData]]:
    """The labelled dev splits that select a model: each of `tasks`' first labelled dev split,
    cut to `examples` examples (ranking: questions; 0: all), and to `limits[task]` where given,
    chosen by a hash of their ids (a smaller subset is a prefix of the larger one's order)."""
    found = {}
    for task in tasks:
        labelled = [data for data in dev.get(task, {}).values() if data.labels is not None]
        if labelled:
            first = labelled[0]
            count = min(examples or len(first), (limits or {}).get(task, len(first)))
            found[task] = {first.split: subset(first, count, SALT)}
    return found


class DevSelection(keras.callbacks.Callback):
    """Scores `model` on `dev` after every epoch, keeps the best epoch's weights, stops early.

    Args:
        model: the MT-DNN whose weights are kept (the trainer may be a `Distiller` around it).
        dev: `{task: {split: data}}` labelled dev splits (`selection_splits`); the score is the mean
            over them of each task's first metric.
        best_dir: where the best epoch's weights are written (inside the checkpoint directory).
        patience: stop after this many epochs without improvement (0: never stop early).
        batch_size: the dev pass's batch size.
    """

    def __init__(
        self, model, dev: Mapping[str, Mapping[str, SplitData]], best_dir: str, patience: int = 0, batch_size: int = 128
    ):
        super().__init__()
        self.mtdnn, self.dev, self.best_dir = model, dev, best_dir
        self.patience, self.batch_size = int(patience), batch_size
        self.curve: dict[int, float] = {}  # epoch (1-based) -> score
        self.best_epoch: int | None = None
        self.waited = 0
        self.stopped: str | None = None
        self.seconds = 0.0  # spent scoring on dev (since this process started the run)
        self._prepared: dict | None = None

    # --- the state a checkpoint carries ----------------------------------------------------------
    def state(self) -> dict:
        return {
            "curve": {str(k): v for k, v in self.curve.items()},
            "best_epoch": self.best_epoch,
            "waited": self.waited,
            "stopped": self.stopped,
        }

    def load(self, state: dict | None) -> None:
        state = state or {}
        self.curve = {int(k): float(v) for k, v in state.get("curve", {}).items()}
        self.best_epoch, self.waited, self.stopped = (
            state.get("best_epoch"),
            state.get("waited", 0),
            state.get("stopped"),
        )

    # --- each epoch -------------------------------------------------------------------------------
    def score(self) -> float:
        """The mean over the dev splits of each task's first metric (x1, as `evaluate` gives it).
        The splits are tokenised and batched once, at the first epoch: the preprocessor does not train."""
        if self._prepared is None:
            self._prepared = {
                key: prepare(self.mtdnn, data, self.batch_size) for key, data in labelled_splits(self.dev)
            }
        outputs = {
            key: predict_prepared(self.mtdnn, data, self._prepared[key]) for key, data in labelled_splits(self.dev)
        }
        results = evaluation.score_outputs(self.dev, outputs)
        return float(np.mean([next(iter(metrics.values())) for metrics in results.values()]))

    def on_epoch_end(self, epoch, logs=None):
        number = epoch + 1
        started = time.perf_counter()
        score = self.score()
        self.seconds += time.perf_counter() - started
        self.curve[number] = score
        if logs is not None:
            logs["dev_score"] = score
        if self.best_epoch is None or score > self.curve[self.best_epoch]:
            self.best_epoch, self.waited = number, 0
            os.makedirs(self.best_dir, exist_ok=True)
            self.mtdnn.save_weights(self._path(number))
        else:
            self.waited += 1
        logger.info(
            "dev score after epoch %d: %.4f (best %.4f, epoch %d; %.1f s on dev so far)",
            number,
            score,
            self.curve[self.best_epoch],
            self.best_epoch,
            self.seconds,
        )
        if self.patience and self.waited >= self.patience:
            self.stopped = (
                f"early stopping: {self.waited} epoch(s) without improvement on dev after epoch {self.best_epoch}"
            )
            self.model.stop_training = True

    def finish(self, epochs: int) -> dict:
        """Loads the best epoch's weights into the model; returns what the model dir records:
        `kept_epoch`, `dev_curve` (epoch -> score) and why training `stopped`."""
        if self.best_epoch is None:
            raise RuntimeError("dev selection finished before any epoch was scored")
        if self.best_epoch != max(self.curve):
            self.mtdnn.load_weights(self._path(self.best_epoch))
        stopped = self.stopped or f"trained the maximum {epochs} epoch(s)"
        logger.info(
            "kept epoch %d of %d (dev %.4f): %s", self.best_epoch, max(self.curve), self.curve[self.best_epoch], stopped
        )
        return {
            "kept_epoch": self.best_epoch,
            "dev_curve": {str(k): v for k, v in sorted(self.curve.items())},
            "stopped": stopped,
            "tasks": sorted(self.dev),
            "examples": {task: len(next(iter(splits.values()))) for task, splits in self.dev.items()},
            "dev_seconds": round(self.seconds, 2),  # this process's share (a resumed run counts anew)
        }

    def _path(self, epoch: int) -> str:
        return os.path.join(self.best_dir, f"epoch_{epoch}.weights.h5")
