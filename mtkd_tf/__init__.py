# ruff: noqa: I001 -- the import order is deliberate: oneDNN is decided before anything loads TensorFlow
"""mtkd_tf: MT-DNN with multi-task knowledge distillation (Liu et al. 2019) on TensorFlow/Keras.

The product is the Python API: an `ExperimentConfig` (every setting, by concern) and an
`Experiment` that runs the paper's stages from it; `bin/run` is a thin shell over them.

>>> import mtkd_tf as mt
>>> report = mt.Experiment(mt.ExperimentConfig.from_flagfile("configs/quickstart.cfg")).run()
>>> student = mt.load_model("runs/quickstart/student")
>>> student.predict_texts("rt_polarity", ["a gripping film"])["label"]

The building blocks are here too, for programs of your own, from one package per part:
- `data/`: tasks, readers (TSV/CSV, TFDS, Hugging Face datasets), batching, suites;
- `models/`: encoder, heads, the MT-DNN, inference, evaluation, model directories, losses;
- `distill/`: the Distiller, its loss terms, the teacher ensemble, soft labels;
- `training/`: training, checkpointing, fine-tuning, strategies (distribute), pre-emption;
- `experiment/`: the stages, the directory layout, the data, evaluation, report, significance, plots;
- `export/`: SavedModel, keras-hub preset, transformers checkpoint, leaderboard submission;
- `runtime/`: files, locks, progress, environment, oneDNN, assets.
`export_preset` and `export_transformers` take a trained student out to keras-hub and Hugging
Face transformers.
"""

from mtkd_tf.runtime import onednn  # first: oneDNN on where TensorFlow leaves it off, before TensorFlow loads
from mtkd_tf import distill  # the subpackage: mt.distill.ensemble, mt.distill.distiller, ...
from mtkd_tf.config import (
    DataConfig,
    DistillationConfig,
    ExperimentConfig,
    ExportConfig,
    FinetuneConfig,
    ModelConfig,
    RuntimeConfig,
    TeacherConfig,
    TrainingConfig,
)
from mtkd_tf.data.batching import batch_schedule, inference_dataset, multitask_dataset, task_dataset
from mtkd_tf.data.preprocessing import Preprocessor, load_tokenizer
from mtkd_tf.data.readers import load_split, load_splits
from mtkd_tf.data.split import DataError, SplitData
from mtkd_tf.data.tasks import GLUE_TASKS, Task, TaskSource, define_task, load_task_file, registry, resolve_tasks
from mtkd_tf.distill.distiller import Distiller, distillation_targets
from mtkd_tf.distill.ensemble import ensemble_targets, make_soft_labels, member_specs
from mtkd_tf.distill.soft_labels import SoftLabelError, SoftLabels
from mtkd_tf.distill.student import Distillation
from mtkd_tf.errors import ConfigError, MtkdError
from mtkd_tf.experiment import Experiment, ExperimentLayout, modes
from mtkd_tf.experiment.plots import plot_scores, plot_training_curves
from mtkd_tf.export.preset import export_preset
from mtkd_tf.export.saved_model import export as export_saved_model
from mtkd_tf.export.saved_model import load_export, serve_check
from mtkd_tf.export.submission import write_predictions
from mtkd_tf.export.transformers import export_transformers
from mtkd_tf.models.encoder import Encoder, load_encoder
from mtkd_tf.models.evaluation import evaluate
from mtkd_tf.models.heads import ClassificationHead, ScoreHead
from mtkd_tf.models.inference import predict_outputs
from mtkd_tf.models.model_dir import load as load_model
from mtkd_tf.models.mtdnn import MTDNN
from mtkd_tf.runtime.progress import ProgressLog, RunClock
from mtkd_tf.training.distribute import get_strategy, set_precision
from mtkd_tf.training.finetune import finetune, finetune_seed
from mtkd_tf.training.train import TrainingData, fit, make_optimizer, train_model, training_data

from mtkd_tf.version import __version__ as __version__  # the one place the version is written

__all__ = [
    # configuration: one schema, flags map onto it
    "ExperimentConfig",
    "DataConfig",
    "ModelConfig",
    "TrainingConfig",
    "TeacherConfig",
    "FinetuneConfig",
    "DistillationConfig",
    "RuntimeConfig",
    "ExportConfig",
    # the method end to end, and the single-model modes
    "Experiment",
    "ExperimentLayout",
    "modes",
    # tasks and data
    "Task",
    "TaskSource",
    "GLUE_TASKS",
    "define_task",
    "load_task_file",
    "registry",
    "resolve_tasks",
    "SplitData",
    "load_split",
    "load_splits",
    "Preprocessor",
    "load_tokenizer",
    "batch_schedule",
    "multitask_dataset",
    "task_dataset",
    "inference_dataset",
    # models
    "MTDNN",
    "Encoder",
    "load_encoder",
    "ClassificationHead",
    "ScoreHead",
    "load_model",
    "predict_outputs",
    # training, fine-tuning, distillation
    "train_model",
    "TrainingData",
    "training_data",
    "make_optimizer",
    "fit",
    "finetune",
    "finetune_seed",
    "Distillation",
    "Distiller",
    "distillation_targets",
    "distill",
    "member_specs",
    "ensemble_targets",
    "make_soft_labels",
    "SoftLabels",
    # evaluation, export, plots, strategies
    "evaluate",
    "write_predictions",
    "export_saved_model",
    "load_export",
    "serve_check",
    "export_preset",
    "export_transformers",
    "plot_scores",
    "plot_training_curves",
    "get_strategy",
    "set_precision",
    "ProgressLog",
    "RunClock",
    # errors, and the oneDNN decision made on import
    "onednn",
    "MtkdError",
    "ConfigError",
    "DataError",
    "SoftLabelError",
]
