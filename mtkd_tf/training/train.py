"""Training MT-DNN: the paper's optimiser and schedule, multi-task data, callbacks, fit.

Defaults are the paper's: Adamax, lr 5e-5, 10% linear warm-up then linear decay,
global-norm clipping 1.0, batch 32. `training_data` gives finite per-epoch datasets, so a
plain Keras program works:

>>> data = mt.training_data(splits, preprocessor, config)
>>> model.compile(optimizer=mt.make_optimizer(config, data.steps_per_epoch * config.epochs))
>>> model.fit(data.dataset, epochs=config.epochs, callbacks=[...])

`fit` adds exact resume, TensorBoard, history and progress lines around `model.fit`;
`train_model` is the one set-up around it that teachers, the student (with a
`distill.student.Distillation` objective), the baseline and fine-tuning all use. It builds
the model in the current `tf.distribute` strategy scope, as Keras does.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
from typing import Callable, Mapping, Protocol, Sequence

import keras
import numpy as np
import tensorflow as tf

from mtkd_tf.config import ExperimentConfig, TrainingConfig
from mtkd_tf.data import batching
from mtkd_tf.data.preprocessing import PAD_TO_MULTIPLE_OF, Preprocessor
from mtkd_tf.data.split import SplitData
from mtkd_tf.data.tasks import Task
from mtkd_tf.errors import ConfigError
from mtkd_tf.models.encoder import Encoder
from mtkd_tf.runtime.directory_lock import DirectoryLock
from mtkd_tf.runtime.files import write_json
from mtkd_tf.runtime.progress import ProgressLog, RunClock, keras_verbose
from mtkd_tf.training import checkpointing, distribute
from mtkd_tf.training.selection import DevSelection, selection_splits

logger = logging.getLogger(__name__)


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


@keras.saving.register_keras_serializable(package="mtkd_tf")
class FusedAdamax(keras.optimizers.Adamax):
    """Adamax whose update of each variable is TensorFlow's fused `ApplyAdaMax` kernel: one pass
    over the variable and its two slots instead of about ten elementwise ops.

    The same update as Keras's Adamax (`m = b1 m + (1 - b1) g`, `u = max(b2 u, |g|)`,
    `w -= lr m / ((1 - b1^t)(u + eps))`), rounded differently in the last bits (Keras writes
    `m + (g - m)(1 - b1)`); `optimizer=adamax_fused` selects it (docs/performance.md).
    """

    def update_step(self, gradient, variable, learning_rate):
        if isinstance(gradient, tf.IndexedSlices):  # the fused kernel is dense, as Keras's update is
            gradient = tf.convert_to_tensor(gradient)
        dtype = variable.dtype
        local_step = tf.cast(self.iterations + 1, dtype)
        index = self._get_variable_index(variable)
        tf.raw_ops.ResourceApplyAdaMax(
            var=variable.handle,
            m=self._m[index].value.handle,
            v=self._u[index].value.handle,
            beta1_power=tf.pow(tf.cast(self.beta_1, dtype), local_step),
            lr=tf.cast(learning_rate, dtype),
            beta1=tf.cast(self.beta_1, dtype),
            beta2=tf.cast(self.beta_2, dtype),
            epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype),
        )


def make_optimizer(config: TrainingConfig, total_steps: int) -> keras.optimizers.Optimizer:
    schedule = LinearWarmupDecay(config.learning_rate, total_steps, int(config.warmup_fraction * total_steps))
    clip = {"global_clipnorm": config.clipnorm} if config.clipnorm > 0 else {}
    decay = {"weight_decay": config.weight_decay} if config.weight_decay > 0 else {}
    if config.optimizer == "adamax":
        return keras.optimizers.Adamax(schedule, **decay, **clip)
    if config.optimizer == "adamax_fused":
        return FusedAdamax(schedule, **decay, **clip)
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay, **clip)
    return keras.optimizers.Adam(schedule, **clip)


@dataclasses.dataclass
class TrainingData:
    """The multi-task training batches of a run (Algorithm 1: pooled, shuffled, one task per batch).

    `dataset` is finite: one epoch, `steps_per_epoch` batches; each pass over it (each
    Keras epoch) gives the next epoch of the schedule (after the last, the first again),
    so `model.fit(data.dataset, epochs=N)` trains on exactly the batches `starting_at(0)`
    streams. `starting_at(step)`
    is the endless stream from global step `step` on (what a resumed run needs);
    `schedule[step]` is the index of the task that step trains.

    Every batch is `(x, y)` with the `Batch` layout of `mtkd_tf.data.batch`.
    """

    starting_at: Callable[[int], tf.data.Dataset]
    steps_per_epoch: int
    batches_per_task: list[int]
    schedule: np.ndarray
    task_names: list[str]
    epochs: Callable[[], tf.data.Dataset]

    @property
    def dataset(self) -> tf.data.Dataset:
        """One epoch of batches; iterating it again gives the next epoch."""
        return self.epochs()

    @property
    def step_tasks(self) -> list[str]:
        return [self.task_names[i] for i in self.schedule]


def training_data(
    splits: Sequence[SplitData],
    preprocessor: Preprocessor,
    config: TrainingConfig,
    targets: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    drop_remainder: bool = False,
    strategy: tf.distribute.Strategy | None = None,
    task_ids: Sequence[int] | None = None,
) -> TrainingData:
    """The pooled multi-task dataset for all epochs; split i trains head i (or head
    `task_ids[i]`: fine-tuning one task of a multi-task model passes that task's index).

    `targets[task]` adds per-example arrays (soft targets, masks) to that task's `y`.
    Under a strategy with several replicas every global batch is cut into equal
    per-replica slices, so each replica sees its part of exactly the single-device batch
    (the batch size must divide by the replicas; remainders are dropped).
    """
    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    drop_remainder = drop_remainder or replicas > 1
    counts = _batch_counts(splits, config.batch_size, replicas, drop_remainder)
    schedule = batching.batch_schedule(
        counts, config.epochs, config.task_sampling, config.sampling_temperature, config.seed
    )

    streams = _task_streams(splits, preprocessor, config, targets, drop_remainder, task_ids, counts, schedule)

    def global_batches(start: int | tf.Tensor) -> tf.data.Dataset:
        if isinstance(start, (int, np.integer)):
            done = [int(count) for count in np.bincount(schedule[:start], minlength=len(splits))]
        else:  # a tensor, inside `epochs()`
            done = tf.math.bincount(tf.constant(schedule, tf.int32)[:start], minlength=len(splits), dtype=tf.int64)
            done = [done[i] for i in range(len(splits))]  # batches each task already trained
        datasets = [stream.batches(skip) for stream, skip in zip(streams, done, strict=True)]
        return batching.multitask_dataset(datasets, schedule, start)

    names = [data.task.name for data in splits]
    per_epoch = int(sum(counts))
    epoch_numbers = itertools.count()

    def epochs() -> tf.data.Dataset:
        def next_epoch(_):
            epoch = tf.py_function(lambda: next(epoch_numbers) % config.epochs, [], tf.int64)  # cycles
            epoch.set_shape([])
            return global_batches(epoch * per_epoch).take(per_epoch)

        dataset = tf.data.Dataset.range(1).flat_map(next_epoch)
        return dataset.apply(tf.data.experimental.assert_cardinality(per_epoch))

    if replicas == 1:
        return TrainingData(global_batches, per_epoch, counts, schedule, names, epochs)

    distributed = _per_replica_batches(global_batches, strategy, config.batch_size)
    return TrainingData(distributed, per_epoch, counts, schedule, names, epochs)


def _task_streams(
    splits: Sequence[SplitData],
    preprocessor: Preprocessor,
    config: TrainingConfig,
    targets: Mapping[str, Mapping[str, np.ndarray]] | None,
    drop_remainder: bool,
    task_ids: Sequence[int] | None,
    counts: Sequence[int],
    schedule: np.ndarray,
) -> list[batching.TaskStream]:
    """Each task's stream of batches: tokens, columns and every pass's example order, computed once."""
    draws = np.bincount(schedule, minlength=len(splits))
    return [
        batching.TaskStream.prepare(
            data,
            task_ids[position] if task_ids is not None else position,
            preprocessor,
            config.batch_size,
            targets=(targets or {}).get(data.task.name),
            seed=config.seed * 1000 + position,
            drop_remainder=drop_remainder,
            passes=max(1, -(-int(draws[position]) // counts[position])),
            length_bucketing=config.length_bucketing,
        )
        for position, data in enumerate(splits)
    ]


def _batch_counts(splits: Sequence[SplitData], batch_size: int, replicas: int, drop_remainder: bool) -> list[int]:
    """Batches per task and epoch, after checking that `batch_size` splits evenly over the
    replicas and never splits a ranking task's question group."""
    if replicas > 1 and batch_size % replicas:
        raise ConfigError(
            f"batch_size {batch_size} is not divisible by the {replicas} replicas of the strategy", "batch_size"
        )
    for data in splits:
        unit = batching.group_rows(data) * replicas
        if batch_size % unit:
            raise ConfigError(
                f"batch_size {batch_size} must be a multiple of {unit} for ranking task {data.task.name} "
                f"(group_size {batching.group_rows(data)} x {replicas} replica(s)): groups are never split",
                "batch_size",
            )
    counts = [batching.num_batches(len(data), batch_size, drop_remainder) for data in splits]
    for data, count in zip(splits, counts, strict=True):
        if count == 0:
            raise ConfigError(
                f"task {data.task.name} has {len(data)} examples, fewer than one batch of batch_size {batch_size}",
                "batch_size",
            )
    return counts


def _per_replica_batches(global_batches: Callable, strategy: tf.distribute.Strategy, batch_size: int) -> Callable:
    """`start -> distributed dataset`: every global batch cut into equal per-replica slices."""
    replicas = strategy.num_replicas_in_sync

    def per_replica(context: tf.distribute.InputContext, start: int) -> tf.data.Dataset:
        local = replicas // context.num_input_pipelines
        first = context.input_pipeline_id * local
        size = batch_size // replicas

        def slices(x, y):
            def cut(tensor):
                shape = tf.concat([[replicas, size], tf.shape(tensor)[1:]], axis=0)
                return tf.reshape(tensor, shape)[first : first + local]

            return tf.data.Dataset.from_tensor_slices(tf.nest.map_structure(cut, (x, y)))

        return global_batches(start).flat_map(slices).prefetch(tf.data.AUTOTUNE)

    return lambda start: strategy.distribute_datasets_from_function(lambda context: per_replica(context, start))


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
        write_json(self.path, history)


def fit(
    model: keras.Model,
    data: TrainingData,
    config: TrainingConfig,
    work_dir: str,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    label: str = "training",
    clock: RunClock | None = None,
    selection: DevSelection | None = None,
) -> checkpointing.TrainingState:
    """`model.fit` that resumes where an earlier run of it stopped, with TensorBoard logs,
    history, progress lines and the caller's Keras `callbacks`; `selection` scores the model on
    dev after each epoch (its state is part of every checkpoint) and may stop training early.

    The training state is checkpointed every `config.checkpoint_every_steps` steps and at
    epoch ends (`checkpointing`); a re-run restores the latest valid checkpoint and continues at
    that exact batch: the rest of the interrupted epoch first, then the remaining epochs. On
    SIGTERM or SIGINT (within `preemption.stop_on_signals`) the current step is checkpointed and
    `preemption.Preempted` raised. `work_dir` is locked for this process (`DirectoryLock`).
    Returns the state, whose checkpoints `save_trained` removes once the model is saved.
    `label` names the run in progress lines; `clock` times the whole experiment's steps.
    """
    with DirectoryLock(work_dir, "model directory"):
        return _fit(model, data, config, work_dir, callbacks, label, clock, selection)


def _fit(
    model,
    data: TrainingData,
    config: TrainingConfig,
    work_dir: str,
    callbacks: Sequence[keras.callbacks.Callback],
    label: str,
    clock: RunClock | None,
    selection: DevSelection | None = None,
) -> checkpointing.TrainingState:
    per_epoch = data.steps_per_epoch
    total = per_epoch * config.epochs
    state = _training_state(data, config, work_dir, selection)
    start = state.restore(model)
    if model.optimizer is not None and not model.optimizer.built:
        # Slots made before the first trace: a tf.function that creates variables traces twice
        # (benchmarks/first_epoch counts it), once is enough.
        model.optimizer.build(model.trainable_variables)
    if clock is not None:
        clock.skip(start)
    saver = checkpointing.StepCheckpoint(state, config.checkpoint_every_steps, start, per_epoch)
    standard = [
        checkpointing.LossGuard(data.step_tasks, per_epoch, start, state.backup_dir),  # first: no NaN step is saved
        *([selection] if selection is not None else []),  # before the history, TensorBoard and the saver
        HistoryFile(os.path.join(work_dir, "history.json")),  # before the epoch-end checkpoint (see StepCheckpoint)
        keras.callbacks.TensorBoard(os.path.join(work_dir, "logs"), update_freq="epoch"),
        saver,
        checkpointing.StopOnRequest(saver, label),  # after the saver: a stop saves the step it ends
        ProgressLog(label, total, start, config.batch_size, config.progress_seconds, clock),
    ]
    step = start
    while step < total and not (selection is not None and selection.stopped):  # stopped early: nothing left
        epoch, into = divmod(step, per_epoch)
        # An interrupted epoch finishes alone; whole epochs then run in one `fit`.
        last_epoch = epoch + 1 if into else config.epochs
        model.fit(
            data.starting_at(step),
            initial_epoch=epoch,
            epochs=last_epoch,
            steps_per_epoch=per_epoch - into,
            callbacks=standard + list(callbacks),
            verbose=keras_verbose(config.verbose),
            shuffle=False,  # batches are already shuffled from the seed (batching.pass_orders)
        )
        if model.stop_training and saver.step < last_epoch * per_epoch:
            break  # a callback stopped training early
        step = last_epoch * per_epoch
    if distribute.is_multi_worker(model.distribute_strategy):
        logger.info("%s: weights digest %s", distribute.worker_label(), distribute.weights_digest(model))
    return state


def _training_state(
    data: TrainingData, config: TrainingConfig, work_dir: str, selection: DevSelection | None
) -> checkpointing.TrainingState:
    """The checkpoints of one run in `<work_dir>/backup`, refused when they were made by a run of
    another shape; they carry `selection`'s state too."""
    per_epoch = data.steps_per_epoch
    run = {
        "steps_per_epoch": per_epoch,
        "epochs": config.epochs,
        "total_steps": per_epoch * config.epochs,
        "batch_size": config.batch_size,
        "seed": config.seed,
        "length_bucketing": config.length_bucketing,
    }
    return checkpointing.TrainingState(
        os.path.join(work_dir, "backup"), run, keep=config.keep_checkpoints, extra=selection
    )


def static_shapes(config: TrainingConfig, strategy: tf.distribute.Strategy | None) -> bool:
    """XLA and TPUs want one batch shape: full batches padded to the full sequence length."""
    return config.jit_compile or (strategy is not None and distribute.is_tpu(strategy))


def encoder_preprocessor(
    encoder, max_seq_length: int, pad_to_multiple_of: int = PAD_TO_MULTIPLE_OF, static: bool = False
) -> Preprocessor:
    """The preprocessor of an encoder's tokenizer (`static`: no dynamic padding)."""
    multiple = max_seq_length if static else pad_to_multiple_of
    return Preprocessor(encoder.tokenizer, max_seq_length, multiple)


def save_trained(model_dir: str, model, encoder, config: dict | None = None, selection: dict | None = None):
    """Saves a trained MT-DNN (it owns its preprocessor) with its encoder's vocabulary and, if
    given, the experiment config that made it and its dev selection (`kept_epoch`, `dev_curve`,
    `stopped`, in preprocessing.json); returns the model, now knowing its directory."""
    from mtkd_tf.models import model_dir as model_dir_lib

    length = model.preprocessor.sequence_length
    recorded = {"selection": selection} if selection is not None else {}
    model_dir_lib.save(model_dir, model, encoder.tokenizer, encoder.lowercase, length, encoder=encoder.spec, **recorded)
    if config is not None:
        write_json(os.path.join(model_dir, model_dir_lib.CONFIG_FILE), config)
    model.directory = model_dir
    return model


class Objective(Protocol):
    """What a training run adds to plain MT-DNN training (distillation: soft targets and a Distiller)."""

    def data(self, model, encoder, splits: list[SplitData]) -> tuple[list[SplitData], dict | None]:
        """The training splits (possibly extended) and the per-example targets of each task."""

    def trainer(self, model, total_steps: int) -> keras.Model:
        """The model that `fit` trains around `model` (it computes the losses)."""


def train_model(
    config: ExperimentConfig,
    model_dir: str,
    train: Mapping[str, SplitData],
    *,
    tasks: Sequence[Task] = (),
    encoder: Encoder | None = None,
    source_dir: str | None = None,
    objective: Objective | None = None,
    label: str = "MT-DNN",
    callbacks: Sequence[keras.callbacks.Callback] = (),
    clock: RunClock | None = None,
    dev: Mapping[str, Mapping[str, SplitData]] | None = None,
):
    """Trains one MT-DNN into `model_dir` and returns it: the one set-up of teachers, student,
    baseline and fine-tuning (seed, strategy, static shapes, preprocessor, data, resumable fit).

    With `training.select_best_on_dev` and `dev` (`{task: {split: data}}`), the model is scored on
    the dev splits of the tasks it trains on (or `selection_tasks`) after every epoch and the best
    epoch's weights are the ones saved (`selection.DevSelection`).

    A new model on `encoder` serving `tasks` trains on every task of `train`; with `source_dir`,
    the trained model there is fine-tuned on the tasks of `train` alone. `objective`
    (`distill.student.Distillation`) adds its targets and its loss. The model is built in the
    current `tf.distribute` strategy scope and dtype policy; `config` is saved beside it.
    """
    settings = config.training
    config.validate()
    keras.utils.set_random_seed(settings.seed)
    strategy = tf.distribute.get_strategy()
    static = static_shapes(settings, strategy)
    model, encoder, splits, task_ids = _model_and_splits(config, train, tasks, encoder, source_dir, static)
    targets = None
    if objective is not None:
        splits, targets = objective.data(model, encoder, splits)
    data = training_data(
        splits,
        model.preprocessor,
        settings,
        targets=targets,
        drop_remainder=static,
        strategy=strategy,
        task_ids=task_ids,
    )
    trainer = model if objective is None else objective.trainer(model, data.steps_per_epoch * settings.epochs)
    sizes = {name: len(data) for name, data in train.items()}
    selection = dev_selection(settings, model, sizes, dev, model_dir, config.runtime.eval_batch_size)
    return fit_and_save(
        trainer, model, encoder, data, settings, model_dir, callbacks, label, clock, config.to_dict(), selection
    )


def _model_and_splits(
    config: ExperimentConfig,
    train: Mapping[str, SplitData],
    tasks: Sequence[Task],
    encoder: Encoder | None,
    source_dir: str | None,
    static: bool,
) -> tuple:
    """(model, encoder, its training splits in head order, their head ids or None): a new MT-DNN
    on `encoder` serving `tasks`, or the trained one in `source_dir` to fine-tune on `train`'s tasks."""
    from mtkd_tf.models.mtdnn import MTDNN

    if not source_dir:
        preprocessor = encoder_preprocessor(
            encoder, config.model.max_seq_length, config.model.pad_to_multiple_of, static
        )
        model = MTDNN(encoder.backbone, tasks, preprocessor=preprocessor)
        return model, encoder, [train[task.name] for task in model.tasks], None
    model, encoder = _trained_model(source_dir, config.model.pad_to_multiple_of)
    names = [task.name for task in model.tasks]
    missing = [name for name in train if name not in names]
    if missing:
        raise ConfigError(
            f"finetune_tasks: {source_dir} has no head for task {missing[0]!r} (it has {', '.join(names)})",
            "finetune_tasks",
        )
    return model, encoder, list(train.values()), [names.index(name) for name in train]


def dev_selection(
    settings: TrainingConfig,
    model,
    trained: Mapping[str, int],
    dev: Mapping[str, Mapping[str, SplitData]] | None,
    model_dir: str,
    batch_size: int,
) -> DevSelection | None:
    """The dev selection of a run (None when it is off, or when no task has labelled dev data,
    which is logged: the model then trains every epoch). `trained`: each task's training examples;
    a task is scored on at most a quarter as many dev examples (and `selection_examples`), so that
    an epoch's dev pass, an inference on at most a quarter of its examples, stays a small share of it."""
    if not settings.select_best_on_dev:
        return None
    tasks = [name for name in (settings.selection_tasks or trained) if name in trained]
    limits = {name: max(1, trained[name] // 4) for name in tasks}
    splits = selection_splits(dev or {}, tasks, settings.selection_examples, limits)
    if not splits:
        (logger.info if dev is None else logger.warning)(
            "select_best_on_dev: none of %s has labelled dev data here; training all %d epoch(s) without selection",
            ", ".join(tasks) or "the trained tasks",
            settings.epochs,
        )
        return None
    best_dir = os.path.join(model_dir, "backup", "best")
    return DevSelection(model, splits, best_dir, settings.early_stopping_patience, batch_size)


def _trained_model(source_dir: str, pad_to_multiple_of: int):
    """The MT-DNN saved in `source_dir`, in the current dtype policy, and its encoder."""
    from mtkd_tf.models import model_dir as model_dir_lib

    policy = keras.mixed_precision.global_policy().name
    model = model_dir_lib.load(source_dir, pad_to_multiple_of, policy=policy)
    settings = model_dir_lib.settings(source_dir)
    encoder = Encoder(
        model.encoder,
        list(model.preprocessor.tokenizer.get_vocabulary()),
        settings["lowercase"],
        settings.get("encoder", "unknown"),
    )
    return model, encoder


def fit_and_save(
    trainer: keras.Model,
    model,
    encoder,
    data: TrainingData,
    config: TrainingConfig,
    model_dir: str,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    label: str = "training",
    clock: RunClock | None = None,
    experiment_config: dict | None = None,
    selection: DevSelection | None = None,
):
    """Compiles `trainer` (the MT-DNN itself, or a Distiller around it), trains it resumably,
    saves `model` to `model_dir` (with `selection`: the best epoch's weights) and removes the
    checkpoints; returns the saved model."""
    trainer.compile(
        optimizer=make_optimizer(config, data.steps_per_epoch * config.epochs), jit_compile=config.jit_compile
    )
    with DirectoryLock(model_dir, "model directory"):
        state = fit(trainer, data, config, model_dir, callbacks, label, clock, selection)
        record = selection.finish(config.epochs) if selection is not None else None
        trained = save_trained(model_dir, model, encoder, experiment_config, record)
        state.remove()
    return trained
