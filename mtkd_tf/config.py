"""`ExperimentConfig`: every setting of an experiment, typed, defaulted, documented and checked once.

One dataclass per concern (data, model, training, teachers, distillation, runtime, export),
as Hugging Face `TrainingArguments` and TextBrewer's configs do. `bin/run`'s flags are
generated from these fields, one flag per field with the field's name, so a flagfile and a
Python user describe a run the same way:

>>> config = ExperimentConfig.from_flagfile("configs/tiny.cfg", epochs=2, model_dir="runs/a")
>>> config.training.epochs, ExperimentConfig.from_dict(config.to_dict()) == config
(2, True)
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Sequence

# Choices owned (and checked for direct callers) by the modules that use them:
from mtkd_tf.data.batching import SAMPLING
from mtkd_tf.distill.checks import ALPHA_SCHEDULES, check_alpha, check_choice, check_temperature
from mtkd_tf.errors import ConfigError
from mtkd_tf.models.losses import SOFT_LOSSES
from mtkd_tf.training.distribute import INFERENCE_PRECISIONS, PRECISIONS, STRATEGIES

MODES = (
    "train",
    "evaluate",
    "predict",
    "train_teachers",
    "soft_labels",
    "distill",
    "pipeline",
    "report",
    "export",
    "serve_check",
    "export_preset",
    "export_transformers",
)
OPTIMIZERS = ("adamax", "adamax_fused", "adamw", "adam")
TEACHER_CHECKS = ("off", "warn", "skip")


def setting(
    default: Any,
    help: str,
    *,
    choices: tuple | None = None,
    lower: float | None = None,
    upper: float | None = None,
    factory: bool = False,
) -> Any:
    """A config field with its documentation and bounds (what the generated flag checks too)."""
    metadata = {"help": help, "choices": choices, "lower": lower, "upper": upper}
    if factory:
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


class _Group:
    """Shared behaviour of the config groups: bounds and choices checked from field metadata."""

    def validate(self) -> None:
        """Checks every field against its choices and bounds; raises ConfigError naming it."""
        for field in dataclasses.fields(self):
            value, meta = getattr(self, field.name), field.metadata
            if value is None or isinstance(value, (list, dict, bool)):
                continue
            if meta.get("choices"):
                check_choice(field.name, value, meta["choices"])
            if meta.get("lower") is not None and value < meta["lower"]:
                raise ConfigError(f"{field.name} must be >= {meta['lower']}, got {value}", field.name)
            if meta.get("upper") is not None and value > meta["upper"]:
                raise ConfigError(f"{field.name} must be <= {meta['upper']}, got {value}", field.name)


@dataclasses.dataclass
class DataConfig(_Group):
    """Which tasks, and where their examples come from."""

    tasks: list[str] = setting(
        ["sst2", "rte", "stsb"], "Task names (GLUE, built-in suites or task_file).", factory=True
    )
    task_file: str | None = setting(None, "YAML/JSON file defining custom tasks.")
    answer_module: list[str] = setting(
        [],
        "Pair-classification head: san or linear for all, or task=san|linear items "
        "(default: SAN for mnli, rte, wnli, qqp, mrpc as in the paper).",
        factory=True,
    )
    data_source: str = setting(
        "tsv",
        "tsv: files in the GLUE directory layout (or a task file's); tfds: tensorflow_datasets; "
        "hf: Hugging Face datasets, <data_dir>/<task> on disk or the task's hub dataset from "
        "the local cache (pip install mtkd_tf[hf]).",
        choices=("tsv", "tfds", "hf"),
    )
    data_dir: str | None = setting(
        None, "Directory of the TSV data, the TFDS data_dir, or the directory of one Hugging Face dataset per task."
    )
    suite: str | None = setting(
        None,
        "A built-in offline suite (moviesuite: real data from PyPI packages; "
        "glue_sample: synthetic GLUE) to use as data_dir.",
    )
    suite_size: int = setting(400, "Training examples per task of a generated suite.", lower=8)
    tfds_download: bool = setting(False, "Let tfds.load download missing datasets (off: fail fast offline).")
    skip_bad_rows: bool = setting(False, "Skip malformed data rows with a warning instead of failing.")
    max_train_examples: int = setting(0, "Use at most this many training examples per task (0: all).", lower=0)
    max_eval_examples: int = setting(0, "Use at most this many examples per dev/test split (0: all).", lower=0)
    labelled_fraction: float = setting(
        1.0,
        "Teacher tasks keep this fraction of their training examples labelled "
        "(chosen by a hash of their ids, after the held-out split and max_train_examples); "
        "the rest lose their labels and join as unlabelled text: teachers and the baseline "
        "train on the labelled part, the student also learns the rest's soft labels "
        "(1: all labelled).",
        lower=0.001,
        upper=1.0,
    )
    heldout_examples: int = setting(
        0,
        "Set this many training examples per task aside (chosen by a hash of their ids, "
        "before max_train_examples) as the labelled held-out split on which the report "
        "tests the paper's claims; dev stays the split of every choice (0: none, claims "
        "on dev).",
        lower=0,
    )


@dataclasses.dataclass
class ModelConfig(_Group):
    """The shared encoder and the input length."""

    encoder: str = setting(
        "tiny", "Encoder: keras-hub preset, local directory, alias (tiny, minilm_l6) or random:layers=..,hidden=.."
    )
    vocab_file: str | None = setting(None, "vocab.txt for a random encoder (default: learned from the training text).")
    vocab_size: int = setting(2000, "Size of a learned vocabulary for random encoders.", lower=100)
    encoder_dropout: float | None = setting(None, "Override the shared layers' dropout.", lower=0.0, upper=0.99)
    max_seq_length: int = setting(128, "Tokens per example after packing (pairs truncated round-robin).", lower=8)
    pad_to_multiple_of: int = setting(
        8, "Pad each batch to its longest example rounded up to this (0: always to max_seq_length).", lower=0
    )


@dataclasses.dataclass
class TrainingConfig(_Group):
    """Hyper-parameters of one training run (paper defaults: Adamax, 5e-5, batch 32, 5 epochs)."""

    batch_size: int = setting(32, "Global batch size.", lower=1)
    epochs: int = setting(5, "Training epochs.", lower=1)
    learning_rate: float = setting(5e-5, "Peak learning rate.", lower=0.0)
    optimizer: str = setting(
        "adamax",
        "Optimizer (paper: adamax; adamax_fused: the same update in TensorFlow's fused "
        "ApplyAdaMax kernel, rounded differently in the last bits).",
        choices=OPTIMIZERS,
    )
    warmup_fraction: float = setting(0.1, "Fraction of steps of linear warm-up.", lower=0.0, upper=0.99)
    clipnorm: float = setting(1.0, "Global gradient-norm clip (0: off).", lower=0.0)
    weight_decay: float = setting(
        0.01,
        "Decoupled weight decay, w -= lr * weight_decay * w every step, on every "
        "weight (adamax, adamax_fused, adamw; the reference MT-DNN's Adamax does this).",
        lower=0.0,
    )
    task_sampling: str = setting("proportional", "How batches of tasks are mixed.", choices=SAMPLING)
    sampling_temperature: float = setting(1.0, "tau of temperature sampling, p ~ |D|^tau.", lower=0.0)
    seed: int = setting(0, "Random seed.")
    length_bucketing: bool = setting(
        True, "Batch training examples of similar length together (less padding, faster epochs)."
    )
    checkpoint_every_steps: int = setting(
        500,
        "Checkpoint the training state every N steps and at epoch ends "
        "(0: epoch ends only); re-running the same command resumes from the latest one.",
        lower=0,
    )
    keep_checkpoints: int = setting(
        2,
        "Verified checkpoints kept per training run (the newest); an older one is deleted "
        "only after a newer one is written and verified, and resume falls back to it if "
        "the newest is damaged.",
        lower=1,
    )
    jit_compile: bool = setting(
        False, "Compile train steps with XLA (implies static shapes: full batches, fixed sequence length)."
    )
    verbose: int = setting(
        -1,
        "Keras progress output: -1 auto (a bar in a terminal; in a log, a line about every "
        "minute), 0 silent, 1 bar, 2 a line per epoch.",
        lower=-1,
        upper=2,
    )
    progress_seconds: float = setting(
        60.0,
        "In a log (not a terminal): seconds between progress lines (step, examples/s, loss, time left); 0: off.",
        lower=0.0,
    )
    select_best_on_dev: bool = setting(
        True,
        "Score every model on dev after each epoch (each selection task's first metric, averaged) and keep "
        "the best epoch's weights (ties: the earlier); --epochs is then the maximum. Teachers, fine-tuned "
        "copies, the student and the baseline all follow this one rule.",
    )
    early_stopping_patience: int = setting(
        0,
        "With select_best_on_dev: stop after this many epochs without improvement on dev (0: train every epoch).",
        lower=0,
    )
    selection_examples: int = setting(
        1000,
        "With select_best_on_dev: dev examples per task (ranking: questions) that select the epoch, a fixed "
        "subset chosen by a hash of their ids when dev is larger (0: all of dev); never more than a quarter "
        "of the task's training examples, so each epoch's dev pass stays a small share of it. The teacher check "
        "scores members on this subset without that cap.",
        lower=0,
    )
    selection_tasks: list[str] = setting(
        [],
        "With select_best_on_dev: the tasks whose dev scores select the epoch (default: every task the model "
        "trains on that has labelled dev data).",
        factory=True,
    )

    def validate(self) -> None:
        super().validate()
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be positive, got {self.learning_rate}", "learning_rate")


@dataclasses.dataclass
class TeacherConfig(_Group):
    """The teacher ensemble: K MT-DNNs that differ in seed, dropout and encoder."""

    num_teachers: int = setting(3, "Members of the teacher ensemble (K).", lower=1)
    teacher_pool: int = setting(
        0,
        "Candidates to train and choose the K members from by dev score (0: K, no selection; paper: 6 -> 3).",
        lower=0,
    )
    teacher_selection_tasks: list[str] = setting(
        [],
        "Tasks whose dev scores (first metric, averaged) rank the pool (default: the teacher tasks; paper: mnli,rte).",
        factory=True,
    )
    teacher_dropouts: list[float] = setting(
        [0.1, 0.2, 0.3], "Shared-layer dropout of member k: item k mod len.", factory=True
    )
    teacher_encoders: list[str] = setting([], "Encoder of member k: item k mod len (default: encoder).", factory=True)
    teacher_tasks: list[str] = setting(
        [], "Tasks that get teachers (default: every trained task; paper: mnli,qqp,rte,qnli).", factory=True
    )
    teacher_epochs: int | None = setting(None, "Epochs for teachers (default: epochs).", lower=1)
    teacher_dir: str | None = setting(None, "Where members are trained (default: <model_dir>/teachers).")
    teacher_dirs: list[str] = setting(
        [], "Explicit teacher model dirs (e.g. earlier students, for self-distillation).", factory=True
    )
    teacher_check: str = setting(
        "skip",
        "Before its soft labels are made, check each teacher task (docs/protocol.md): members that did not "
        "converge are left out of its ensemble; a task whose ensemble or soft targets fail is, under skip, "
        "trained on hard labels only (alpha 0), under warn warned about and distilled, under off not checked.",
        choices=TEACHER_CHECKS,
    )
    soft_labels_file: dict[str, str] = dataclasses.field(
        default_factory=dict,
        metadata={
            "help": "task:PATH items: a task's soft targets from a file (JSON Lines or CSV of id or text, and "
            "probabilities per label or a score; README), e.g. labels from a large model served elsewhere; "
            "such a task needs no teachers."
        },
    )
    gate_margin: float | None = setting(
        None,
        "Pipeline gate (points x100): after the teachers and baseline run 0, the "
        "selected ensemble must beat that baseline on dev by more than this (each teacher "
        "task's first metric, averaged), or the pipeline stops and the report says the "
        "paper's claims are untestable (default: no gate).",
    )

    def validate(self) -> None:
        super().validate()
        for dropout in self.teacher_dropouts:
            if not 0 <= dropout <= 0.99:  # each member's encoder_dropout (whose bound this is)
                raise ConfigError(
                    f"teacher_dropouts: a teacher dropout must be in [0, 0.99], got {dropout}", "teacher_dropouts"
                )
        if not self.teacher_dropouts:
            raise ConfigError("teacher_dropouts must list at least one value", "teacher_dropouts")
        if self.teacher_pool and self.teacher_pool < self.num_teachers:
            raise ConfigError(
                f"teacher_pool {self.teacher_pool} is smaller than num_teachers {self.num_teachers}: "
                "the pool must hold at least the members kept",
                ("teacher_pool", "num_teachers"),
            )


@dataclasses.dataclass
class FinetuneConfig(_Group):
    """MT-DNN's second stage: fine-tuning trained multi-task models on each task alone."""

    finetune_epochs: int = setting(
        0,
        "Epochs of per-task fine-tuning after multi-task training (0: none). Teachers: "
        "each member is fine-tuned on each teacher task, one ensemble per task.",
        lower=0,
    )
    finetune_learning_rate: float | None = setting(
        None, "Fine-tuning's peak learning rate (default: learning_rate).", lower=0.0
    )
    finetune_student: bool = setting(
        True,
        "With finetune_epochs: also fine-tune the student and the baseline and "
        "report both forms (the multi-task student stays the exported model).",
    )
    finetune_tasks: list[str] = setting(
        [], "Tasks the student and baseline are fine-tuned on (default: every trained task).", factory=True
    )


@dataclasses.dataclass
class DistillationConfig(_Group):
    """How the student mixes hard and soft losses (paper: alpha 0.5, T 1, cross-entropy)."""

    alpha: float = setting(0.5, "Weight of the soft loss for tasks with a teacher: (1 - a) hard + a soft.")
    task_alpha: dict[str, float] = dataclasses.field(
        default_factory=dict, metadata={"help": "Per-task alpha overrides, task:alpha items."}
    )
    alpha_schedule: str = setting(
        "constant",
        "constant: alpha throughout (paper); anneal: the soft weight goes "
        "linearly from 1 at the first step to 0 at the last, so the student ends on the gold "
        "labels (teacher annealing, Clark et al. 2019; overrides alpha and task_alpha).",
        choices=ALPHA_SCHEDULES,
    )
    temperature: float = setting(1.0, "Distillation temperature T (paper: 1).")
    soft_loss: str = setting(
        "ce", "Soft loss: cross-entropy (paper), KL, or MSE on log-probabilities.", choices=SOFT_LOSSES
    )
    online_teachers: bool = setting(False, "Run frozen teachers inside the train step instead of cached soft labels.")
    hidden_loss_weight: float = setting(0.0, "Weight of the [CLS] hidden-state loss (online teachers).", lower=0.0)
    student_encoder: str | None = setting(None, "Student encoder (default: encoder), e.g. a smaller size spec.")
    soft_labels_precision: str = setting(
        "auto",
        "Teachers' encoder precision when writing soft labels (auto: bfloat16 on "
        "GPUs and on CPUs with AVX512-BF16/AMX; evaluation stays float32).",
        choices=INFERENCE_PRECISIONS,
    )
    soft_labels_dir: str | None = setting(None, "Soft-label files (default: <model_dir>/soft_labels).")
    student_dir: str | None = setting(None, "The distilled student (default: <model_dir>/student).")
    train_baseline: bool = setting(True, "Pipeline: also train the plain MT-DNN baseline with the same settings.")
    seeds: int = setting(
        1,
        "Train the student and the baseline this many times, with seeds seed, seed+1, ... (teachers "
        "are trained once); the report gives mean +/- sd and the interval of the mean difference.",
        lower=1,
    )
    primary_claims: list[str] = setting(
        [],
        "The report's primary claims by key (student_vs_baseline, ensemble_vs_baseline, kept_share, "
        "gain_carries, ...: claim_keys.CLAIMS), on every task: Holm runs over them and, separately, over the "
        "other (secondary) claims. Fixed when the pipeline starts (<model_dir>/claims_family.json): a resumed "
        "run or --mode=report asking for another family is refused (default: one family of every tested claim).",
        factory=True,
    )
    bootstrap_resamples: int = setting(
        100_000,
        "Bootstrap resamples of the report's intervals and p-values, recorded in report_inputs.json "
        "(--mode=report uses the run's own; evidence without it used 1000): 100,000 leave p fixed to 0.01 "
        "and the bounds to about 0.1 point (the report's footer gives the Monte Carlo error).",
        lower=100,
    )
    compare_anneal: bool = setting(
        False,
        "Also train a student with alpha_schedule=anneal (<student_dir>_anneal) on the "
        "same soft labels and report it beside the student.",
    )
    self_distill_rounds: int = setting(
        0,
        "Self-distillation (born-again) rounds after the student: round r's student "
        "(<student_dir>_r<r>) learns from the soft labels of round r-1's student alone "
        "(round 0: the distilled student), with the same settings; each is a report row.",
        lower=0,
    )

    def validate(self) -> None:
        super().validate()
        if self.primary_claims:
            from mtkd_tf.experiment.claim_keys import check_claim_keys  # the report's claims, by key

            check_claim_keys(self.primary_claims)
        check_alpha(self.alpha, self.task_alpha)  # the soft loss term checks them too (distill/checks.py)
        check_temperature(self.temperature)
        if self.compare_anneal and self.alpha_schedule == "anneal":
            raise ConfigError(
                "compare_anneal trains an annealed student beside the constant-alpha one, but "
                "alpha_schedule is already anneal",
                ("compare_anneal", "alpha_schedule"),
            )
        if self.hidden_loss_weight and not self.online_teachers:
            raise ConfigError(
                "hidden_loss_weight needs online_teachers (the hidden-state loss compares live [CLS] vectors)",
                ("hidden_loss_weight", "online_teachers"),
            )


@dataclasses.dataclass
class RuntimeConfig(_Group):
    """Where outputs go and how the process runs: strategy, precision, determinism."""

    mode: str = setting(
        "train",
        "What bin/run does: one stage, or the whole pipeline (Experiment.run() always runs the pipeline).",
        choices=MODES,
    )
    model_dir: str | None = setting(None, "Where models, checkpoints, logs and results go (the experiment root).")
    output_dir: str | None = setting(None, "Where predict writes submission files (default: <model_dir>/predictions).")
    eval_batch_size: int = setting(128, "Batch size for evaluation and inference.", lower=1)
    strategy: str = setting(
        "auto",
        "tf.distribute strategy (auto: TPU if configured, mirrored over >1 GPU, else default); "
        "multi_worker reads TF_CONFIG.",
        choices=STRATEGIES,
    )
    tpu: str | None = setting(None, "TPU address for strategy tpu|auto (empty on Colab/Cloud TPU VMs).")
    num_gpus: int | None = setting(None, "Use at most this many GPUs.", lower=0)
    mixed_precision: str = setting(
        "float32",
        "Training precision, a Keras dtype policy (mixed_float16 adds dynamic loss "
        "scaling; heads and losses stay float32); auto: mixed_bfloat16 where bfloat16 is native "
        "and measured faster (AMX/AVX512-BF16 CPUs, GPUs of compute capability 8+), else "
        "float32. Evaluation always runs in float32.",
        choices=PRECISIONS,
    )
    deterministic: bool = setting(
        False,
        "Deterministic ops (tf.config.experimental.enable_op_determinism): with seed, "
        "re-runs give bit-identical weights and metrics.",
    )
    stop_grace_seconds: float = setting(
        25.0,
        "On SIGTERM or SIGINT a run finishes its current step (training step, "
        "soft-label chunk, evaluation of one model on one split), saves its state there "
        "and exits with status 128 + the signal (143, 130); if that takes longer than "
        "this, it exits at once, keeping the previous checkpoint (0: wait as long as the "
        "step takes). Set it below the platform's grace period.",
        lower=0.0,
    )


@dataclasses.dataclass
class ExportConfig(_Group):
    """SavedModel export for TF Serving, and a server-less check of a request."""

    export_dir: str | None = setting(
        None,
        "export: TF Serving model base path; the SavedModel goes to <export_dir>/<version>. "
        "export_preset / export_transformers: the new directory to write.",
    )
    export_version: int | None = setting(
        None, "Version directory to write (default: the next integer; never overwritten).", lower=1
    )
    serving_default_task: str | None = setting(
        None, "Task behind the serving_default signature (default: the first task)."
    )
    request_file: str | None = setting(
        None,
        "serve_check: a TF Serving REST :predict JSON body to answer with "
        "export_dir's latest version (or saved_model).",
    )
    saved_model: str | None = setting(
        None, "serve_check: the SavedModel directory (default: latest version under export_dir)."
    )
    export_task: str | None = setting(
        None,
        "export_transformers: the task whose head goes with the encoder, as "
        "...ForSequenceClassification (classification or regression, linear head); "
        "default: the encoder alone.",
    )


GROUPS = {
    "data": DataConfig,
    "model": ModelConfig,
    "training": TrainingConfig,
    "teachers": TeacherConfig,
    "finetune": FinetuneConfig,
    "distillation": DistillationConfig,
    "runtime": RuntimeConfig,
    "export": ExportConfig,
}


@dataclasses.dataclass
class ExperimentConfig:
    """Every setting of an experiment, by concern. Field names are unique across groups and
    equal the flag names of `bin/run`; `config.get("alpha")` finds one by name."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    teachers: TeacherConfig = dataclasses.field(default_factory=TeacherConfig)
    finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)
    distillation: DistillationConfig = dataclasses.field(default_factory=DistillationConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)

    def validate(self) -> "ExperimentConfig":
        """Checks every group (settings that need the tasks are checked by `Experiment`)."""
        for group in GROUPS:
            getattr(self, group).validate()
        if self.teachers.gate_margin is not None and not self.distillation.train_baseline:
            raise ConfigError(
                "gate_margin compares the ensemble with the baseline: it needs train_baseline",
                ("gate_margin", "train_baseline"),
            )
        return self

    # --- access by field name ------------------------------------------------------------
    @staticmethod
    def group_of(name: str) -> str:
        """The group that holds setting `name`."""
        for group, cls in GROUPS.items():
            if name in {field.name for field in dataclasses.fields(cls)}:
                return group
        raise ConfigError(f"unknown setting {name!r}; see ExperimentConfig or bin/run --helpfull", name)

    def get(self, name: str) -> Any:
        return getattr(getattr(self, self.group_of(name)), name)

    def replace(self, **values: Any) -> "ExperimentConfig":
        """A validated copy with settings changed by name (`config.replace(epochs=2, alpha=0.3)`)."""
        groups: dict[str, dict[str, Any]] = {}
        for name, value in values.items():
            groups.setdefault(self.group_of(name), {})[name] = value
        return dataclasses.replace(
            self, **{group: dataclasses.replace(getattr(self, group), **changed) for group, changed in groups.items()}
        ).validate()

    # --- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, dict[str, Any]]) -> "ExperimentConfig":
        """The config `to_dict` gave (unknown groups or fields are an error naming them)."""
        unknown = sorted(set(values) - set(GROUPS))
        if unknown:
            raise ConfigError(f"unknown config group(s) {', '.join(unknown)}; known: {', '.join(GROUPS)}")
        groups = {}
        for group, fields in values.items():
            names = {field.name for field in dataclasses.fields(GROUPS[group])}
            extra = sorted(set(fields) - names)
            if extra:
                raise ConfigError(f"unknown setting(s) {', '.join(extra)} in config group {group}")
            groups[group] = GROUPS[group](**fields)
        return cls(**groups)

    @classmethod
    def from_flags(cls, flag_values) -> "ExperimentConfig":
        """The config of parsed absl flags defined by `define_flags`."""
        config = cls()
        values = {}
        for group_cls in GROUPS.values():
            for field in dataclasses.fields(group_cls):
                values[field.name] = from_flag_value(field, flag_values[field.name].value)
        return config.replace(**values)

    @classmethod
    def from_flagfile(cls, path: str, **overrides: Any) -> "ExperimentConfig":
        """A config from a `bin/run` flagfile, then `overrides` by setting name."""
        from absl import flags

        flag_values = flags.FlagValues()
        define_flags(flag_values)
        check_flagfiles([f"--flagfile={path}"])
        try:
            flag_values(["mtkd_tf", f"--flagfile={path}"])
        except flags.Error as error:
            raise ConfigError(f"flagfile {path}: {error}") from None
        try:
            config = cls.from_flags(flag_values)
        except ConfigError as error:
            raise ConfigError(f"flagfile {path}: {error}", error.setting) from None
        return config.replace(**overrides)


# --- flags ----------------------------------------------------------------------------------


def check_flagfiles(args: Sequence[str], seen: set[str] | None = None) -> None:
    """Every flagfile `args` name (`--flagfile=x`, `--flagfile x`, and those nested in them) is
    UTF-8 text, or a ConfigError names it and the line: absl would raise a bare UnicodeDecodeError.
    Files that cannot be opened are left to absl, which reports them."""
    import os

    seen = set() if seen is None else seen
    args = list(args)
    for at, arg in enumerate(args):
        name = arg.split("=", 1)[1] if arg.startswith(("--flagfile=", "-flagfile=")) else None
        if arg in ("--flagfile", "-flagfile") and at + 1 < len(args):
            name = args[at + 1]
        path = os.path.expanduser(name) if name else None
        if not path or path in seen or not os.path.isfile(path):
            continue
        seen.add(path)
        with open(path, "rb") as handle:
            data = handle.read()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            from mtkd_tf.runtime.files import not_utf8

            raise ConfigError(f"flagfile {name}:{not_utf8(data, error)}", "flagfile") from None
        check_flagfiles([line.strip() for line in text.splitlines()], seen)


def _base_type(field: dataclasses.Field) -> Any:
    hint = typing.get_type_hints(GROUP_OF_FIELD[field.name])[field.name]
    args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    return args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) else hint


def define_flags(flag_values) -> None:
    """Defines one absl flag per config field in `flag_values` (an `absl.flags.FlagValues`),
    with the field's name, help, choices and bounds."""
    from absl import flags

    for group_cls in GROUPS.values():
        for field in dataclasses.fields(group_cls):
            meta = field.metadata
            default = field.default_factory() if field.default is dataclasses.MISSING else field.default
            kind = _base_type(field)
            common = {"name": field.name, "help": meta["help"], "flag_values": flag_values}
            if typing.get_origin(kind) is dict:
                flags.DEFINE_list(default=[f"{k}:{v}" for k, v in default.items()], **common)
            elif typing.get_origin(kind) is list:
                flags.DEFINE_list(default=[str(item) for item in default], **common)
            elif kind is bool:
                flags.DEFINE_bool(default=default, **common)
            elif meta.get("choices"):
                flags.DEFINE_enum(default=default, enum_values=list(meta["choices"]), **common)
            elif kind is int:
                flags.DEFINE_integer(
                    default=default, lower_bound=meta.get("lower"), upper_bound=meta.get("upper"), **common
                )
            elif kind is float:
                flags.DEFINE_float(
                    default=default, lower_bound=meta.get("lower"), upper_bound=meta.get("upper"), **common
                )
            else:
                flags.DEFINE_string(default=default, **common)


def from_flag_value(field: dataclasses.Field, value: Any) -> Any:
    """A flag's parsed value as the field's type (lists of numbers, task:alpha items)."""
    kind = _base_type(field)
    if typing.get_origin(kind) is dict:
        _, value_type = typing.get_args(kind)
        result = {}
        for item in value or []:
            name, colon, text = item.partition(":")
            try:
                if not colon or not name or not text:
                    raise ValueError(item)
                result[name] = value_type(text)
            except ValueError:
                spelled = "task:alpha" if value_type is float else "task:PATH"
                raise ConfigError(f"{field.name} item {item!r} is not {spelled}", field.name) from None
        return result
    if typing.get_origin(kind) is list:
        (item_type,) = typing.get_args(kind)
        try:
            return [item_type(item) for item in value or []]
        except ValueError:
            raise ConfigError(f"{field.name} must be a list of numbers, got {value}", field.name) from None
    if kind is str and value == "":
        return None if field.default is None else value
    return value


GROUP_OF_FIELD = {field.name: cls for cls in GROUPS.values() for field in dataclasses.fields(cls)}
assert len(GROUP_OF_FIELD) == sum(len(dataclasses.fields(cls)) for cls in GROUPS.values()), (
    "setting names must be unique"
)
