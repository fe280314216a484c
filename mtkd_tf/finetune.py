"""MT-DNN's second stage: fine-tuning a trained multi-task model on one task.

Liu et al. (2019a, arXiv 1901.11504, section 3.1) train the shared encoder and every head
multi-task, then fine-tune the whole model on each task's data alone; the distillation paper
(arXiv 1904.09482, section 3) builds its teachers that way, one ensemble per task. The
fine-tuned copy is an ordinary model directory (all heads kept, the task's head and the encoder
trained further), so it loads, evaluates, predicts and exports like any other.

    model = finetune("runs/x/baseline", "rte", train["rte"], TrainingConfig(epochs=2, learning_rate=2e-5),
                     "runs/x/baseline-finetuned/rte")
"""

from __future__ import annotations

import zlib

import keras
import tensorflow as tf

from mtkd_tf import model_dir as model_dir_lib
from mtkd_tf.config import TrainingConfig
from mtkd_tf.data.preprocessing import PAD_TO_MULTIPLE_OF
from mtkd_tf.data.split import SplitData
from mtkd_tf.errors import ConfigError
from mtkd_tf.models.encoder import Encoder
from mtkd_tf.models.mtdnn import MTDNN
from mtkd_tf.progress import RunClock
from mtkd_tf.training import fit_and_save, static_shapes, training_data


def finetune_seed(model_seed: int, task: str) -> int:
    """The seed of fine-tuning a model trained with `model_seed` on `task`: from both, so the members
    of one task's ensemble (and the seed runs of the student) never share a batch order, a task
    schedule or a dropout stream, and one model's copies differ by task."""
    return model_seed + 1 + zlib.crc32(task.encode()) % 997


def finetune(
    source_dir: str,
    task_name: str,
    train: SplitData,
    config: TrainingConfig,
    output_dir: str,
    callbacks=(),
    clock: RunClock | None = None,
    experiment_config: dict | None = None,
    pad_to_multiple_of: int = PAD_TO_MULTIPLE_OF,
) -> MTDNN:
    """Fine-tunes the multi-task model in `source_dir` on `task_name` alone and saves the copy in
    `output_dir` (resumable like any training run); built in the current strategy scope and
    trained in the current dtype policy."""
    config.validate()
    keras.utils.set_random_seed(config.seed)
    policy = keras.mixed_precision.global_policy().name
    model = model_dir_lib.load(source_dir, pad_to_multiple_of, policy=policy)
    names = [task.name for task in model.tasks]
    if task_name not in names:
        raise ConfigError(f"finetune_tasks: {source_dir} has no head for task {task_name!r} (it has {', '.join(names)})",
                          "finetune_tasks")
    strategy = tf.distribute.get_strategy()
    static = static_shapes(config, strategy)
    data = training_data([train], model.preprocessor, config, drop_remainder=static, strategy=strategy,
                         task_ids=[names.index(task_name)])
    settings = model_dir_lib.settings(source_dir)
    encoder = Encoder(model.encoder, list(model.preprocessor.tokenizer.get_vocabulary()), settings["lowercase"],
                      settings.get("encoder", "unknown"))
    return fit_and_save(model, model, encoder, data, config, output_dir, callbacks, f"fine-tune {task_name}", clock,
                        experiment_config)
