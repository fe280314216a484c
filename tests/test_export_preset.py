"""The shared encoder as a keras-hub preset, loaded back in a fresh process by keras-hub alone."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import run_cli
from model_dirs import build_model_dir, moviesuite_sample, moviesuite_texts, wordpiece_vocabulary

import mtkd_tf as mt
from mtkd_tf.data import moviesuite
from mtkd_tf.data.preprocessing import Preprocessor
from mtkd_tf.export.saved_model import ExportError
from mtkd_tf.models.families import FAMILIES, encode
from mtkd_tf.models.model_dir import ModelDirError

# Every family, a layer-subset student, and a BERT with exact GELU (as converted from Hugging Face).
ENCODERS = {**{name: f"tiny_{name}" for name in FAMILIES}, "bert_layers": "tiny:layers=1", "bert_exact_gelu": "tiny"}

FRESH = r"""
import importlib.abc, json, os, sys
import numpy as np

class Forbid(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "mtkd_tf":
            raise ImportError(f"{name} must not be needed to load a keras-hub preset")

forbid = Forbid()
sys.meta_path.insert(0, forbid)
import keras_hub
import tensorflow as tf

job = json.load(open(sys.argv[1]))
arrays, result = {}, {}

def rows(ids):  # eager keras-hub tokenizers return a RaggedTensor or lists
    return ids.to_list() if hasattr(ids, "to_list") else [[int(i) for i in row] for row in ids]

def load(name, path):
    backbone = keras_hub.models.Backbone.from_preset(path)
    tokenizer = keras_hub.tokenizers.Tokenizer.from_preset(path)
    entry = {"backbone": type(backbone).__name__, "tokenizer": type(tokenizer).__name__,
             "tokens": rows(tokenizer(tf.constant(job["single"])))}
    if os.path.isfile(os.path.join(path, "preprocessor.json")):
        preprocessor = keras_hub.models.TextClassifierPreprocessor.from_preset(path)
        entry["sequence_length"] = preprocessor.sequence_length
        packed = {"single": preprocessor(tf.constant(job["single"])),
                  "pair": preprocessor(x=(tf.constant(job["first"]), tf.constant(job["second"])))}
        for kind, features in packed.items():
            for key, value in features.items():
                arrays[f"{name}/{kind}/packed/{key}"] = value.numpy()
    if name in job["classifiers"]:  # fine-tuning in keras-hub starts from here
        classifier = keras_hub.models.TextClassifier.from_preset(path, num_classes=3)
        entry["classifier"] = [type(classifier).__name__, list(classifier.predict(job["single"][:2], verbose=0).shape)]
    features = np.load(job["features"][name])
    for kind in ("single", "pair"):
        inputs = {key: features[f"{kind}/{key}"] for key in backbone.input}
        outputs = backbone(inputs)
        sequence = outputs["sequence_output"] if isinstance(outputs, dict) else outputs
        arrays[f"{name}/{kind}/sequence_output"] = sequence.numpy()
    result[name] = entry

for name, path in job["presets"].items():
    if name not in job["needs_mtkd_tf"]:
        load(name, path)
for name in job["needs_mtkd_tf"]:
    try:
        keras_hub.models.Backbone.from_preset(job["presets"][name])
        result[name + "_without_mtkd_tf"] = "loaded"
    except Exception as error:
        result[name + "_without_mtkd_tf"] = str(error)
sys.meta_path.remove(forbid)
import mtkd_tf  # noqa: F401  registers BertEncoderBackbone
for name in job["needs_mtkd_tf"]:
    load(name, job["presets"][name])
np.savez(job["arrays"], **arrays)
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def texts():
    sample = moviesuite_sample("dev", 6)
    first, second = sample["lee_pairs"]  # long paragraphs: pairs are truncated round-robin at max_seq_length
    return {"single": sample["rt_polarity"][0] + sample["trec"][0], "first": first, "second": second}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    training = moviesuite_texts(400)
    vocab_file = wordpiece_vocabulary(training, str(root))
    tasks = [moviesuite.TASKS["rt_polarity"]]
    dirs = {}
    for name, spec in ENCODERS.items():
        family = FAMILIES.get(name, FAMILIES["bert"])
        dirs[name] = build_model_dir(
            str(root / name),
            spec,
            tasks,
            texts=training,
            exact_gelu=name == "bert_exact_gelu",
            vocab_file=vocab_file if family.vocabulary == "wordpiece" else None,
        )
    return dirs


def _rows(ids) -> list[list[int]]:
    return ids.to_list() if hasattr(ids, "to_list") else [[int(i) for i in row] for row in ids]


def _features(model, texts) -> dict[str, dict[str, np.ndarray]]:
    """The model's own packing, padded to max_seq_length (as keras-hub's preprocessor pads)."""
    packer = Preprocessor(model.preprocessor.tokenizer, model.preprocessor.sequence_length, pad_to_multiple_of=0)
    return {
        "single": {k: v.numpy() for k, v in packer(tf.constant(texts["single"])).items()},
        "pair": {k: v.numpy() for k, v in packer(tf.constant(texts["first"]), tf.constant(texts["second"])).items()},
    }


@pytest.mark.download  # real moviesuite sentences (cached after the first fetch)
def test_every_family_reloads_in_a_fresh_process_through_keras_hub(model_dirs, texts, tmp_path):
    presets, feature_files, expected = {}, {}, {}
    for name, directory in model_dirs.items():
        presets[name] = mt.export_preset(directory, str(tmp_path / "presets" / name))
        model = mt.load_model(directory)
        features = _features(model, texts)
        feature_files[name] = str(tmp_path / f"{name}_features.npz")
        np.savez(feature_files[name], **{f"{kind}/{k}": v for kind, f in features.items() for k, v in f.items()})
        expected[name] = {
            "model": model,
            "features": features,
            "tokens": _rows(model.preprocessor.tokenizer(tf.constant(texts["single"]))),
            "outputs": {
                kind: encode(model.encoder, {k: tf.constant(v) for k, v in f.items()})["sequence_output"].numpy()
                for kind, f in features.items()
            },
        }
    job = tmp_path / "job.json"
    job.write_text(
        json.dumps(
            {
                "presets": presets,
                "features": feature_files,
                "needs_mtkd_tf": ["bert_exact_gelu"],
                "classifiers": ["bert", "bert_exact_gelu"],
                "arrays": str(tmp_path / "arrays.npz"),
                **texts,
            }
        )
    )
    result = subprocess.run(
        [sys.executable, "-c", FRESH, str(job)],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    arrays = np.load(tmp_path / "arrays.npz")
    for name, reference in expected.items():
        model, entry = reference["model"], loaded[name]
        family = FAMILIES.get(name, FAMILIES["bert"])
        assert entry["tokenizer"] == family.tokenizer, name
        assert entry["backbone"] == ("BertEncoderBackbone" if name == "bert_exact_gelu" else family.backbone), name
        assert entry["tokens"] == reference["tokens"], name
        if family.name != "electra":  # keras-hub has no ELECTRA TextClassifierPreprocessor
            assert entry["sequence_length"] == model.preprocessor.sequence_length, name
            for kind, features in reference["features"].items():
                for key in ("token_ids", "padding_mask"):
                    np.testing.assert_array_equal(arrays[f"{name}/{kind}/packed/{key}"], features[key], err_msg=name)
                if family.segments:
                    np.testing.assert_array_equal(arrays[f"{name}/{kind}/packed/segment_ids"], features["segment_ids"])
        for kind, output in reference["outputs"].items():
            np.testing.assert_allclose(
                arrays[f"{name}/{kind}/sequence_output"], output, atol=1e-5, rtol=0, err_msg=f"{name} {kind}"
            )
    for name, reference in expected.items():  # and the preset is an --encoder for further mtkd_tf runs
        encoder = mt.load_encoder(presets[name])
        features = {k: tf.constant(v) for k, v in reference["features"]["single"].items()}
        np.testing.assert_allclose(
            encode(encoder.backbone, features)["sequence_output"].numpy(),
            reference["outputs"]["single"],
            atol=1e-5,
            rtol=0,
            err_msg=name,
        )
        assert _rows(encoder.tokenizer(tf.constant(texts["single"]))) == reference["tokens"], name
    assert "mtkd_tf>BertEncoderBackbone" in loaded["bert_exact_gelu_without_mtkd_tf"]
    assert loaded["bert"]["classifier"] == ["BertTextClassifier", [2, 3]]
    assert loaded["bert_exact_gelu"]["classifier"] == ["BertEncoderTextClassifier", [2, 3]]
    with open(os.path.join(presets["bert_layers"], "config.json")) as handle:
        assert json.load(handle)["config"]["num_layers"] == 1  # the layer-subset student, not its 2-layer source


@pytest.mark.download
def test_bin_run_writes_a_preset_and_never_over_an_existing_directory(model_dirs, tmp_path):
    target = tmp_path / "preset"
    result = run_cli("--mode=export_preset", f"--model_dir={model_dirs['roberta']}", f"--export_dir={target}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert {"config.json", "model.weights.h5", "metadata.json", "tokenizer.json", "preprocessor.json", "assets"} <= set(
        os.listdir(target)
    )
    again = run_cli("--mode=export_preset", f"--model_dir={model_dirs['roberta']}", f"--export_dir={target}")
    assert again.returncode == 2 and "--export_dir" in again.stderr and "not empty" in again.stderr
    with pytest.raises(mt.ConfigError, match="export_preset needs model_dir"):
        mt.modes.export_preset(mt.ExperimentConfig().replace(model_dir=model_dirs["roberta"]))


def test_a_failed_export_leaves_nothing_behind(tmp_path):
    target = tmp_path / "preset"
    with pytest.raises(ModelDirError, match="no such directory"):
        mt.export_preset(str(tmp_path / "nowhere"), str(target))
    assert not target.exists() and os.listdir(tmp_path) == []
    (target / "old").mkdir(parents=True)
    with pytest.raises(ExportError, match="not empty"):
        mt.export_preset(str(tmp_path / "nowhere"), str(target))
    assert os.listdir(target) == ["old"]
