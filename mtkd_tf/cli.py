"""`bin/run`: the absl command line over the library. Every option is a flag, so
`--flagfile=configs/X.cfg` works and flags given after it override the file.

Modes: train, evaluate, predict (MT-DNN); train_teachers, soft_labels, distill and
pipeline (knowledge distillation).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS

MODES = ("train", "evaluate", "predict", "train_teachers", "soft_labels", "distill", "pipeline")

# --- what to run on
flags.DEFINE_enum("mode", "train", MODES, "What to do.")
flags.DEFINE_list("tasks", ["sst2", "rte", "stsb"], "Comma-separated task names (GLUE, built-in suites or --task_file).")
flags.DEFINE_enum("data_source", "tsv", ["tsv", "tfds"], "tsv: files in the GLUE directory layout (or a task file's); tfds: tensorflow_datasets.")
flags.DEFINE_string("data_dir", None, "Directory of the TSV data, or the TFDS data_dir.")
flags.DEFINE_string("suite", None, "A built-in offline suite (glue_sample) to use as --data_dir.")
flags.DEFINE_integer("suite_size", 400, "Training examples per task of a generated suite.", lower_bound=8)
flags.DEFINE_string("task_file", None, "YAML/JSON file defining custom tasks.")
flags.DEFINE_bool("tfds_download", False, "Let tfds.load download missing datasets (off: fail fast offline).")
flags.DEFINE_bool("skip_bad_rows", False, "Skip malformed data rows with a warning instead of failing.")
flags.DEFINE_integer("max_train_examples", 0, "Use at most this many training examples per task (0: all).", lower_bound=0)
flags.DEFINE_integer("max_eval_examples", 0, "Use at most this many examples per dev/test split (0: all).", lower_bound=0)
# --- the model
flags.DEFINE_string("encoder", "tiny", "Encoder: keras-hub preset, local directory, alias (tiny, minilm_l6) or random:layers=..,hidden=..")
flags.DEFINE_string("vocab_file", None, "vocab.txt for a random encoder (default: learned from the training text).")
flags.DEFINE_integer("vocab_size", 2000, "Size of a learned vocabulary for random encoders.", lower_bound=100)
flags.DEFINE_float("encoder_dropout", None, "Override the shared layers' dropout.", lower_bound=0.0, upper_bound=0.99)
flags.DEFINE_string("model_dir", None, "Where models, checkpoints, logs and results go.")
flags.DEFINE_integer("max_seq_length", 128, "Tokens per example after packing (pairs truncated round-robin).", lower_bound=8)
# --- training
flags.DEFINE_integer("batch_size", 32, "Global batch size.", lower_bound=1)
flags.DEFINE_integer("eval_batch_size", 128, "Batch size for evaluation and inference.", lower_bound=1)
flags.DEFINE_integer("epochs", 5, "Training epochs.", lower_bound=1)
flags.DEFINE_float("learning_rate", 5e-5, "Peak learning rate.", lower_bound=0.0)
flags.DEFINE_enum("optimizer", "adamax", ["adamax", "adamw", "adam"], "Optimizer (paper: adamax).")
flags.DEFINE_float("warmup_fraction", 0.1, "Fraction of steps of linear warm-up.", lower_bound=0.0, upper_bound=0.99)
flags.DEFINE_float("clipnorm", 1.0, "Global gradient-norm clip (0: off).", lower_bound=0.0)
flags.DEFINE_float("weight_decay", 0.01, "Weight decay (adamw only).", lower_bound=0.0)
flags.DEFINE_enum("task_sampling", "proportional", ["proportional", "temperature", "uniform"], "How batches of tasks are mixed.")
flags.DEFINE_float("sampling_temperature", 1.0, "tau of temperature sampling, p ~ |D|^tau.", lower_bound=0.0)
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_enum("strategy", "auto", ["auto", "default", "one_device", "mirrored"], "tf.distribute strategy.")
flags.DEFINE_integer("verbose", 2, "Keras progress output: 0 silent, 1 bar, 2 a line per epoch.")
# --- outputs
flags.DEFINE_string("output_dir", None, "Where --mode=predict writes submission files (default: <model_dir>/predictions).")


def _data_dir() -> str | None:
    if FLAGS.suite:
        from mtkd_tf.data import suites

        return suites.suite_dir(FLAGS.suite, FLAGS.suite_size, seed=0)
    return FLAGS.data_dir


def _tasks():
    from mtkd_tf import tasks as tasks_lib

    known = tasks_lib.registry(FLAGS.task_file)
    return tasks_lib.resolve_tasks(FLAGS.tasks, known)


def _load(tasks, splits, limit: int):
    from mtkd_tf.data import readers

    loaded = readers.load_splits(
        tasks, splits, source=FLAGS.data_source, data_dir=_data_dir(),
        skip_bad_rows=FLAGS.skip_bad_rows, tfds_download=FLAGS.tfds_download,
    )
    return {task: {split: data.take(limit) for split, data in by_split.items()} for task, by_split in loaded.items()}


def _train_config():
    from mtkd_tf.training import TrainConfig

    config = TrainConfig(
        batch_size=FLAGS.batch_size, epochs=FLAGS.epochs, learning_rate=FLAGS.learning_rate,
        optimizer=FLAGS.optimizer, warmup_fraction=FLAGS.warmup_fraction, clipnorm=FLAGS.clipnorm,
        weight_decay=FLAGS.weight_decay, task_sampling=FLAGS.task_sampling,
        sampling_temperature=FLAGS.sampling_temperature, seed=FLAGS.seed, verbose=FLAGS.verbose,
    )
    config.validate()
    return config


def _require_model_dir() -> str:
    if not FLAGS.model_dir:
        raise app.UsageError("--model_dir is required")
    return FLAGS.model_dir


def run_train() -> dict:
    from mtkd_tf import distribute, evaluation, model_dir as model_dir_lib, training
    from mtkd_tf.models.encoder import load_encoder

    model_dir = _require_model_dir()
    tasks = _tasks()
    config = _train_config()
    trainable = [task for task in tasks if task.trainable]
    train = {name: by_split["train"] for name, by_split in _load(trainable, "train", FLAGS.max_train_examples).items()}
    dev = _load(tasks, "dev", FLAGS.max_eval_examples)
    strategy = distribute.get_strategy(FLAGS.strategy)
    texts = [text for data in train.values() for text in data.text_a + (data.text_b or [])]
    with strategy.scope():
        encoder = load_encoder(
            FLAGS.encoder, dropout=FLAGS.encoder_dropout, vocab_file=FLAGS.vocab_file,
            training_texts=texts, vocabulary_size=FLAGS.vocab_size, seed=FLAGS.seed,
        )
        trained = training.train_mtdnn(tasks, train, encoder, config, model_dir, FLAGS.max_seq_length, strategy)
    results = evaluation.evaluate(trained.model, trained.preprocessor, dev, FLAGS.eval_batch_size)
    model_dir_lib.write_json(os.path.join(model_dir, "eval_results.json"), results)
    return results


def run_evaluate() -> dict:
    from mtkd_tf import evaluation, model_dir as model_dir_lib

    model_dir = _require_model_dir()
    trained = model_dir_lib.load(model_dir)
    dev = _load(_tasks(), "dev", FLAGS.max_eval_examples)
    results = evaluation.evaluate(trained.model, trained.preprocessor, dev, FLAGS.eval_batch_size)
    model_dir_lib.write_json(os.path.join(model_dir, "eval_results.json"), results)
    return results


def run_predict() -> list[str]:
    from mtkd_tf import evaluation, model_dir as model_dir_lib

    model_dir = _require_model_dir()
    trained = model_dir_lib.load(model_dir)
    test = _load(_tasks(), "test", FLAGS.max_eval_examples)
    output_dir = FLAGS.output_dir or os.path.join(model_dir, "predictions")
    return evaluation.write_predictions(trained.model, trained.preprocessor, test, output_dir, FLAGS.eval_batch_size)


RUNNERS = {"train": run_train, "evaluate": run_evaluate, "predict": run_predict}


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])} (options are --flags)")
    logging.getLogger().setLevel(logging.INFO)
    from mtkd_tf.assets import AssetError
    from mtkd_tf.data.readers import DataError
    from mtkd_tf.model_dir import ModelDirError
    from mtkd_tf.models.encoder import EncoderError
    from mtkd_tf.tasks import TaskError

    runner = RUNNERS.get(FLAGS.mode)
    if runner is None:
        raise app.UsageError(f"--mode={FLAGS.mode} is not available yet")
    started = time.time()
    try:
        result = runner()
    except (DataError, TaskError, EncoderError, ModelDirError, AssetError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    print(f"{FLAGS.mode} finished in {time.time() - started:.1f}s", file=sys.stderr)
    return 0


def run() -> None:
    """Entry point of bin/run."""
    app.run(main)
