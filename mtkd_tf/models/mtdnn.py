"""MT-DNN: one shared encoder (any keras-hub text family), one head per task, trained on task-homogeneous batches.

`MTDNN` is a functional Keras model (inputs: token_ids, segment_ids, padding_mask;
outputs: `{task: log-probabilities or score}`) whose train step (`MultiTaskTrainStep`)
applies, for each batch, the hard loss of the batch's task (`x["task_id"]`), scaled to the
global batch so it is right under any `tf.distribute` strategy. Like keras-hub's
`TextClassifier`, a trained model owns its `preprocessor` and predicts from raw strings:

>>> model = mt.load_model("runs/quickstart/student")
>>> model.predict_texts("rt_polarity", ["a gripping film"])["label"]
array(['fresh'], dtype=object)
"""

from __future__ import annotations

from typing import Sequence

import keras
import keras_hub
import numpy as np

from mtkd_tf.data.batch import FEATURES
from mtkd_tf.data.preprocessing import Preprocessor
from mtkd_tf.data.split import SplitData
from mtkd_tf.data.tasks import CLASSIFICATION, Task, head_tasks
from mtkd_tf.models.families import encode
from mtkd_tf.models.heads import apply_head, make_head
from mtkd_tf.models.inference import predict_outputs
from mtkd_tf.models.losses import hard_loss
from mtkd_tf.models.train_step import MultiTaskTrainStep, per_task, split_features
from mtkd_tf.training.distribute import MultiWorkerFit


@keras.saving.register_keras_serializable(package="mtkd_tf")
class MTDNN(MultiTaskTrainStep, MultiWorkerFit, keras.Model):
    """Shared encoder + task-specific heads (a functional model, keras-hub style).

    Args:
        encoder: a keras-hub text backbone of any family in `mtkd_tf.models.families` (shared layers).
        tasks: `Task`s (or their configs); tasks with `predict_with` get no head.
        preprocessor: the `Preprocessor` matching the encoder's vocabulary; set by training
            and by `mt.load_model` (the model directory stores it beside `model.keras`).
    """

    def __init__(
        self,
        encoder: keras_hub.models.Backbone,
        tasks: Sequence[Task | dict],
        preprocessor: Preprocessor | None = None,
        **kwargs,
    ):
        tasks = tuple(Task.from_config(t) if isinstance(t, dict) else t for t in tasks)
        trained = tuple(head_tasks(tasks))
        if not trained:
            raise ValueError("MTDNN needs at least one task with a head")
        # === Layers ===
        heads = {task.name: make_head(task, encoder.hidden_dim) for task in trained}
        # === Functional model ===
        inputs = {name: keras.Input(shape=(None,), dtype="int32", name=name) for name in FEATURES}
        encoded = encode(encoder, inputs)
        outputs = {name: apply_head(head, encoded, inputs) for name, head in heads.items()}
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        # === Config and state ===
        self.encoder = encoder
        self.heads = heads
        self.tasks = trained
        self.all_tasks = tasks
        self.preprocessor = preprocessor
        self.directory: str | None = None  # where the model was loaded from (mt.load_model)
        self.make_trackers([task.name for task in trained])

    def task(self, name: str) -> Task:
        """The task whose head predicts `name` (AX -> MNLI)."""
        for task in self.all_tasks:
            if task.name == name:
                return task
        raise KeyError(f"model has no task {name!r}; it has {', '.join(t.name for t in self.all_tasks)}")

    def call(self, inputs, training=None, mask=None):
        # Batches also carry `task_id`; Keras may call the model on the whole dict.
        if isinstance(inputs, dict) and set(inputs) != set(FEATURES):
            inputs = {name: inputs[name] for name in FEATURES}
            mask = None
        return super().call(inputs, training=training, mask=mask)

    def features_model(self) -> keras.Model:
        """The same layers with the encoder's pooled [CLS] vector as an extra output."""
        encoded = encode(self.encoder, self.input)
        outputs = {name: apply_head(head, encoded, self.input) for name, head in self.heads.items()}
        outputs["pooled_output"] = encoded["pooled_output"]
        return keras.Model(self.input, outputs)

    def compute_losses(self, x, y, training: bool):
        """Per-example hard loss of the batch's task, masked where an example has no label."""
        features, task_id = split_features(x)
        outputs = self(features, training=training)
        per_example = per_task(self.tasks, task_id, lambda i, task: hard_loss(task, outputs[task.name], y["label"]))
        if "label_mask" in y:
            per_example *= y["label_mask"]
        return {"loss": per_example}, task_id

    # --- predicting from raw text ----------------------------------------------------------
    def predict_texts(
        self, task: str, texts: Sequence[str], pairs: Sequence[str] | None = None, batch_size: int = 128
    ) -> dict[str, np.ndarray]:
        """Predictions for raw strings (`pairs`: the second segment of pair tasks), as the
        exported SavedModel answers: `probabilities`, `label_id`, `label`; or `score`."""
        if self.preprocessor is None:
            raise ValueError("this MTDNN has no preprocessor: load it with mt.load_model or set model.preprocessor")
        spec = self.task(task)
        if spec.is_pair != (pairs is not None):
            raise ValueError(f"task {task} takes {'two texts (texts and pairs)' if spec.is_pair else 'one text'}")
        data = SplitData(
            spec,
            "predict",
            [f"{task}/predict/{i}" for i in range(len(texts))],
            list(texts),
            None if pairs is None else list(pairs),
        )
        outputs = predict_outputs(self, data, batch_size)
        if spec.type != CLASSIFICATION:
            return {"score": outputs}
        label_id = np.argmax(outputs, axis=-1)
        return {
            "probabilities": np.exp(outputs),
            "label_id": label_id,
            "label": np.asarray(spec.labels, object)[label_id],
        }

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "tasks": [task.to_config() for task in self.all_tasks],
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        return cls(**config)


def in_precision(model: MTDNN, policy: str) -> MTDNN:
    """The same MT-DNN (same weights) with its encoder computing under Keras dtype `policy`
    (e.g. "mixed_bfloat16" for inference on CPUs with AVX512-BF16); heads stay float32."""
    if policy == model.encoder.dtype_policy.name:
        return model
    config = model.get_config()
    encoder = dict(config["encoder"])
    encoder["config"] = {**encoder["config"], "dtype": policy}
    config["encoder"] = encoder
    clone = MTDNN.from_config(config)
    clone.set_weights(model.get_weights())
    clone.preprocessor, clone.directory = model.preprocessor, model.directory
    return clone
