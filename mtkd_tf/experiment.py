"""`Experiment`: the paper's procedure end to end, one method per stage, from one `ExperimentConfig`.

    teachers -> soft labels -> distilled student (+ the plain MT-DNN baseline) -> evaluation -> report

>>> import mtkd_tf as mt
>>> config = mt.ExperimentConfig.from_flagfile("configs/tiny.cfg", model_dir="runs/kd", epochs=3)
>>> report = mt.Experiment(config).run()          # or stage by stage:
>>> experiment = mt.Experiment(config)
>>> experiment.teachers(); experiment.soft_labels(); student = experiment.student()
>>> student.predict_texts("sst2", ["a gripping film"])["label"]

An experiment directory (`model_dir`) holds `teachers/member_<k>/`, `soft_labels/<task>.npz`,
`student/`, `baseline/` (with `seeds` > 1 also `student_s2/`, `baseline_s2/`, ...; with
`compare_anneal` / `self_distill_rounds` also `student_anneal/`, `student_r1/` and
`soft_labels_r1/`), `report.json`, `report.md` and the plots. Every stage is skipped
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
import numpy as np

from mtkd_tf import distribute, evaluation
from mtkd_tf import model_dir as model_dir_lib
from mtkd_tf.config import ExperimentConfig
from mtkd_tf.data import batching
from mtkd_tf.data.split import HELDOUT, SplitData, carve, ids_digest
from mtkd_tf.distill import ensemble, soft_labels
from mtkd_tf.distill.student import teacher_task_names, train_student
from mtkd_tf.errors import ConfigError
from mtkd_tf.files import read_json, write_atomic, write_json
from mtkd_tf.finetune import finetune, finetune_seed
from mtkd_tf.models.encoder import Encoder, check_spec, load_encoder, read_vocabulary
from mtkd_tf.models.mtdnn import MTDNN, in_precision
from mtkd_tf.progress import RunClock, duration
from mtkd_tf.report import Evidence, run_row, write_report
from mtkd_tf.tasks import CLASSIFICATION, RANKING, UNLABELLED, Task
from mtkd_tf.training import train_mtdnn

logger = logging.getLogger("mtkd_tf")

STAGES = ("teachers", "soft_labels", "student", "baseline", "variants", "finetune", "evaluate", "report")
SELECTION_FILE = "selection.json"  # the teacher pool's scores and the members kept
GATE_FILE = "gate.json"  # the ensemble against baseline run 0 on dev, before any student trains


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
        """Each trained task's training examples: without the held-out split, then cut to `max_train_examples`."""
        data = self.config.data
        if not data.heldout_examples:
            trainable = [task for task in self.tasks if task.trainable]
            return {name: s["train"] for name, s in self.load(trainable, "train", data.max_train_examples).items()}
        return {name: rest.take(data.max_train_examples) for name, (rest, _) in self._carved.items()}

    @functools.cached_property
    def _carved(self) -> dict[str, tuple[SplitData, SplitData]]:
        trainable = [task for task in self.tasks if task.trainable]
        return {name: carve(s["train"], self.config.data.heldout_examples)
                for name, s in self.load(trainable, "train").items()}

    @property
    def heldout_data(self) -> dict[str, dict[str, SplitData]]:
        """`{task: {"heldout": data}}`: the labelled split the report tests the claims on (none
        without `heldout_examples`); carved from each task's training data, never trained on."""
        return {name: {HELDOUT: held} for name, (_, held) in self._carved.items()} if self.config.data.heldout_examples else {}

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
        unknown = sorted(set(config.finetune.finetune_tasks) - trained)
        if unknown:
            raise ConfigError(f"finetune_tasks: task(s) {', '.join(unknown)} are not trained ({', '.join(sorted(trained))})",
                              "finetune_tasks")
        if config.teachers.teacher_pool > config.teachers.num_teachers:
            dev = self.dev_data
            lacking = [name for name in self.selection_tasks if not any(d.labels is not None for d in dev.get(name, {}).values())]
            if lacking:
                raise ConfigError(f"teacher_selection_tasks: {', '.join(lacking)} has no labelled dev data to rank the "
                                  "teacher pool by", "teacher_selection_tasks")
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
        """Every candidate member to train: `teacher_pool` of them, or `num_teachers`."""
        teachers = self.config.teachers
        return ensemble.member_specs(max(teachers.teacher_pool, teachers.num_teachers), self.config.training.seed,
                                     teachers.teacher_dropouts, teachers.teacher_encoders or [self.config.model.encoder])

    @property
    def selection_tasks(self) -> list[str]:
        return list(self.config.teachers.teacher_selection_tasks) or self.teacher_tasks

    def teacher_dirs(self) -> list[str]:
        """The ensemble's multi-task members: `teacher_dirs`, the pool's chosen members
        (`teachers/selection.json`), or every finished member."""
        explicit = self.config.teachers.teacher_dirs
        if explicit:
            return list(explicit)
        root = self._readable("teacher_dir")
        selection = os.path.join(root, SELECTION_FILE)
        if os.path.isfile(selection):
            return [os.path.join(root, name) for name in read_json(selection)["chosen"]]
        return ensemble.member_dirs(root)

    def teacher_dirs_by_task(self, tasks: Sequence[str] | None = None) -> dict[str, list[str]]:
        """Each task's ensemble: the members fine-tuned on it (`finetune_epochs`, teacher tasks),
        else the multi-task members."""
        members = self.teacher_dirs()
        finetuned = self.config.finetune.finetune_epochs and not self.config.teachers.teacher_dirs
        by_task = {}
        for name in tasks if tasks is not None else self.teacher_tasks:
            if finetuned and name in self.teacher_tasks:
                by_task[name] = [self._finetuned_dir(directory, name) for directory in members]
            else:
                by_task[name] = members
        return by_task

    def _finetuned_dir(self, directory: str, task: str) -> str:
        """Where `directory`'s copy fine-tuned on `task` goes: `<parent>/finetuned/<task>/<name>`."""
        parent, name = os.path.split(os.path.normpath(directory))
        return os.path.join(parent, "finetuned", task, name)

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
            named = {"teachers": "teacher", "finetune": "fine-tuned model"}.get(stage)
            logger.info("%s exists, skipping", f"{named} {directory}" if named else stage)
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
                actual = self.config.replace(seed=spec.seed, epochs=epochs, encoder=spec.encoder, encoder_dropout=spec.dropout)
                train_mtdnn(self.tasks, self.train_data, encoder, actual.training, directory,
                            self.config.model.max_seq_length, self.callbacks,
                            self.config.model.pad_to_multiple_of, label=f"teacher {spec.name}", clock=self.clock,
                            experiment_config=actual.to_dict())
            directories.append(directory)
        if len(directories) > self.config.teachers.num_teachers:
            directories = self._select_teachers(directories)
        if self.config.finetune.finetune_epochs:
            seeds = {spec.name: spec.seed for spec in specs}
            for task in self.teacher_tasks:
                for directory in directories:
                    name = os.path.basename(directory)
                    self._finetune(directory, task, self._finetuned_dir(directory, task), f"teacher {name}", seeds[name])
        return directories

    def _select_teachers(self, candidates: list[str]) -> list[str]:
        """Keeps the best `num_teachers` candidates by mean dev score (each selection task's first
        metric); every candidate's scores and the choice go to `teachers/selection.json`."""
        path = os.path.join(self.paths.teacher_dir, SELECTION_FILE)
        saved = read_json(path) if os.path.isfile(path) else None
        if saved and saved["candidates"].keys() == {os.path.basename(c) for c in candidates}:
            chosen = saved["chosen"]
        else:
            dev = {name: self.dev_data[name] for name in self.selection_tasks}
            scores = {}
            for directory in candidates:
                results = evaluation.evaluate(model_dir_lib.load(directory), dev, self.config.runtime.eval_batch_size)
                per_task = {task: next(iter(metrics.values())) for task, metrics in results.items()}
                scores[os.path.basename(directory)] = {"scores": per_task, "mean": float(np.mean(list(per_task.values())))}
            ranked = sorted(scores, key=lambda name: -scores[name]["mean"])
            chosen = sorted(ranked[: self.config.teachers.num_teachers], key=lambda name: int(name.split("_")[1]))
            write_json(path, {"selection_tasks": self.selection_tasks, "candidates": scores, "chosen": chosen})
            logger.info("teacher selection on %s: kept %s of %s", ", ".join(self.selection_tasks), ", ".join(chosen),
                        ", ".join(f"{name} {100 * scores[name]['mean']:.1f}" for name in ranked))
        return [os.path.join(self.paths.teacher_dir, name) for name in chosen]

    def _finetune(self, source: str, task: str, directory: str, label: str, model_seed: int) -> str:
        """Fine-tunes the multi-task model in `source` (trained with `model_seed`) on `task` into
        `directory` (skipped if done), with a seed of its own (`finetune_seed`)."""
        if not self._done("finetune", directory):
            settings = self.config.finetune
            actual = self.config.replace(seed=finetune_seed(model_seed, task), epochs=settings.finetune_epochs,
                                         learning_rate=settings.finetune_learning_rate or self.config.training.learning_rate)
            logger.info("fine-tuning %s on %s (seed %d) -> %s", label, task, actual.training.seed, directory)
            finetune(source, task, self.train_data[task], actual.training, directory, self.callbacks, self.clock,
                     actual.to_dict(), self.config.model.pad_to_multiple_of)
        return directory

    @_stage
    def soft_labels(self) -> str:
        """Writes the ensemble's soft labels of every task with a teacher (skipped if valid)."""
        directory = self.paths.soft_labels_dir
        self._announce("soft_labels", f"averaging the teachers' predictions on {', '.join(self.teacher_tasks)} -> {directory}")
        if not self._done("soft_labels", directory):
            runtime = self.config.runtime
            ensemble.make_soft_labels(self.teacher_dirs_by_task(), self.soft_label_data(), self.config.distillation.temperature,
                                      directory, runtime.eval_batch_size, self.config.training.checkpoint_every_steps,
                                      distribute.inference_policy(self.config.distillation.soft_labels_precision))
        return directory

    @_stage
    def gate(self) -> dict:
        """The paper's claims need an ensemble better than one model: the selected ensemble against
        baseline run 0 on dev (each teacher task's first metric, x100, averaged) must exceed
        `gate_margin`. Written to gate.json; a closed gate stops the pipeline (`run`)."""
        path = os.path.join(self.paths.root, GATE_FILE)
        margin = self.config.teachers.gate_margin
        by_task = self.teacher_dirs_by_task()
        saved = read_json(path) if os.path.isfile(path) else None
        if saved and saved["margin"] == margin and saved["members"] == by_task:
            return saved
        self._announce("gate", f"the ensemble against the baseline on dev (margin {margin} points)")
        batch, dev = self.config.runtime.eval_batch_size, self.dev_data
        baseline = model_dir_lib.load(self.run_dir(self.paths.baseline_dir, 0))
        scores = {}
        for task, directories in by_task.items():
            split = {task: dev[task]}
            _, averaged = ensemble.member_outputs([model_dir_lib.load(d) for d in directories], split, batch)
            first = lambda outputs: 100 * next(iter(evaluation.score_outputs(split, outputs)[task].values()))  # noqa: E731
            scores[task] = {"ensemble": first(averaged), "baseline": first(evaluation.dev_outputs(baseline, split, batch))}
        gain = float(np.mean([entry["ensemble"] - entry["baseline"] for entry in scores.values()]))
        opened = gain > margin
        result = {"margin": margin, "gain": gain, "open": opened, "scores": scores, "members": by_task,
                  "verdict": "testable" if opened else "untestable: the ensemble does not beat one MT-DNN by the "
                  f"pre-set margin on dev (gain {gain:+.2f} <= {margin} points)"}
        write_json(path, result)
        logger.info("gate: ensemble - baseline on dev %+.2f points (margin %s): %s", gain, margin, result["verdict"])
        return result

    def _untestable(self, gate: dict) -> dict:
        """report.json / report.md of a pipeline stopped by a closed gate."""
        lines = [f"| {task} | {s['ensemble']:.2f} | {s['baseline']:.2f} | {s['ensemble'] - s['baseline']:+.2f} |"
                 for task, s in gate["scores"].items()]
        text = ("The paper's claims are untestable here: " + gate["verdict"] + ".\n\n| task (dev, first metric x100) "
                "| ensemble | baseline | gain |\n|---|---|---|---|\n" + "\n".join(lines)
                + "\n\nNo student was trained; change the teachers (a new pre-registration) and run again.")
        report = {"gate": gate, "claims": [], "verdict": "untestable", "config": self.config.to_dict(),
                  "environment": environment(self.precision)}
        write_json(os.path.join(self.paths.root, "report.json"), report)
        write_atomic(os.path.join(self.paths.root, "report.md"), text + "\n")
        print(text)
        return report

    def _student_encoder(self, seed: int) -> Encoder:
        """The encoder of the student and of the baseline."""
        model = self.config.model
        return self.encoder(self.config.distillation.student_encoder or model.encoder, model.encoder_dropout, seed)

    def run_dir(self, directory: str, run: int) -> str:
        """Seed run `run` (0-based) of the student or baseline in `directory`: itself, then `<dir>_s2`, ..."""
        return directory if run == 0 else f"{os.path.normpath(directory)}_s{run + 1}"

    def seeded_dirs(self) -> dict[tuple[str, int], str]:
        """`{("student" | "baseline", run): directory}` for every seed run (`seeds`)."""
        distillation = self.config.distillation
        names = {"student": self.paths.student_dir, **({"baseline": self.paths.baseline_dir}
                                                       if distillation.train_baseline else {})}
        return {(name, run): self.run_dir(directory, run) for run in range(distillation.seeds)
                for name, directory in names.items()}

    def variant_dirs(self) -> dict[str, str]:
        """The students beyond the paper by report row: `student_anneal`, `student_r1`, ..."""
        distillation, student = self.config.distillation, os.path.normpath(self.paths.student_dir)
        rows = {"student_anneal": f"{student}_anneal"} if distillation.compare_anneal else {}
        rows.update({f"student_r{n}": f"{student}_r{n}" for n in range(1, distillation.self_distill_rounds + 1)})
        return rows

    def model_dirs(self) -> dict[str, str]:
        """The student-side models by report row: `student`, `baseline`, their seed runs
        (`student_s2`, ...), then the variants."""
        return {**{run_row(name, run): d for (name, run), d in self.seeded_dirs().items()}, **self.variant_dirs()}

    def _train_student(self, directory: str, run: int = 0, distillation=None, soft_labels_dir: str | None = None,
                       teacher_dirs: Sequence[str] | None = None) -> MTDNN:
        """Trains one student (seed `training.seed + run`) into `directory`, or loads it if done."""
        if self._done("student", directory):
            return model_dir_lib.load(directory)
        seed = self.config.training.seed + run
        config = dataclasses.replace(self.config.replace(seed=seed), distillation=distillation or self.config.distillation)
        student = train_student(
            self.tasks, self.train_data, self._student_encoder(seed), config.training, config.distillation, directory,
            self.config.model.max_seq_length, self.config.teachers.teacher_tasks,
            soft_labels_dir or self._readable("soft_labels_dir"), self.teacher_dirs() if teacher_dirs is None else teacher_dirs,
            self.unlabelled_data, self.callbacks, self.clock, config.to_dict(), self.config.model.pad_to_multiple_of,
        )
        return in_precision(student, "float32")  # as mt.load_model gives it, whatever it trained in

    @_stage
    def student(self, run: int = 0) -> MTDNN:
        """Distils the teachers into one student MT-DNN (loaded instead if already trained);
        `run` > 0: the same with seed `seed + run`, in `<student_dir>_s<run + 1>`."""
        directory = self.run_dir(self.paths.student_dir, run)
        distillation = self.config.distillation
        source = "online teachers" if distillation.online_teachers else "cached soft labels"
        self._announce("student", f"distilling ({source}, alpha {distillation.alpha}, T {distillation.temperature}, "
                       f"seed {self.config.training.seed + run}) -> {directory}")
        return self._train_student(directory, run)

    @_stage
    def baseline(self, run: int = 0) -> MTDNN:
        """The plain MT-DNN with the student's settings (loaded instead if already trained);
        `run` as for `student`."""
        directory = self.run_dir(self.paths.baseline_dir, run)
        seed = self.config.training.seed + run
        self._announce("baseline", f"training the MT-DNN baseline (seed {seed}) -> {directory}")
        if self._done("baseline", directory):
            return model_dir_lib.load(directory)
        config = self.config.replace(seed=seed)
        baseline = train_mtdnn(self.tasks, self.train_data, self._student_encoder(seed), config.training, directory,
                               self.config.model.max_seq_length, self.callbacks, self.config.model.pad_to_multiple_of,
                               label="baseline", clock=self.clock, experiment_config=config.to_dict())
        return in_precision(baseline, "float32")

    @_stage
    def variants(self) -> dict[str, str]:
        """Beyond the paper, on the same teachers: a student with teacher annealing
        (`compare_anneal`) and self-distillation rounds (`self_distill_rounds`: round r's student
        learns from round r-1's alone, through its own soft labels in `soft_labels_r<r>/`)."""
        distillation, rows = self.config.distillation, self.variant_dirs()
        self._announce("variants", ", ".join(f"{row} -> {d}" for row, d in rows.items()))
        if "student_anneal" in rows:
            annealed = dataclasses.replace(distillation, alpha_schedule="anneal", compare_anneal=False)
            self._train_student(rows["student_anneal"], distillation=annealed)
        teacher = self.paths.student_dir
        for number in range(1, distillation.self_distill_rounds + 1):
            labels = os.path.join(self.paths.root, f"soft_labels_r{number}")
            if not self._done("soft_labels", labels):
                logger.info("self-distillation round %d: soft labels of %s -> %s", number, teacher, labels)
                ensemble.make_soft_labels({task: [teacher] for task in self.teacher_tasks}, self.soft_label_data(),
                                          distillation.temperature, labels, self.config.runtime.eval_batch_size,
                                          self.config.training.checkpoint_every_steps,
                                          distribute.inference_policy(distillation.soft_labels_precision))
            self._train_student(rows[f"student_r{number}"], soft_labels_dir=labels, teacher_dirs=[teacher])
            teacher = rows[f"student_r{number}"]
        return rows

    @property
    def finetune_tasks(self) -> list[str]:
        return list(self.config.finetune.finetune_tasks) or list(self.train_data)

    def finetuned_dirs(self, directory: str) -> dict[str, str]:
        """`{task: directory}` of `directory`'s per-task fine-tuned copies (student, baseline)."""
        return {task: os.path.join(f"{os.path.normpath(directory)}-finetuned", task) for task in self.finetune_tasks}

    @_stage
    def finetune(self) -> dict[str, dict[str, str]]:
        """MT-DNN's second stage for the student and the baseline: a copy of each fine-tuned on
        each `finetune_tasks` task (`<dir>-finetuned/<task>`); the multi-task student stays the
        model that export serves."""
        models = {run_row(name, run): d for (name, run), d in self.seeded_dirs().items() if model_dir_lib.exists(d)}
        self._announce("finetune", f"{', '.join(models)} on {', '.join(self.finetune_tasks)} "
                       f"({self.config.finetune.finetune_epochs} epoch(s) each)")
        seeds = {run_row(name, run): self.config.training.seed + run for (name, run) in self.seeded_dirs()}
        return {row: {task: self._finetune(directory, task, target, row, seeds[row])
                      for task, target in self.finetuned_dirs(directory).items()}
                for row, directory in models.items()}

    @_stage
    def evaluate(self) -> dict[str, dict]:
        """Every member, the ensemble, the baseline and the student (and, with fine-tuning,
        `baseline_ft` / `student_ft`: each task scored by the copy fine-tuned on it) on dev and on
        the held-out split: `{row: dev results}`. With fine-tuned teachers, a task's member and
        ensemble outputs are those of the members fine-tuned on it. The report's evidence (every
        row's per-example predictions, the histories, the soft targets' statistics) goes to the
        experiment directory, so the report can be rebuilt without the models."""
        self._announce("evaluate", "every member, the ensemble, the baseline and the student on dev"
                       + (" and the held-out split" if self.heldout_data else ""))
        heldout = self.heldout_data
        splits = {task: {**by_split, **heldout.get(task, {})} for task, by_split in self.dev_data.items()}
        outputs = self._outputs(splits)
        dev = self.dev_data
        rows = {name: evaluation.score_outputs({task: dev[task] for task in dev if any(key[0] == task for key in found)},
                                               {key: value for key, value in found.items() if key[1] != HELDOUT})
                for name, found in outputs.items()}
        directories = {os.path.basename(os.path.normpath(d)): d for d in self.teacher_dirs()}
        directories.update({name: d for name, d in self.model_dirs().items() if name in outputs})
        for name, directory in directories.items():
            write_json(os.path.join(directory, "eval_results.json"), rows[name])
        self._evidence(splits, outputs).save(self.paths.root)
        return rows

    def _outputs(self, splits: dict[str, dict[str, SplitData]]) -> dict[str, dict[tuple[str, str], np.ndarray]]:
        """`{row: {(task, split): head outputs}}` of every model of the report on `splits`."""
        batch = self.config.runtime.eval_batch_size
        outputs: dict[str, dict] = {}
        member_dirs = self.teacher_dirs()
        by_members: dict[tuple, list[str]] = {}  # tasks that share one set of members
        for task, dirs in self.teacher_dirs_by_task(list(splits)).items():
            by_members.setdefault(tuple(dirs), []).append(task)
        for dirs, tasks in by_members.items() if member_dirs else ():
            members = [model_dir_lib.load(directory) for directory in dirs]
            each, averaged = ensemble.member_outputs(members, {task: splits[task] for task in tasks}, batch)
            for directory, found in zip(member_dirs, each):
                outputs.setdefault(os.path.basename(os.path.normpath(directory)), {}).update(found)
            outputs.setdefault("ensemble", {}).update(averaged)
        shown = sorted(self.model_dirs().items(), key=lambda item: not item[0].startswith("baseline"))  # baselines first
        for name, directory in shown:
            if model_dir_lib.exists(directory):
                outputs[name] = evaluation.dev_outputs(model_dir_lib.load(directory), splits, batch)
        for (name, run), directory in sorted(self.seeded_dirs().items(), key=lambda item: (item[0][0] != "baseline", item[0][1])):
            copies = {task: path for task, path in self.finetuned_dirs(directory).items() if model_dir_lib.exists(path)}
            for task, path in copies.items():
                found = evaluation.dev_outputs(model_dir_lib.load(path), {task: splits[task]}, batch)
                outputs.setdefault(run_row(f"{name}_ft", run), {}).update(found)
        return outputs

    def _evidence(self, splits: dict[str, dict[str, SplitData]], outputs: dict[str, dict]) -> Evidence:
        """What the report is built from (`report.Evidence`), with nothing that needs a model."""
        labelled = dict(evaluation.labelled_splits(splits))
        predictions = {(row, *key): evaluation.decide(labelled[key].task, values, labelled[key].groups)
                       for row, found in outputs.items() for key, values in found.items()}
        tasks = {}
        for (task, split), data in labelled.items():
            entry = tasks.setdefault(task, {"type": data.task.type, "metrics": list(data.task.metrics), "suffixes": {}})
            entry["suffixes"][split] = "" if split == HELDOUT else evaluation.split_suffix(data.task, split)
        histories = {}
        for row, directory in self.model_dirs().items():
            path = os.path.join(directory, "history.json")
            if os.path.isfile(path):
                histories[row] = read_json(path)
        selection = os.path.join(self._readable("teacher_dir"), SELECTION_FILE)
        gate = os.path.join(self.paths.root, GATE_FILE)
        config = self.config
        return Evidence(
            rows=list(outputs), tasks=tasks, predictions=predictions,
            labels={key: np.asarray(data.labels) for key, data in labelled.items()},
            groups={key: np.asarray(data.groups) for key, data in labelled.items() if data.task.type == RANKING},
            teacher_tasks=list(self.teacher_tasks) if config.teachers.teacher_tasks else None,
            histories=histories, selection=read_json(selection) if os.path.isfile(selection) else None,
            gate=read_json(gate) if os.path.isfile(gate) else None,
            soft_targets=self._soft_target_statistics(), warmup_fraction=config.training.warmup_fraction,
            heldout={task: {"from": "train", "examples": len(by_split[HELDOUT]), "ids_sha256": ids_digest(by_split[HELDOUT]),
                            "rule": "the examples (ranking: questions) whose blake2b('heldout\\0' + id) sort first"}
                     for task, by_split in self.heldout_data.items()},
            config=config.to_dict(), environment=environment(self.precision), seed=config.training.seed)

    def _soft_target_statistics(self) -> dict[str, dict]:
        """Per distilled classification task: the soft targets on the labelled training examples
        against gold (mean probability of gold, agreement, entropy)."""
        directory = self._readable("soft_labels_dir")
        found = {}
        for name in self.teacher_tasks:
            data = self.train_data[name]
            path = soft_labels.path_for(directory, name)
            if data.task.type != CLASSIFICATION or not os.path.isfile(path):
                continue
            targets = soft_labels.align(soft_labels.read(path), data.task, data, self.config.distillation.temperature)
            found[name] = soft_labels.statistics(targets, data.labels)
        return found

    def report(self, rows: dict[str, dict] | None = None) -> dict:
        """Writes report.json (with the full config), report.md and the plots from the evidence
        the evaluate stage saved (evaluating first if `rows` is None); returns the report."""
        if rows is None:
            self.evaluate()
        self._announce("report", f"{os.path.join(self.paths.root, 'report.md')}")
        report, table = write_report(self.paths.root, Evidence.load(self.paths.root))
        print(table)
        return report

    def run(self) -> dict:
        """The whole pipeline: every stage in order, each skipped when already done; returns the report."""
        self.validate()
        started = time.time()
        finetune = self.config.finetune.finetune_epochs and self.config.finetune.finetune_student
        gated = self.config.teachers.gate_margin is not None
        seeded = [functools.partial(getattr(self, name), run) for (name, run) in self.seeded_dirs()
                  if not (gated and (name, run) == ("baseline", 0))]
        stages = ([self.teachers] + ([functools.partial(self.baseline, 0), self.gate] if gated else [])
                  + [self.soft_labels] + seeded + ([self.variants] if self.variant_dirs() else [])
                  + ([self.finetune] if finetune else []) + [self.evaluate])
        self._plan()
        rows = None
        for number, stage in enumerate(stages, start=1):
            self._position = (number, len(stages) + 1)
            result = stage()
            if stage == self.gate and not result["open"]:
                self._position = None
                return self._untestable(result)
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
        extra = {name: data for name, data in self.unlabelled_data.items() if name in self.teacher_tasks}
        for row, directory in self.model_dirs().items():
            if not model_dir_lib.exists(directory):
                self.clock.plan(self._steps(config.training.epochs, None if row.startswith("baseline") else extra))
        epochs, batch = config.finetune.finetune_epochs, config.training.batch_size
        if epochs:
            one = lambda task: epochs * batching.num_batches(len(self.train_data[task]), batch)  # noqa: E731
            if not config.teachers.teacher_dirs:
                self.clock.plan(config.teachers.num_teachers * sum(one(task) for task in self.teacher_tasks))
            if config.finetune.finetune_student:
                self.clock.plan(len(self.seeded_dirs()) * sum(one(task) for task in self.finetune_tasks))

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
