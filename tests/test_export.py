"""SavedModel export for TF Serving, checked in a process that has only TensorFlow and tensorflow-text."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import run_cli

from mtkd_tf.export import saved_model as export
from mtkd_tf.models import model_dir as model_dir_lib

TEXTS = {
    "sentence1": ["the old film shows a dog and was great", "", "Ünïcödé — ça marche? 🎬 " + "long " * 700],
    "sentence2": ["a dog", "perhaps the story", "日本語のテキスト"],
}

FRESH = r"""
import importlib.abc, json, sys
class Forbid(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("mtkd_tf", "keras_hub"):
            raise ImportError(f"{name} must not be needed to serve the export")
sys.meta_path.insert(0, Forbid())
import tensorflow as tf
import tensorflow_text  # noqa: F401
from tensorflow_serving.apis import prediction_log_pb2
path, texts = sys.argv[1], json.loads(sys.argv[2])
loaded = tf.saved_model.load(path)
result = {}
for name, function in loaded.signatures.items():
    keys = sorted(function.structured_input_signature[1])
    outputs = function(**{k: tf.constant(texts[k]) for k in keys})
    result[name] = {
        k: (v.numpy().astype(str).tolist() if v.dtype == tf.string else v.numpy().tolist())
        for k, v in outputs.items()
    }
replayed = 0
for record in tf.data.TFRecordDataset(path + "/assets.extra/tf_serving_warmup_requests"):
    log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
    request = log.predict_log.request
    inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
    outputs = loaded.signatures[request.model_spec.signature_name](**inputs)
    assert all(tf.reduce_all(tf.math.is_finite(v)) for v in outputs.values() if v.dtype.is_floating)
    replayed += 1
result["_replayed"] = replayed
result["_modules"] = sorted({m.split(".")[0] for m in sys.modules} & {"mtkd_tf", "keras_hub"})
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    """A tiny trained MT-DNN: single-sentence and SAN pair classification, regression, AX via MNLI."""
    directory = str(tmp_path_factory.mktemp("exp") / "model")
    result = run_cli(
        "--flagfile=configs/tiny.cfg",
        "--tasks=sst2,rte,stsb,mnli,ax",
        "--epochs=1",
        "--max_train_examples=64",
        "--max_eval_examples=16",
        "--verbose=0",
        f"--model_dir={directory}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return directory


@pytest.fixture(scope="module")
def exported(trained_dir, tmp_path_factory):
    base = str(tmp_path_factory.mktemp("serving"))
    return base, export.export(trained_dir, base, serving_default_task="rte")


def test_versions_are_never_overwritten(trained_dir, exported):
    base, first = exported
    assert first == os.path.join(base, "1")
    result = run_cli("--mode=export", f"--model_dir={trained_dir}", f"--export_dir={base}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(os.listdir(base)) == ["1", "2"]
    again = run_cli("--mode=export", f"--model_dir={trained_dir}", f"--export_dir={base}", "--export_version=1")
    assert again.returncode == 2 and "never overwritten" in again.stderr


def test_fresh_process_serves_every_signature_like_keras(trained_dir, exported):
    _, path = exported
    result = subprocess.run(
        [sys.executable, "-c", FRESH, path, json.dumps(TEXTS)],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    served = json.loads(result.stdout.strip().splitlines()[-1])
    assert served["_modules"] == []
    assert sorted(k for k in served if not k.startswith("_")) == [
        "ax",
        "mnli",
        "rte",
        "serving_default",
        "sst2",
        "stsb",
    ]
    assert served["_replayed"] == 6 * 3  # 3 warm-up requests per signature
    trained = model_dir_lib.load(trained_dir)
    for name in ("sst2", "rte", "stsb", "mnli", "ax"):
        task = trained.task(name)
        texts = [tf.constant(TEXTS["sentence1"])] + ([tf.constant(TEXTS["sentence2"])] if task.is_pair else [])
        output = trained(trained.preprocessor(*texts), training=False)[task.predict_with or name].numpy()
        if name == "stsb":
            np.testing.assert_allclose(served[name]["score"], output, atol=1e-5)
            continue
        probabilities = np.asarray(served[name]["probabilities"])
        np.testing.assert_allclose(probabilities, np.exp(output), atol=1e-5)
        assert np.all(np.isfinite(probabilities))
        assert served[name]["label"] == [task.labels[i] for i in served[name]["label_id"]]
    assert served["serving_default"] == served["rte"]


def test_saved_model_cli_lists_string_signatures(exported):
    _, path = exported
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.run([cli, "show", "--dir", path, "--all"], capture_output=True, text=True, timeout=120).stdout
    for name in ("sst2", "rte", "stsb", "mnli", "ax", "serving_default"):
        block = shown.split(f"signature_def['{name}']:")[1].split("signature_def[")[0]
        assert "inputs['sentence1']" in block and "DT_STRING" in block


def test_serve_check_answers_a_rest_body(exported, tmp_path):
    base, _ = exported
    request = tmp_path / "request.json"
    request.write_text(
        json.dumps(
            {
                "signature_name": "stsb",
                "instances": [{"sentence1": "a film", "sentence2": "a movie"}, {"sentence1": "", "sentence2": "ça"}],
            }
        )
    )
    result = run_cli("--mode=serve_check", f"--export_dir={base}", f"--request_file={request}")
    assert result.returncode == 0, result.stderr[-2000:]
    body = json.loads(result.stdout[result.stdout.index("{") :])
    assert len(body["predictions"]) == 2 and all(np.isfinite(p["score"]) for p in body["predictions"])
    request.write_text(json.dumps({"signature_name": "nope", "instances": ["x"]}))
    bad = run_cli("--mode=serve_check", f"--export_dir={base}", f"--request_file={request}")
    assert bad.returncode == 2 and "no signature 'nope'" in bad.stderr


@pytest.mark.parametrize("family", ["roberta", "deberta_v3", "albert", "distil_bert", "xlm_roberta"])
def test_other_families_export_with_their_own_in_graph_tokenizer(family, tmp_path):
    """The families whose tokenizer or inputs differ from BERT's (tested above; ELECTRA's are
    BERT's): byte-level BPE (RoBERTa), SentencePiece (DeBERTa-v3, ALBERT, XLM-R, whose ids are
    shifted) and WordPiece without segment ids (DistilBERT) tokenise inside the SavedModel; a
    process with only TensorFlow and tensorflow-text serves what Keras computes."""
    from mtkd_tf.data.preprocessing import Preprocessor
    from mtkd_tf.data.tasks import GLUE_TASKS, with_answer_modules
    from mtkd_tf.models.encoder import load_encoder
    from mtkd_tf.models.mtdnn import MTDNN

    texts = TEXTS["sentence1"][:2] + TEXTS["sentence2"] * 20
    encoder = load_encoder(f"tiny_{family}", training_texts=texts, vocabulary_size=300, seed=0)
    tasks = with_answer_modules([GLUE_TASKS["sst2"], GLUE_TASKS["rte"]], [])
    model = MTDNN(encoder.backbone, tasks, preprocessor=Preprocessor(encoder.tokenizer, 64))
    directory = str(tmp_path / "model")
    model_dir_lib.save(directory, model, encoder.tokenizer, encoder.lowercase, 64, encoder=encoder.spec)
    path = export.export(directory, str(tmp_path / "serving"))
    result = subprocess.run(
        [sys.executable, "-c", FRESH, path, json.dumps(TEXTS)],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    served = json.loads(result.stdout.strip().splitlines()[-1])
    trained = model_dir_lib.load(directory)
    pair = [tf.constant(TEXTS["sentence1"]), tf.constant(TEXTS["sentence2"])]
    output = trained(trained.preprocessor(*pair), training=False)["rte"].numpy()
    np.testing.assert_allclose(np.asarray(served["rte"]["probabilities"]), np.exp(output), atol=1e-5)
