"""SavedModel export for TF Serving: raw text in, one signature per task, versioned, warmed up.

`export(model_dir, export_dir)` writes `<export_dir>/<version>/` (TF Serving's layout; the
next free integer unless given; an existing version is never overwritten) with Keras's
`ExportArchive`. Tokenisation (keras-hub's WordPiece on tensorflow-text ops) and packing run
inside the graph with the training settings, so clients send strings: `sentence1` and, for
pair tasks, `sentence2`. Each task gets a signature named after it (`serving_default` is
the first task or `serving_default_task`): `probabilities`, `label_id`, `label` for
classification, `score` for regression and ranking. `assets.extra/tf_serving_warmup_requests`
holds a few `PredictionLog` requests per signature.

`serve_check` answers a TF-Serving-style JSON body from the export with only TensorFlow and
tensorflow-text: what a server would do, without a server.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from mtkd_tf.errors import MtkdError
from mtkd_tf.tasks import CLASSIFICATION

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
_WARMUP_TEXTS = [
    ("A gripping, beautifully acted film.", "The film is well acted."),
    ("", ""),  # empty input must work
    ("Ünïcödé, emoji 🎬 and a very long text " + "word " * 600, "Short."),
]


class ExportError(MtkdError, ValueError):
    """An export cannot be written or read; the message says why."""


def next_version(export_dir: str) -> int:
    """1 + the largest integer-named version directory under `export_dir`."""
    if not os.path.isdir(export_dir):
        return 1
    versions = [int(name) for name in os.listdir(export_dir) if name.isdigit()]
    return max(versions, default=0) + 1


def _signature_inputs(task) -> list[str]:
    return ["sentence1", "sentence2"] if task.is_pair else ["sentence1"]


def export(
    model_dir: str,
    export_dir: str,
    version: int | None = None,
    serving_default_task: str | None = None,
) -> str:
    """Exports the trained MT-DNN in `model_dir`; returns `<export_dir>/<version>`."""
    import keras
    import tensorflow as tf

    from mtkd_tf import model_dir as model_dir_lib

    trained = model_dir_lib.load(model_dir)
    model, preprocessor = trained, trained.preprocessor.prepare()
    served = [task for task in model.all_tasks if task.predict_with or task.name in model.heads]
    names = [task.name for task in served]
    default = serving_default_task or names[0]
    if default not in names:
        raise ExportError(f"serving_default_task {default!r} is not one of the model's tasks {', '.join(names)}", "serving_default_task")
    version = version or next_version(export_dir)
    path = os.path.join(export_dir, str(version))
    if os.path.exists(path):
        raise ExportError(f"{path} exists; exports are never overwritten (pick another export_version)", "export_version")

    preprocessor(tf.constant(["build"]), tf.constant(["the layers"]))  # builds tokenizer and packer
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.track(preprocessor.tokenizer)
    archive.track(preprocessor.packer)

    def endpoint(task):
        head = task.predict_with or task.name
        source = model.task(head)
        inputs = _signature_inputs(task)

        def predict(*texts):
            features = preprocessor(*texts)
            output = model(features, training=False)[head]
            if source.type != CLASSIFICATION:
                return {"score": tf.cast(output, tf.float32)}
            probabilities = tf.exp(output)
            label_id = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
            label = tf.gather(tf.constant(list(source.labels)), label_id)
            return {"probabilities": probabilities, "label_id": label_id, "label": label}

        # Named arguments: they become the signature's input names.
        if len(inputs) == 2:
            def serve(sentence1, sentence2):
                return predict(sentence1, sentence2)
        else:
            def serve(sentence1):
                return predict(sentence1)
        signature = [tf.TensorSpec([None], tf.string, name=name) for name in inputs]
        return tf.function(serve, input_signature=signature, autograph=False)

    for task in served:
        function = endpoint(task)
        archive.add_endpoint(task.name, function)
        if task.name == default:
            archive.add_endpoint("serving_default", function)
    staging = path + ".partial"
    archive.write_out(staging, verbose=False)
    write_warmup(staging, {task.name: _signature_inputs(task) for task in served} | {"serving_default": _signature_inputs(served[names.index(default)])})
    os.replace(staging, path)
    return path


def write_warmup(export_path: str, signatures: dict[str, list[str]], model_name: str = "model") -> str:
    """`assets.extra/tf_serving_warmup_requests`: PredictionLog records, a few per signature."""
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    path = os.path.join(export_path, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for name, inputs in signatures.items():
            for first, second in _WARMUP_TEXTS:
                request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=model_name, signature_name=name))
                for key, text in zip(inputs, (first, second)):
                    request.inputs[key].CopyFrom(tf.make_tensor_proto([text.encode("utf-8")], dtype=tf.string))
                log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
                writer.write(log.SerializeToString())
    return path


# --- without the library: TensorFlow and tensorflow-text only ------------------------------


def load_export(path: str):
    """Loads an export the way TF Serving does: tensorflow + tensorflow_text ops only."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  registers the tokenizer ops the graph uses

    return tf.saved_model.load(path)


def answer(loaded, body: dict[str, Any]) -> dict[str, Any]:
    """A TF Serving REST `:predict` body -> its response (`instances` -> `predictions`,
    `inputs` -> `outputs`), for one signature (`signature_name`, default serving_default)."""
    import tensorflow as tf

    name = body.get("signature_name", "serving_default")
    if name not in loaded.signatures:
        raise ExportError(f"no signature {name!r}; the export has {', '.join(sorted(loaded.signatures))}")
    function = loaded.signatures[name]
    keys = sorted(function.structured_input_signature[1])
    if "instances" in body:
        rows = body["instances"]
        if keys == ["sentence1"] and rows and not isinstance(rows[0], dict):
            rows = [{"sentence1": row} for row in rows]
        columns = {key: [row[key] for row in rows] for key in keys}
    elif "inputs" in body:
        columns = {key: body["inputs"][key] for key in keys}
    else:
        raise ExportError("the request body needs 'instances' (row format) or 'inputs' (columnar format)")
    missing = [key for key in keys if key not in columns]
    if missing:
        raise ExportError(f"signature {name!r} needs input(s) {', '.join(missing)}")
    outputs = function(**{key: tf.constant(values, tf.string) for key, values in columns.items()})
    plain = {key: _to_json(value.numpy()) for key, value in outputs.items()}
    if "instances" in body:
        count = len(next(iter(columns.values())))
        return {"predictions": [{key: value[i] for key, value in plain.items()} for i in range(count)]}
    return {"outputs": plain}


def _to_json(array: np.ndarray):
    if array.dtype.kind in ("S", "O"):
        return [value.decode("utf-8") if isinstance(value, bytes) else value for value in array.tolist()]
    return array.tolist()


def serve_check(path: str, request_file: str) -> dict[str, Any]:
    """Answers the JSON request body in `request_file` with the export at `path`."""
    with open(request_file, encoding="utf-8") as handle:
        body = json.load(handle)
    return answer(load_export(path), body)
