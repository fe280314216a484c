"""SavedModel export for TF Serving: raw text in, one signature per task, versioned, warmed up.

`export(model_dir, export_dir)` writes `<export_dir>/<version>/` (TF Serving's layout; the
next free integer unless given; an existing version is never overwritten) with Keras's
`ExportArchive`. Tokenisation (keras-hub's WordPiece on tensorflow-text ops) and packing run
inside the graph with the training settings, so clients send strings: `sentence1` and, for
pair tasks, `sentence2`. Each task gets a signature named after it (`serving_default` is
the first task or `serving_default_task`): `probabilities`, `label_id`, `label` for
classification, `score` for regression and ranking. `assets.extra/tf_serving_warmup_requests`
holds a few `PredictionLog` requests per signature. The graph refuses, with a message naming the
input, texts that are not UTF-8, inputs that are not one string per example and pairs of unequal
lengths; an empty string is a valid text, and a long one is truncated to the training length.

`serve_check` answers a TF-Serving-style JSON body from the export with only TensorFlow and
tensorflow-text: what a server would do, without a server.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from typing import Any

import numpy as np

from mtkd_tf.data.tasks import CLASSIFICATION
from mtkd_tf.errors import MtkdError

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


def _served_tasks(model, serving_default_task: str | None) -> tuple[list, str]:
    """The tasks an export serves (those with a head or predicted with another's) and the
    serving_default one's name."""
    served = [task for task in model.all_tasks if task.predict_with or task.name in model.heads]
    names = [task.name for task in served]
    default = serving_default_task or names[0]
    if default not in names:
        raise ExportError(
            f"serving_default_task {default!r} is not one of the model's tasks {', '.join(names)}",
            "serving_default_task",
        )
    return served, default


def _endpoint(model, preprocessor, task):
    """A task's signature: a tf.function from its raw texts to its outputs."""
    import tensorflow as tf

    head = task.predict_with or task.name
    source = model.task(head)
    inputs = _signature_inputs(task)

    def predict(*texts):
        features = preprocessor(*_checked_inputs(inputs, texts))
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


def export(
    model_dir: str,
    export_dir: str,
    version: int | None = None,
    serving_default_task: str | None = None,
) -> str:
    """Exports the trained MT-DNN in `model_dir`; returns `<export_dir>/<version>`."""
    import keras
    import tensorflow as tf

    from mtkd_tf.models import model_dir as model_dir_lib

    trained = model_dir_lib.load(model_dir)
    model, preprocessor = trained, trained.preprocessor.prepare()
    served, default = _served_tasks(model, serving_default_task)
    names = [task.name for task in served]
    version = version or next_version(export_dir)
    path = os.path.join(export_dir, str(version))
    if os.path.exists(path):
        raise ExportError(
            f"{path} exists; exports are never overwritten (pick another export_version)", "export_version"
        )

    preprocessor(tf.constant(["build"]), tf.constant(["the layers"]))  # builds tokenizer and packer
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.track(preprocessor.tokenizer)
    archive.track(preprocessor.packer)
    for task in served:
        function = _endpoint(model, preprocessor, task)
        archive.add_endpoint(task.name, function)
        if task.name == default:
            archive.add_endpoint("serving_default", function)
    staging = path + ".partial"
    archive.write_out(staging, verbose=False)
    write_warmup(
        staging,
        {task.name: _signature_inputs(task) for task in served}
        | {"serving_default": _signature_inputs(served[names.index(default)])},
    )
    os.replace(staging, path)
    return path


def _checked_inputs(names: list[str], texts: tuple) -> list:
    """In the serving graph: each input is a vector of UTF-8 strings, all of one length, or the
    call fails with an `InvalidArgumentError` naming the input, before any text is tokenised.

    The signatures declare `[None]` strings, but a SavedModel does not check shapes: a nested list
    was flattened into extra rows, bytes that are not UTF-8 got a prediction of nothing, and a
    pair of unequal lengths made the packer read past the shorter one (an aborted process, or
    garbage token ids). The rank is read from a serialized copy, whose static shape is unknown:
    grappler folds shape ops on the declared `[None]` (a reshape to `[-1]`, a `PlaceholderWithDefault`
    vanished). Each check waits for the one before it, so the first problem is the one reported."""
    import tensorflow as tf

    checked, rows = [], []
    for name, text in zip(names, texts, strict=True):  # one text per signature input
        unknown = tf.io.parse_tensor(tf.io.serialize_tensor(text), tf.string)
        rank = tf.debugging.Assert(
            tf.equal(tf.rank(unknown), 1),
            [f"{name} must be a list of strings, one per example; got a tensor of shape", tf.shape(unknown)],
        )
        with tf.control_dependencies([rank]):
            text = tf.identity(text)
        valid = tf.equal(tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace"), text)
        utf8 = tf.debugging.Assert(
            tf.reduce_all(valid),
            [f"{name} holds bytes that are not UTF-8 in row(s)", tf.where(tf.logical_not(valid))[:, 0]],
            summarize=10,
        )
        with tf.control_dependencies([utf8]):
            checked.append(tf.identity(text))
        rows.append(tf.shape(text)[0])
    if len(rows) == 2:
        same = tf.debugging.Assert(
            tf.equal(rows[0], rows[1]), [f"{names[0]} and {names[1]} must have as many rows; they have", tf.stack(rows)]
        )
        with tf.control_dependencies([same]):
            checked = [tf.identity(text) for text in checked]
    return checked


def _refusal(error) -> str:
    """The message of a check in the serving graph (`_checked_inputs`), without TF's node names."""
    found = re.search(r"assertion failed: (.*)", error.message)
    if not found:
        return error.message.strip().splitlines()[-1]
    first, *data = re.findall(r"\[([^\[\]]*)\]", found.group(1))
    return " ".join([first] + [f"[{item}]" for item in data])


def write_warmup(export_path: str, signatures: dict[str, list[str]], model_name: str = "model") -> str:
    """`assets.extra/tf_serving_warmup_requests`: PredictionLog records, a few per signature."""
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    path = os.path.join(export_path, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for name, inputs in signatures.items():
            for first, second in _WARMUP_TEXTS:
                request = predict_pb2.PredictRequest(
                    model_spec=model_pb2.ModelSpec(name=model_name, signature_name=name)
                )
                # A single-sentence signature takes only the first text of the pair.
                for key, text in zip(inputs, (first, second), strict=False):
                    request.inputs[key].CopyFrom(tf.make_tensor_proto([text.encode("utf-8")], dtype=tf.string))
                log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
                writer.write(log.SerializeToString())
    return path


# --- without the library: TensorFlow and tensorflow-text only ------------------------------


def load_export(path: str):
    """Loads an export the way TF Serving does: tensorflow + tensorflow_text ops only."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  registers the tokenizer ops the graph uses

    if not os.path.isfile(os.path.join(path, "saved_model.pb")):
        raise ExportError(f"{path}: not a SavedModel (no saved_model.pb in it)", "saved_model")
    return tf.saved_model.load(path)


def answer(loaded, body: Any) -> dict[str, Any]:
    """A TF Serving REST `:predict` body -> its response (`instances` -> `predictions`,
    `inputs` -> `outputs`), for one signature (`signature_name`, default serving_default).

    A malformed body raises `ExportError` naming the field (`instances[2].sentence1 must be a
    string ...`); texts are strings or TF Serving's `{"b64": ...}` bytes. An empty string is a
    valid text (it gets the prediction of `[CLS] [SEP]`); an empty list gets no predictions."""
    import tensorflow as tf

    if not isinstance(body, dict):
        raise ExportError(f"the request body must be a JSON object, got {_kind(body)}")
    name = body.get("signature_name", "serving_default")
    if not isinstance(name, str) or name not in loaded.signatures:
        raise ExportError(f"no signature {name!r}; the export has {', '.join(sorted(loaded.signatures))}")
    function = loaded.signatures[name]
    keys = sorted(function.structured_input_signature[1])
    if ("instances" in body) == ("inputs" in body):
        raise ExportError(
            "the request body needs one of 'instances' (row format) or 'inputs' (columnar format), not both"
        )
    if "instances" in body:
        columns = _row_columns(body["instances"], keys, name)
    else:
        columns = _columnar(body["inputs"], keys, name)
    try:
        outputs = function(**{key: tf.constant(values, tf.string) for key, values in columns.items()})
    except tf.errors.InvalidArgumentError as error:  # the graph's own checks (`_checked_inputs`)
        raise ExportError(f"signature {name!r} refused the request: {_refusal(error)}") from None
    plain = {key: _to_json(value.numpy()) for key, value in outputs.items()}
    if "instances" in body:
        count = len(next(iter(columns.values())))
        return {"predictions": [{key: value[i] for key, value in plain.items()} for i in range(count)]}
    return {"outputs": plain}


def _kind(value: Any) -> str:
    """A JSON value's type as the request's author wrote it."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def _text(value: Any, where: str) -> bytes:
    """One text of a request: a string, or TF Serving's `{"b64": "<base64 bytes>"}`."""
    if isinstance(value, dict) and list(value) == ["b64"] and isinstance(value["b64"], str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except binascii.Error as error:
            raise ExportError(f"{where}: 'b64' is not base64 ({error})") from None
    if not isinstance(value, str):
        raise ExportError(f'{where} must be a string (or {{"b64": ...}}), got {_kind(value)}')
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as error:  # a lone surrogate, e.g. "\ud800" in the JSON
        raise ExportError(f"{where} is not valid Unicode text ({error.reason} at character {error.start})") from None


def _check_keys(given: dict, keys: list[str], where: str, name: str) -> None:
    missing = [key for key in keys if key not in given]
    unknown = sorted(str(key) for key in given if key not in keys)
    if missing or unknown:
        problem = f"lacks {', '.join(missing)}" if missing else f"has input(s) {', '.join(unknown)} it does not take"
        raise ExportError(f"{where}: signature {name!r} takes {', '.join(keys)}; this request {problem}")


def _row_columns(rows: Any, keys: list[str], name: str) -> dict[str, list[bytes]]:
    """The row format: a list of objects (a list of texts for a single-input signature)."""
    if not isinstance(rows, list):
        raise ExportError(f"'instances' must be a list of examples, got {_kind(rows)}")
    columns: dict[str, list[bytes]] = {key: [] for key in keys}
    for number, row in enumerate(rows):
        where = f"instances[{number}]"
        if len(keys) == 1 and not (isinstance(row, dict) and list(row) != ["b64"]):
            row = {keys[0]: row}
        if not isinstance(row, dict):
            raise ExportError(f"{where} must be an object with {', '.join(keys)}, got {_kind(row)}")
        _check_keys(row, keys, where, name)
        for key in keys:
            columns[key].append(_text(row[key], f"{where}.{key}"))
    return columns


def _columnar(inputs: Any, keys: list[str], name: str) -> dict[str, list[bytes]]:
    """The columnar format: an object of equally long lists (a bare list for a single input)."""
    if isinstance(inputs, list) and len(keys) == 1:
        inputs = {keys[0]: inputs}
    if not isinstance(inputs, dict):
        raise ExportError(f"'inputs' must be an object with {', '.join(keys)}, got {_kind(inputs)}")
    _check_keys(inputs, keys, "inputs", name)
    columns = {}
    for key in keys:
        if not isinstance(inputs[key], list):
            raise ExportError(f"inputs.{key} must be a list of texts, one per example, got {_kind(inputs[key])}")
        columns[key] = [_text(value, f"inputs.{key}[{row}]") for row, value in enumerate(inputs[key])]
    lengths = {key: len(values) for key, values in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ExportError(
            f"inputs: {' and '.join(f'{key} has {count} rows' for key, count in lengths.items())}; "
            "every input needs one row per example"
        )
    return columns


def _to_json(array: np.ndarray):
    if array.dtype.kind in ("S", "O"):
        return [value.decode("utf-8") if isinstance(value, bytes) else value for value in array.tolist()]
    return array.tolist()


def read_request(request_file: str) -> Any:
    """The JSON body in `request_file`; a file that is not UTF-8 JSON is an ExportError naming its line."""
    try:
        with open(request_file, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise ExportError(f"request_file {request_file}: cannot read ({error.strerror})", "request_file") from None
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ExportError(
            f"request_file {request_file}:{line}: bytes that are not UTF-8 ({error.reason} at byte "
            f"{error.start}); JSON is UTF-8 text",
            "request_file",
        ) from None
    except json.JSONDecodeError as error:
        raise ExportError(
            f"request_file {request_file}:{error.lineno}:{error.colno}: not JSON ({error.msg})", "request_file"
        ) from None
    except RecursionError:
        raise ExportError(f"request_file {request_file}: JSON nested too deeply to read", "request_file") from None


def serve_check(path: str, request_file: str) -> dict[str, Any]:
    """Answers the JSON request body in `request_file` with the export at `path`."""
    body, loaded = read_request(request_file), load_export(path)
    try:
        return answer(loaded, body)
    except ExportError as error:
        raise ExportError(f"request_file {request_file}: {error}", error.setting or "request_file") from None
