"""`Experiment`: the paper's procedure end to end, one method per stage, from one `ExperimentConfig`.

    teachers -> soft labels -> distilled student (+ the plain MT-DNN baseline) -> evaluation -> report

>>> import mtkd_tf as mt
>>> config = mt.ExperimentConfig.from_flagfile("configs/tiny.cfg", model_dir="runs/kd", epochs=3)
>>> report = mt.Experiment(config).run()          # or stage by stage:
>>> experiment = mt.Experiment(config)
>>> experiment.teachers(); experiment.soft_labels(); student = experiment.student()
>>> student.predict_texts("sst2", ["a gripping film"])["label"]

An experiment directory (`model_dir`) holds `teachers/member_<k>/`, `soft_labels/<task>.npz`,
`student/`, `baseline/`, `report.json`, `report.md` and the plots. Every stage is skipped
when its outputs exist and validate (the one place that decides it is `Experiment._done`),
so re-running the same experiment resumes where it stopped; a stage interrupted mid-way
resumes from its last checkpoint. The experiment owns the `tf.distribute` strategy and
enters its scope once per stage. `bin/run` is a thin shell over these methods.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
import time
from typing import Any, Callable, Sequence

import keras

from mtkd_tf import distribute, evaluation
from mtkd_tf.evaluation import DEV_OUTPUTS, read_dev_outputs, write_dev_outputs
from mtkd_tf import model_dir as model_dir_lib
from mtkd_tf.config import ExperimentConfig
from mtkd_tf.data import batching
from mtkd_tf.data.split import SplitData
from mtkd_tf.distill import ensemble
from mtkd_tf.distill.student import teacher_task_names, train_student
from mtkd_tf.errors import ConfigError
from mtkd_tf.files import write_json
from mtkd_tf.models.encoder import Encoder, check_spec, load_encoder, read_vocabulary
from mtkd_tf.models.mtdnn import MTDNN, in_precision
from mtkd_tf.progress import RunClock, duration
from mtkd_tf.report import intervals, write_report
from mtkd_tf.tasks import UNLABELLED, Task
from mtkd_tf.training import train_mtdnn

logger = logging.getLogger("mtkd_tf")

STAGES = ("teachers", "soft_labels", "student", "baseline", "evaluate", "report")


def environment(precision: str) -> dict[str, str]:
    """Where a result was computed: CPU model, accelerators, training precision, versions."""
    import platform

    import tensorflow as tf

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": str(os.cpu_count()), "gpus": str(len(tf.config.list_physical_devices("GPU"))),
            "training_precision": precision, "tensorflow": tf.__version__, "keras": keras.__version__}


@dataclasses.dataclass
class ExperimentPaths:
    """Where each stage of an experiment writes (defaults under `root`)."""

    root: str
    teacher_dir: str = ""
    soft_labels_dir: str = ""
    student_dir: str = ""
    baseline_dir: str = ""

    def __post_init__(self):
        self.teacher_dir = self.teacher_dir or os.path.join(self.root, "teachers")
        self.soft_labels_dir = self.soft_labels_dir or os.path.join(self.root, "soft_labels")
        self.student_dir = self.student_dir or os.path.join(self.root, "student")
        self.baseline_dir = self.baseline_dir or os.path.join(self.root, "baseline")


def _stage(method: Callable | None = None, *, checks: bool = True) -> Callable:
    """Runs a stage inside the strategy scope, after the experiment's checks (`checks`:
    stages that only read a trained model need no training data)."""

    def wrap(method: Callable) -> Callable:
        @functools.wraps(method)
        def run(self: "Experiment", *args, **kwargs):
            if checks:
                self.validate()
            with self.strategy.scope():
                return method(self, *args, **kwargs)

        return run

    return wrap(method) if method is not None else wrap


class Experiment:
    """One run of the method, configured by an `ExperimentConfig` (see the module docstring).

    Args:
        config: every setting; `config.runtime.model_dir` is the experiment directory.
        strategy: a `tf.distribute.Strategy` (default: the one `config.runtime.strategy` names,
            created before any other TF op, as MultiWorkerMirroredStrategy requires).
        callbacks: Keras callbacks added to every training run (teachers, student, baseline).
    """

    def __init__(self, config: ExperimentConfig, strategy=None, callbacks: Sequence[keras.callbacks.Callback] = ()):
        self.config = config.validate()
        runtime = config.runtime
        if not runtime.model_dir:
            raise ConfigError("model_dir is required", "model_dir")
        self.strategy = strategy or distribute.get_strategy(runtime.strategy, runtime.num_gpus, runtime.tpu)
        if runtime.deterministic:
            import tensorflow as tf

            tf.config.experimental.enable_op_determinism()
        self.precision = distribute.set_precision(runtime.mixed_precision)  # what `auto` resolved to
        self.callbacks = list(callbacks)
        self.clock = RunClock()
        own = lambda path: distribute.worker_dir(path, self.strategy) if path else ""  # noqa: E731
        teachers, distillation = config.teachers, config.distillation
        self.paths = ExperimentPaths(own(runtime.model_dir), own(teachers.teacher_dir),
                                     own(distillation.soft_labels_dir), own(distillation.student_dir))
        # What earlier runs wrote: differs from `paths` only on non-chief workers, which read
        # the chief's teachers and soft labels unless they made their own.
        self.shared = ExperimentPaths(runtime.model_dir, teachers.teacher_dir or "", distillation.soft_labels_dir or "",
                                      distillation.student_dir or "")
        self._validated = False
        self._splits: dict[str, dict] = {}
        self._position: tuple[int, int] | None = None

    # --- data ------------------------------------------------------------------------------
    @functools.cached_property
    def known_tasks(self) -> dict[str, Task]:
        """Every task this experiment can name: GLUE, the built-in suites, the task file's."""
        from mtkd_tf import tasks as tasks_lib
        from mtkd_tf.data import suites

        return tasks_lib.registry(self.config.data.task_file, extra=suites.suite_tasks())

    @functools.cached_property
    def tasks(self) -> list[Task]:
        from mtkd_tf import tasks as tasks_lib

        data = self.config.data
        return tasks_lib.with_answer_modules(tasks_lib.resolve_tasks(data.tasks, self.known_tasks), data.answer_module)

    @functools.cached_property
    def data_dir(self) -> str | None:
        data = self.config.data
        if data.suite:
            from mtkd_tf.data import suites

            return suites.suite_dir(data.suite, data.suite_size, seed=0)
        return data.data_dir

    def load(self, tasks: Sequence[Task], split: str, limit: int = 0) -> dict[str, dict[str, SplitData]]:
        """`{task: {split name: data}}` of `split` ("train", "dev", "test" or "unlabelled"), cut to `limit`."""
        from mtkd_tf.data import readers

        data = self.config.data
        key = (split, limit, tuple(task.name for task in tasks))
        if key not in self._splits:
            loaded = readers.load_splits(tasks, split, source=data.data_source, data_dir=self.data_dir,
                                         skip_bad_rows=data.skip_bad_rows, tfds_download=data.tfds_download)
            self._splits[key] = {task: {name: part.take(limit) for name, part in by_split.items()}
                                 for task, by_split in loaded.items()}
        return self._splits[key]

    @property
    def train_data(self) -> dict[str, SplitData]:
        trainable = [task for task in self.tasks if task.trainable]
        return {name: s["train"] for name, s in self.load(trainable, "train", self.config.data.max_train_examples).items()}

    @property
    def unlabelled_data(self) -> dict[str, SplitData]:
        extra = [task for task in self.tasks if task.trainable and UNLABELLED in task.source.files]
        return {name: s[UNLABELLED] for name, s in self.load(extra, UNLABELLED).items()}

    @property
    def dev_data(self) -> dict[str, dict[str, SplitData]]:
        return self.load(self.tasks, "dev", self.config.data.max_eval_examples)

    @property
    def texts(self) -> list[str]:
        """The training text (a random encoder's vocabulary is learned from it)."""
        return [text for data in self.train_data.values() for text in data.text_a + (data.text_b or [])]

    @property
    def teacher_tasks(self) -> list[str]:
        return teacher_task_names(self.tasks, self.config.teachers.teacher_tasks)

    # --- checks ------------------------------------------------------------------------------
    def validate(self) -> None:
        """Settings every stage needs, checked (and the data read) before any stage trains."""
        if self._validated:
            return
        config = self.config
        self.train_data  # reads and checks every training file
        self.unlabelled_data
        trained = set(self.train_data)
        self.teacher_tasks
        unknown = sorted(set(config.distillation.task_alpha) - trained)
        if unknown:
            raise ConfigError(f"task_alpha names task(s) {', '.join(unknown)} that are not trained "
                              f"({', '.join(sorted(trained))})", "task_alpha")
        model = config.model
        for spec in {model.encoder, config.distillation.student_encoder or model.encoder, *config.teachers.teacher_encoders}:
            check_spec(spec)
        if model.vocab_file:
            read_vocabulary(model.vocab_file)
        self.member_specs()
        missing = [directory for directory in config.teachers.teacher_dirs if not model_dir_lib.exists(directory)]
        if missing:
            raise ConfigError(f"teacher_dirs: no trained model in {', '.join(missing)}", "teacher_dirs")
        self._validated = True

    # --- building blocks ----------------------------------------------------------------------
    def encoder(self, spec: str, dropout: float | None, seed: int) -> Encoder:
        """A fresh encoder (call inside the strategy scope)."""
        model = self.config.model
        return load_encoder(spec, dropout=dropout, vocab_file=model.vocab_file, training_texts=self.texts,
                            vocabulary_size=model.vocab_size, seed=seed)

    def member_specs(self) -> list[ensemble.MemberSpec]:
        teachers = self.config.teachers
        return ensemble.member_specs(teachers.num_teachers, self.config.training.seed, teachers.teacher_dropouts,
                                     teachers.teacher_encoders or [self.config.model.encoder])

    def teacher_dirs(self) -> list[str]:
        """The teachers' model directories: `teacher_dirs`, or the finished members."""
        explicit = self.config.teachers.teacher_dirs
        if explicit:
            return list(explicit)
        return ensemble.member_dirs(self._readable("teacher_dir"))

    def _readable(self, name: str) -> str:
        """Where to read stage output `name` from: this process's directory if it wrote one,
        else the chief's (non-chief workers read the chief's teachers and soft labels)."""
        own = getattr(self.paths, name)
        return own if os.path.exists(own) else getattr(self.shared, name)

    def soft_label_data(self) -> dict[str, list[SplitData]]:
        unlabelled = self.unlabelled_data
        return {name: [self.train_data[name]] + ([unlabelled[name]] if name in unlabelled else [])
                for name in self.teacher_tasks}

    def _steps(self, epochs: int, extra: dict[str, SplitData] | None = None) -> int:
        """Training steps of one model (for the run's time estimate)."""
        batch = self.config.training.batch_size
        sizes = [len(data) + len((extra or {}).get(name, ())) for name, data in self.train_data.items()]
        return epochs * sum(batching.num_batches(size, batch) for size in sizes)

    def _done(self, stage: str, directory: str) -> bool:
        """The one skip policy: a stage whose outputs exist and validate is not run again."""
        if stage == "soft_labels":
            done = ensemble.soft_labels_valid(directory, self.soft_label_data(), self.config.distillation.temperature)
            if done:
                logger.info("soft labels in %s are valid, skipping", directory)
            return done
        done = model_dir_lib.complete(directory)
        if done:
            logger.info("%s exists, skipping", stage if stage in ("student", "baseline") else f"teacher {directory}")
        return done

    def _announce(self, stage: str, text: str) -> None:
        where = f"[{self._position[0]}/{self._position[1]}] " if self._position else ""
        print(f"{where}{stage}: {text}", file=sys.stderr, flush=True)

    def _training_config(self, **changes: Any):
        return dataclasses.replace(self.config.training, **changes)

    # --- the stages --------------------------------------------------------------------------
    @_stage
    def teachers(self) -> list[str]:
        """Trains the ensemble's members (skipping finished ones); returns their directories."""
        if self.config.teachers.teacher_dirs:
            self._announce("teachers", f"using {len(self.config.teachers.teacher_dirs)} given model(s)")
            return list(self.config.teachers.teacher_dirs)
        specs = self.member_specs()
        epochs = self.config.teachers.teacher_epochs or self.config.training.epochs
        self._announce("teachers", f"training {len(specs)} MT-DNN members -> {self.paths.teacher_dir}")
        directories = []
        for spec in specs:
            directory = os.path.join(self.paths.teacher_dir, spec.name)
            if not self._done("teachers", directory):
                logger.info("training teacher %s (seed %d, dropout %.2f, encoder %s)", spec.name, spec.seed,
                            spec.dropout, spec.encoder)
                encoder = self.encoder(spec.encoder, spec.dropout, spec.seed)
                train_mtdnn(self.tasks, self.train_data, encoder, self._training_config(seed=spec.seed, epochs=epochs),
                            directory, self.config.model.max_seq_length, self.callbacks,
                            self.config.model.pad_to_multiple_of, label=f"teacher {spec.name}", clock=self.clock,
                            experiment_config=self.config.to_dict())
            directories.append(directory)
        return directories

    @_stage
    def soft_labels(self) -> str:
        """Writes the ensemble's soft labels of every task with a teacher (skipped if valid)."""
        directory = self.paths.soft_labels_dir
        self._announce("soft_labels", f"averaging the teachers' predictions on {', '.join(self.teacher_tasks)} -> {directory}")
        if not self._done("soft_labels", directory):
            runtime = self.config.runtime
            ensemble.make_soft_labels(self.teacher_dirs(), self.soft_label_data(), self.config.distillation.temperature,
                                      directory, runtime.eval_batch_size, self.config.training.checkpoint_every_steps,
                                      distribute.inference_policy(self.config.distillation.soft_labels_precision))
        return directory

    def _student_encoder(self) -> Encoder:
        """The encoder of the student and of the baseline."""
        model = self.config.model
        return self.encoder(self.config.distillation.student_encoder or model.encoder, model.encoder_dropout,
                            self.config.training.seed)

    @_stage
    def student(self) -> MTDNN:
        """Distils the teachers into one student MT-DNN (loaded instead if already trained)."""
        directory = self.paths.student_dir
        distillation = self.config.distillation
        source = "online teachers" if distillation.online_teachers else "cached soft labels"
        self._announce("student", f"distilling ({source}, alpha {distillation.alpha}, T {distillation.temperature}) "
                       f"-> {directory}")
        if self._done("student", directory):
            return model_dir_lib.load(directory)
        student = train_student(
            self.tasks, self.train_data, self._student_encoder(), self.config.training, distillation, directory,
            self.config.model.max_seq_length, self.config.teachers.teacher_tasks, self._readable("soft_labels_dir"),
            self.teacher_dirs(),
            self.unlabelled_data, self.callbacks, self.clock, self.config.to_dict(), self.config.model.pad_to_multiple_of,
        )
        return in_precision(student, "float32")  # as mt.load_model gives it, whatever it trained in

    @_stage
    def baseline(self) -> MTDNN:
        """The plain MT-DNN with the student's settings (loaded instead if already trained)."""
        directory = self.paths.baseline_dir
        self._announce("baseline", f"training the MT-DNN baseline -> {directory}")
        if self._done("baseline", directory):
            return model_dir_lib.load(directory)
        baseline = train_mtdnn(self.tasks, self.train_data, self._student_encoder(), self.config.training, directory,
                               self.config.model.max_seq_length, self.callbacks, self.config.model.pad_to_multiple_of,
                               label="baseline", clock=self.clock,
                               experiment_config=self.config.to_dict())
        return in_precision(baseline, "float32")

    @_stage
    def evaluate(self) -> dict[str, dict]:
        """Dev metrics of every member, the ensemble, the baseline and the student: `{row: results}`.
        Their dev outputs go to `dev_outputs.npz`, from which the report draws its intervals."""
        self._announce("evaluate", "every member, the ensemble, the baseline and the student on dev")
        dev, batch = self.dev_data, self.config.runtime.eval_batch_size
        outputs: dict[str, dict] = {}
        directories: dict[str, str] = {}
        member_dirs = self.teacher_dirs()
        if member_dirs:
            members = [model_dir_lib.load(directory) for directory in member_dirs]
            each, outputs["ensemble"] = ensemble.member_outputs(members, dev, batch)
            for directory, member_outputs in zip(member_dirs, each):
                name = os.path.basename(os.path.normpath(directory))
                outputs[name], directories[name] = member_outputs, directory
            outputs = {**{name: outputs[name] for name in directories}, "ensemble": outputs["ensemble"]}
        for name, directory in (("baseline", self.paths.baseline_dir), ("student", self.paths.student_dir)):
            if model_dir_lib.exists(directory):
                outputs[name] = evaluation.dev_outputs(model_dir_lib.load(directory), dev, batch)
                directories[name] = directory
        rows = {name: evaluation.score_outputs(dev, found) for name, found in outputs.items()}
        for name, directory in directories.items():
            write_json(os.path.join(directory, "eval_results.json"), rows[name])
        write_dev_outputs(os.path.join(self.paths.root, DEV_OUTPUTS), outputs)
        return rows

    def report(self, rows: dict[str, dict] | None = None) -> dict:
        """Writes report.json (with the full config), report.md and the plots; returns the report."""
        rows = rows if rows is not None else self.evaluate()
        self._announce("report", f"{os.path.join(self.paths.root, 'report.md')}")
        path = os.path.join(self.paths.root, DEV_OUTPUTS)
        found = intervals(self.dev_data, read_dev_outputs(path), rows, seed=self.config.training.seed) \
            if os.path.isfile(path) else {}
        teacher_tasks = list(self.teacher_tasks) if self.config.teachers.teacher_tasks else None
        report, table = write_report(self.paths.root, rows, list(rows), self.config.to_dict(), {
            "student": os.path.join(self.paths.student_dir, "history.json"),
            "baseline": os.path.join(self.paths.baseline_dir, "history.json"),
        }, environment(self.precision), found, teacher_tasks)
        print(table)
        return report

    def run(self) -> dict:
        """The whole pipeline: every stage in order, each skipped when already done; returns the report."""
        self.validate()
        started = time.time()
        baseline = self.config.distillation.train_baseline
        stages = [self.teachers, self.soft_labels, self.student] + ([self.baseline] if baseline else []) + [self.evaluate]
        self._plan()
        rows = None
        for number, stage in enumerate(stages, start=1):
            self._position = (number, len(stages) + 1)
            result = stage()
            if stage == self.evaluate:
                rows = result
        self._position = (len(stages) + 1, len(stages) + 1)
        report = self.report(rows)
        self._position = None
        logger.info("experiment finished in %s: %s", duration(time.time() - started), self.paths.root)
        return report

    def _plan(self) -> None:
        """Tells the run's clock how many training steps are left, for its time estimates."""
        config = self.config
        if not config.teachers.teacher_dirs:
            epochs = config.teachers.teacher_epochs or config.training.epochs
            for spec in self.member_specs():
                if not model_dir_lib.exists(os.path.join(self.paths.teacher_dir, spec.name)):
                    self.clock.plan(self._steps(epochs))
        if not model_dir_lib.exists(self.paths.student_dir):
            extra = {name: data for name, data in self.unlabelled_data.items() if name in self.teacher_tasks}
            self.clock.plan(self._steps(config.training.epochs, extra))
        if config.distillation.train_baseline and not model_dir_lib.exists(self.paths.baseline_dir):
            self.clock.plan(self._steps(config.training.epochs))

    # --- single-model modes -------------------------------------------------------------------
    @_stage
    def train(self) -> dict:
        """Trains one MT-DNN in `model_dir` (always anew) and evaluates it on dev."""
        model = self.config.model
        self._announce("train", f"MT-DNN on {', '.join(self.train_data)} -> {self.paths.root}")
        encoder = self.encoder(model.encoder, model.encoder_dropout, self.config.training.seed)
        dev = self.dev_data
        trained = train_mtdnn(self.tasks, self.train_data, encoder, self.config.training, self.paths.root,
                              model.max_seq_length, self.callbacks, model.pad_to_multiple_of, clock=self.clock,
                              experiment_config=self.config.to_dict())
        results = evaluation.evaluate(in_precision(trained, "float32"), dev, self.config.runtime.eval_batch_size)
        write_json(os.path.join(self.paths.root, "eval_results.json"), results)
        return results

    @_stage(checks=False)
    def evaluate_model(self) -> dict:
        """Evaluates the model in `model_dir` on dev; writes eval_results.json."""
        trained = model_dir_lib.load(self.config.runtime.model_dir)
        results = evaluation.evaluate(trained, self.dev_data, self.config.runtime.eval_batch_size)
        write_json(os.path.join(self.paths.root, "eval_results.json"), results)
        return results

    @_stage(checks=False)
    def predict(self) -> list[str]:
        """GLUE-leaderboard files of the model in `model_dir` for every test split; with `mnli`
        also AX.tsv (scored with the MNLI head) when the AX test file is there, else one line
        says why it was skipped."""
        trained = model_dir_lib.load(self.config.runtime.model_dir)
        data = self.config.data
        tasks, skipped = evaluation.prediction_tasks(self.tasks, self.known_tasks, self.data_dir, data.data_source,
                                                     data.tfds_download)
        for line in skipped:
            logger.warning("%s", line)
        test = self.load(tasks, "test", data.max_eval_examples)
        output = self.config.runtime.output_dir
        output_dir = distribute.worker_dir(output, self.strategy) if output else os.path.join(self.paths.root, "predictions")
        return evaluation.write_predictions(trained, test, output_dir, self.config.runtime.eval_batch_size)

    def distill(self) -> dict:
        """The student alone (bin/run --mode=distill), evaluated on dev."""
        student = self.student()
        with self.strategy.scope():
            results = evaluation.evaluate(student, self.dev_data, self.config.runtime.eval_batch_size)
        write_json(os.path.join(self.paths.student_dir, "eval_results.json"), results)
        return results

    def close(self) -> None:
        """Removes a non-chief worker's scratch directory (multi-worker runs)."""
        distribute.remove_worker_dir(self.config.runtime.model_dir, self.strategy)
