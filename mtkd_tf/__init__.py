"""mtkd_tf: MT-DNN with multi-task knowledge distillation (Liu et al. 2019) on TensorFlow/Keras.

The public API: tasks and data, the MT-DNN model, training, distillation, evaluation,
strategies, export and plots. `bin/run` is a thin command line over these.
"""

from mtkd_tf.data.batching import batch_schedule, inference_dataset, multitask_dataset, task_dataset
from mtkd_tf.data.preprocessing import Preprocessor, load_tokenizer
from mtkd_tf.data.readers import DataError, SplitData, load_split, load_splits
from mtkd_tf.distill.distiller import Distiller, distillation_targets
from mtkd_tf.distill.ensemble import ensemble_targets, evaluate_ensemble, member_specs
from mtkd_tf.distill.soft_labels import SoftLabelError, SoftLabels
from mtkd_tf.distribute import get_strategy, set_precision
from mtkd_tf.evaluation import evaluate, write_predictions
from mtkd_tf.export import export as export_saved_model, load_export, serve_check
from mtkd_tf.model_dir import TrainedModel, load as load_model
from mtkd_tf.models.encoder import Encoder, load_encoder
from mtkd_tf.models.heads import ClassificationHead, ScoreHead
from mtkd_tf.models.mtdnn import MTDNN
from mtkd_tf.pipeline import DistillConfig, distill, make_soft_labels, train_teachers
from mtkd_tf.plots import plot_scores, plot_training_curves
from mtkd_tf.tasks import GLUE_TASKS, Task, load_task_file, registry, resolve_tasks
from mtkd_tf.training import TrainConfig, make_optimizer, train_mtdnn, training_data

__version__ = "0.1.0"
