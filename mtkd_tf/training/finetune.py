"""MT-DNN's second stage: fine-tuning a trained multi-task model on one task.

Liu et al. (2019a, arXiv 1901.11504, section 3.1) train the shared encoder and every head
multi-task, then fine-tune the whole model on each task's data alone; the distillation paper
(arXiv 1904.09482, section 3) builds its teachers that way, one ensemble per task. The
fine-tuned copy is an ordinary model directory (all heads kept, the task's head and the encoder
trained further), so it loads, evaluates, predicts and exports like any other.

>>> config = mt.ExperimentConfig().replace(epochs=2, learning_rate=2e-5)
>>> model = mt.finetune("runs/x/baseline", "rte", train["rte"], config, "runs/x/baseline-finetuned/rte")
"""

from __future__ import annotations

import zlib
from typing import Mapping, Sequence

import keras

from mtkd_tf.config import ExperimentConfig
from mtkd_tf.data.split import SplitData
from mtkd_tf.models.mtdnn import MTDNN
from mtkd_tf.runtime.progress import RunClock
from mtkd_tf.training.train import train_model


def finetune_seed(model_seed: int, task: str) -> int:
    """The seed of fine-tuning a model trained with `model_seed` on `task`: from both, so the members
    of one task's ensemble (and the seed runs of the student) never share a batch order, a task
    schedule or a dropout stream, and one model's copies differ by task."""
    return model_seed + 1 + zlib.crc32(task.encode()) % 997


def finetune(
    source_dir: str,
    task_name: str,
    train: SplitData,
    config: ExperimentConfig,
    output_dir: str,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    clock: RunClock | None = None,
    dev: Mapping[str, Mapping[str, SplitData]] | None = None,
) -> MTDNN:
    """Fine-tunes the multi-task model in `source_dir` on `task_name` alone into `output_dir`
    (`config.training`: the fine-tuning's seed, epochs and learning rate; resumable like any
    training run), in the current strategy scope and dtype policy; with `dev`, the epoch kept is
    the best on `task_name`'s dev split (`select_best_on_dev`)."""
    return train_model(
        config,
        output_dir,
        {task_name: train},
        source_dir=source_dir,
        label=f"fine-tune {task_name}",
        callbacks=callbacks,
        clock=clock,
        dev=dev,
    )
