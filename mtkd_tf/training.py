"""Training MT-DNN: the paper's optimiser and schedule, multi-task data, callbacks, fit.

Defaults are the paper's: Adamax, lr 5e-5, 10% linear warm-up then linear decay,
global-norm clipping 1.0, batch 32. `train_mtdnn` is what `bin/run --mode=train` and the
pipeline call; `Distiller` training reuses `training_data`, `make_optimizer` and `fit`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from mtkd_tf.data import batching
from mtkd_tf.data.preprocessing import Preprocessor
from mtkd_tf.data.readers import SplitData

logger = logging.getLogger(__name__)

OPTIMIZERS = ("adamax", "adamw", "adam")


@dataclasses.dataclass
class TrainConfig:
    """Hyper-parameters of one training run (flags map onto these one to one)."""

    batch_size: int = 32
    epochs: int = 5
    learning_rate: float = 5e-5
    optimizer: str = "adamax"
    warmup_fraction: float = 0.1
    clipnorm: float = 1.0
    weight_decay: float = 0.01
    task_sampling: str = "proportional"
    sampling_temperature: float = 1.0
    seed: int = 0
    verbose: int = 2

    def validate(self) -> None:
        problems = []
        if self.batch_size <= 0:
            problems.append(f"batch_size must be positive, got {self.batch_size}")
        if self.epochs <= 0:
            problems.append(f"epochs must be positive, got {self.epochs}")
        if not self.learning_rate > 0:
            problems.append(f"learning_rate must be positive, got {self.learning_rate}")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer {self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        if not 0 <= self.warmup_fraction < 1:
            problems.append(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.clipnorm < 0:
            problems.append(f"clipnorm must be >= 0 (0: off), got {self.clipnorm}")
        if self.task_sampling not in batching.SAMPLING:
            problems.append(f"task_sampling {self.task_sampling!r} is not one of {', '.join(batching.SAMPLING)}")
        if problems:
            raise ValueError("; ".join(problems))


@keras.saving.register_keras_serializable(package="mtkd_tf")
class LinearWarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `peak` over `warmup_steps`, then linear decay to 0 at `total_steps`."""

    def __init__(self, peak: float, total_steps: int, warmup_steps: int):
        self.peak = peak
        self.total_steps = max(int(total_steps), 1)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = step / max(self.warmup_steps, 1)
        decay = (self.total_steps - step) / max(self.total_steps - self.warmup_steps, 1)
        factor = tf.where(step < self.warmup_steps, warmup, decay)
        return self.peak * tf.clip_by_value(factor, 0.0, 1.0)

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps}


def make_optimizer(config: TrainConfig, total_steps: int) -> keras.optimizers.Optimizer:
    schedule = LinearWarmupDecay(config.learning_rate, total_steps, int(config.warmup_fraction * total_steps))
    clip = {"global_clipnorm": config.clipnorm} if config.clipnorm > 0 else {}
    if config.optimizer == "adamax":
        return keras.optimizers.Adamax(schedule, **clip)
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay, **clip)
    return keras.optimizers.Adam(schedule, **clip)


@dataclasses.dataclass
class TrainingData:
    dataset: tf.data.Dataset
    steps_per_epoch: int
    batches_per_task: list[int]


def training_data(
    splits: Sequence[SplitData],
    preprocessor: Preprocessor,
    config: TrainConfig,
    targets: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    drop_remainder: bool = False,
) -> TrainingData:
    """The pooled multi-task dataset for all epochs; split i trains head i.

    `targets[task]` adds per-example arrays (soft targets, masks) to that task's `y`.
    """
    datasets, counts = [], []
    for task_id, data in enumerate(splits):
        datasets.append(
            batching.task_dataset(
                data, task_id, preprocessor, config.batch_size,
                targets=(targets or {}).get(data.task.name), seed=config.seed + task_id,
                drop_remainder=drop_remainder,
            )
        )
        counts.append(batching.num_batches(len(data), config.batch_size, drop_remainder))
    schedule = batching.batch_schedule(
        counts, config.epochs, config.task_sampling, config.sampling_temperature, config.seed
    )
    return TrainingData(batching.multitask_dataset(datasets, schedule), int(sum(counts)), counts)


class HistoryFile(keras.callbacks.Callback):
    """Appends each epoch's logs to `history.json` (read by reports and plots)."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch, logs=None):
        history = []
        if os.path.isfile(self.path):
            with open(self.path, encoding="utf-8") as handle:
                history = [row for row in json.load(handle) if row["epoch"] < epoch]
        history.append({"epoch": epoch, **{k: float(v) for k, v in (logs or {}).items()}})
        from mtkd_tf.model_dir import write_json

        write_json(self.path, history)


def fit(
    model: keras.Model,
    data: TrainingData,
    config: TrainConfig,
    work_dir: str,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> keras.callbacks.History:
    """`model.fit` with checkpoint/resume (BackupAndRestore), TensorBoard logs and history."""
    os.makedirs(work_dir, exist_ok=True)
    standard = [
        keras.callbacks.BackupAndRestore(os.path.join(work_dir, "backup")),
        keras.callbacks.TensorBoard(os.path.join(work_dir, "logs"), update_freq="epoch"),
        keras.callbacks.TerminateOnNaN(),
        HistoryFile(os.path.join(work_dir, "history.json")),
    ]
    return model.fit(
        data.dataset,
        epochs=config.epochs,
        steps_per_epoch=data.steps_per_epoch,
        callbacks=standard + list(callbacks),
        verbose=config.verbose,
    )


def train_mtdnn(
    tasks: Sequence,
    train: Mapping[str, SplitData],
    encoder,
    config: TrainConfig,
    model_dir: str,
    max_seq_length: int = 128,
    strategy: tf.distribute.Strategy | None = None,
    pad_to_multiple_of: int = 16,
):
    """Trains one MT-DNN on `train` (task name -> split) and saves it to `model_dir`.

    `encoder` is a `models.encoder.Encoder`; `tasks` lists every task the model serves
    (tasks without training data, such as AX, ride on another task's head).
    """
    from mtkd_tf import model_dir as model_dir_lib
    from mtkd_tf.data.preprocessing import load_tokenizer
    from mtkd_tf.models.mtdnn import MTDNN

    config.validate()
    keras.utils.set_random_seed(config.seed)
    strategy = strategy or tf.distribute.get_strategy()
    preprocessor = Preprocessor(load_tokenizer(encoder.vocabulary, encoder.lowercase), max_seq_length, pad_to_multiple_of)
    with strategy.scope():
        model = MTDNN(encoder.backbone, tasks)
        splits = [train[task.name] for task in model.tasks]
        data = training_data(splits, preprocessor, config)
        model.compile(optimizer=make_optimizer(config, data.steps_per_epoch * config.epochs))
    fit(model, data, config, model_dir)
    model_dir_lib.save(
        model_dir, model, encoder.vocabulary, encoder.lowercase, max_seq_length, encoder=encoder.spec
    )
    return model_dir_lib.TrainedModel(model, preprocessor, {"max_seq_length": max_seq_length}, model_dir)
