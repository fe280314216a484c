"""The student in transformers' format: loaded by transformers in a fresh process and by keras-hub's
own Hugging Face converter, each computing what the Keras model computes; heads without a
transformers equivalent refused."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, run_cli
from model_dirs import build_model_dir, moviesuite_sample, moviesuite_texts, wordpiece_vocabulary

import mtkd_tf as mt
from mtkd_tf.data import moviesuite
from mtkd_tf.data.tasks import GLUE_TASKS, define_task
from mtkd_tf.export.saved_model import ExportError
from mtkd_tf.models.families import encode

TASKS = ("rt_polarity", "trec", "movie_rating", "lee_pairs")  # 2 and 6 classes; single and pair regression
MODELS = {  # name: (encoder spec, exact GELU)
    "bert": ("tiny", False),
    "roberta": ("tiny_roberta", False),
    "bert_student": ("tiny:layers=1", True),  # a layer-subset student with exact GELU, as from MiniLM
}

FRESH = r"""
import json, os, sys
os.environ["HF_HUB_OFFLINE"] = "1"
import numpy as np
import torch
import transformers

job = json.load(open(sys.argv[1]))
arrays, result = {}, {}
for name, entry in job["exports"].items():
    path, texts = entry["path"], entry["texts"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    auto = transformers.AutoModelForSequenceClassification if entry["task"] else transformers.AutoModel
    model = auto.from_pretrained(path).eval()
    features = np.load(entry["features"])
    inputs = {
        "input_ids": torch.tensor(features["token_ids"]),
        "attention_mask": torch.tensor(features["padding_mask"]),
    }
    if model.config.model_type == "bert":
        inputs["token_type_ids"] = torch.tensor(features["segment_ids"])
    own = tokenizer(*texts, padding=True, truncation=True, return_tensors="pt")  # max_length: model_max_length
    with torch.no_grad():
        if entry["task"]:
            arrays[f"{name}/logits"] = model(**inputs).logits.numpy()
            arrays[f"{name}/own_logits"] = model(**own).logits.numpy()
        else:
            arrays[f"{name}/hidden"] = model(**inputs).last_hidden_state.numpy()
    arrays[f"{name}/own_ids"] = own["input_ids"].numpy()
    arrays[f"{name}/own_mask"] = own["attention_mask"].numpy()
    result[name] = {"model": type(model).__name__, "tokenizer": type(tokenizer).__name__,
                    "problem_type": model.config.problem_type, "labels": [model.config.id2label[i] for i in
                                                                          range(model.config.num_labels)]}
np.savez(job["arrays"], **arrays)
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def sample():
    return moviesuite_sample("dev", 16)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    training = moviesuite_texts(400)
    vocab_file = wordpiece_vocabulary(training, str(root))
    tasks = [moviesuite.TASKS[name] for name in TASKS]
    return {
        name: build_model_dir(
            str(root / name),
            spec,
            tasks,
            texts=training,
            exact_gelu=exact,
            vocab_file=None if name == "roberta" else vocab_file,
        )
        for name, (spec, exact) in MODELS.items()
    }


@pytest.fixture(scope="module")
def exports(model_dirs, tmp_path_factory):
    """Each model's encoder alone and with each task's head; one of them through bin/run."""
    root = tmp_path_factory.mktemp("hf")
    paths = {}
    for name, directory in model_dirs.items():
        for task in (None, *TASKS):
            key = f"{name}/{task or 'encoder'}"
            target = str(root / name / (task or "encoder"))
            if key == "bert/trec":
                result = run_cli(
                    "--mode=export_transformers",
                    f"--model_dir={directory}",
                    f"--export_dir={target}",
                    "--export_task=trec",
                )
                assert result.returncode == 0, result.stderr[-2000:]
                paths[key] = target
            else:
                paths[key] = mt.export_transformers(directory, target, task=task)
    return paths


def _texts(sample, task: str | None) -> list[list[str]]:
    first, second = sample[task or "rt_polarity"]
    return [first] if second is None else [first, second]


def _features(model, texts) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in model.preprocessor(*[tf.constant(t) for t in texts]).items()}


def _rows(ids) -> list[list[int]]:
    return ids.to_list() if hasattr(ids, "to_list") else [[int(i) for i in row] for row in ids]


def _unpadded(ids, mask) -> list[list[int]]:
    return [[int(i) for i, m in zip(row, row_mask, strict=True) if m] for row, row_mask in zip(ids, mask, strict=True)]


def check_in_transformers(
    exports: dict[str, tuple[str, str, str | None]], sample, tmp_path, varied: bool = True
) -> tuple[int, int]:
    """Loads each export (`key: (export dir, model dir, task)`) in a fresh transformers process and
    checks it against the Keras model on `sample` (`varied`: and that the head's outputs vary with
    the input, so that the check can tell heads apart); returns how many texts transformers' own
    tokenizer tokenised as the model does, of how many."""
    job, expected = {"exports": {}, "arrays": str(tmp_path / "arrays.npz")}, {}
    for index, (key, (path, directory, task)) in enumerate(exports.items()):
        model = mt.load_model(directory)
        texts = _texts(sample, task)
        features = _features(model, texts)
        np.savez(tmp_path / f"features_{index}.npz", **features)
        job["exports"][key] = {
            "path": path,
            "task": task,
            "texts": texts,
            "features": str(tmp_path / f"features_{index}.npz"),
        }
        inputs = {k: tf.constant(v) for k, v in features.items()}
        expected[key] = {
            "features": features,
            "task": task and model.task(task),
            "family": "Roberta" if type(model.encoder).__name__ == "RobertaBackbone" else "Bert",
            "hidden": encode(model.encoder, inputs)["sequence_output"].numpy(),
            "outputs": model(inputs, training=False)[task].numpy() if task else None,
        }
    (tmp_path / "job.json").write_text(json.dumps(job))
    result = subprocess.run(
        [sys.executable, "-c", FRESH, str(tmp_path / "job.json")],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded, arrays = json.loads(result.stdout.strip().splitlines()[-1]), np.load(tmp_path / "arrays.npz")
    tokenized = agreed = 0
    for key, reference in expected.items():
        task, entry, family = reference["task"], loaded[key], reference["family"]
        assert entry["tokenizer"] == f"{family}Tokenizer", key
        mask = reference["features"]["padding_mask"].astype(bool)
        if task is None:
            assert entry["model"] == f"{family}Model", key
            np.testing.assert_allclose(
                arrays[f"{key}/hidden"][mask], reference["hidden"][mask], atol=1e-4, rtol=0, err_msg=key
            )
            continue
        assert entry["model"] == f"{family}ForSequenceClassification", key
        logits, ours = arrays[f"{key}/logits"], reference["outputs"]
        if task.type == "classification":
            assert entry["problem_type"] == "single_label_classification" and entry["labels"] == list(task.labels)
            probabilities = np.exp(logits - logits.max(-1, keepdims=True))
            probabilities /= probabilities.sum(-1, keepdims=True)
            np.testing.assert_allclose(probabilities, np.exp(ours), atol=1e-4, rtol=0, err_msg=key)
            # far from uniform and varying with the input: a wrong mapping could not pass
            assert np.exp(ours).max() > 0.6 and (ours.std(0).max() > 0.1 or not varied), key
        else:
            assert entry["problem_type"] == "regression" and logits.shape == (len(ours), 1)
            np.testing.assert_allclose(logits[:, 0], ours, atol=1e-4, rtol=0, err_msg=key)
            assert ours.std() > 0.1 or not varied, key
        # transformers' own tokenizer from the exported files: the same ids, hence outputs, except where
        # keras-hub tokenises differently (counted): it case-folds with NFKC ("…" -> "..."), splits " 's"
        # as " " + "'s" (GPT-2's regex: " '" + "s"), and cuts long pairs round-robin (the odd token to
        # the first text; transformers' longest_first: to the second)
        own = _unpadded(arrays[f"{key}/own_ids"], arrays[f"{key}/own_mask"])
        same = [row == ids for row, ids in zip(own, _unpadded(reference["features"]["token_ids"], mask), strict=True)]
        tokenized, agreed = tokenized + len(same), agreed + sum(same)
        own_logits = arrays[f"{key}/own_logits"]
        np.testing.assert_allclose(own_logits[same], logits[same], atol=1e-4, rtol=0, err_msg=key)
    return agreed, tokenized


@pytest.mark.download  # real moviesuite sentences (cached after the first fetch)
def test_transformers_computes_what_the_keras_model_computes(model_dirs, exports, sample, tmp_path):
    pytest.importorskip("transformers")  # benchmarks/requirements-peer.txt
    pytest.importorskip("torch")
    jobs = {
        key: (path, model_dirs[key.split("/")[0]], None if key.endswith("/encoder") else key.split("/")[1])
        for key, path in exports.items()
    }
    agreed, tokenized = check_in_transformers(jobs, sample, tmp_path)
    assert agreed >= 0.9 * tokenized, (agreed, tokenized)  # 181 of 192 when written


@pytest.mark.download
def test_the_pretrained_minilm_student_in_transformers(sample, tmp_path):
    """The quickstart's encoder family for real: MiniLM-L6 (exact GELU, 30522 WordPiece tokens),
    as a 3-layer student, with a classification and a pair-regression head."""
    pytest.importorskip("transformers")
    pytest.importorskip("torch")
    tasks = [moviesuite.TASKS[name] for name in ("rt_polarity", "lee_pairs")]
    directory = build_model_dir(
        str(tmp_path / "minilm"), "minilm_l6:layers=0,2,4", tasks, max_seq_length=128, rescale=False
    )
    jobs = {
        f"minilm/{task or 'encoder'}": (
            mt.export_transformers(directory, str(tmp_path / f"hf_{task}"), task=task),
            directory,
            task,
        )
        for task in (None, "rt_polarity", "lee_pairs")
    }
    with open(os.path.join(jobs["minilm/encoder"][0], "config.json")) as handle:
        config = json.load(handle)
    assert (config["hidden_act"], config["num_hidden_layers"], config["vocab_size"]) == ("gelu", 3, 30522)
    # MiniLM's pooler (unused by sentence-transformers, which averages the tokens) gives nearly the same
    # vector for every input, so its heads barely vary: the tiny models above check the head mapping
    agreed, tokenized = check_in_transformers(jobs, sample, tmp_path, varied=False)
    assert agreed >= 0.9 * tokenized, (agreed, tokenized)


@pytest.mark.download
def test_keras_hub_reads_the_export_back_with_its_own_converter(model_dirs, exports, sample):
    import keras_hub

    texts = sample["rt_polarity"][0] + sample["trec"][0]
    for name, directory in model_dirs.items():
        model = mt.load_model(directory)
        features = _features(model, [texts])
        inputs = {k: tf.constant(v) for k, v in features.items()}
        expected = encode(model.encoder, inputs)["sequence_output"].numpy()
        for task in ("encoder", "trec"):
            path = exports[f"{name}/{task}"]
            tokenizer = keras_hub.tokenizers.Tokenizer.from_preset(path)
            assert _rows(tokenizer(tf.constant(texts))) == _rows(model.preprocessor.tokenizer(tf.constant(texts)))
            # keras-hub's converter reads no hidden_act (tanh GELU for BERT); mt.load_encoder does
            backbone = (
                mt.load_encoder(path).backbone
                if name == "bert_student"
                else keras_hub.models.Backbone.from_preset(path)
            )
            assert backbone.num_layers == model.encoder.num_layers
            found = encode(backbone, inputs)["sequence_output"].numpy()
            np.testing.assert_allclose(found, expected, atol=1e-5, rtol=0, err_msg=f"{name} {task}")


@pytest.fixture(scope="module")
def glue_model_dir(tiny_encoder_factory, tmp_path_factory):
    """GLUE's SAN pair classification (rte, mnli -> ax), a ranking task and a linear pair task."""
    ranking = define_task(
        name="qa_rank",
        type="ranking",
        text_columns=("question", "candidate"),
        labels=("answer", "other"),
        positive_label="answer",
        group_size=4,
    )
    tasks = [GLUE_TASKS[name] for name in ("rte", "mnli", "ax", "qnli")] + [ranking]
    return build_model_dir(
        str(tmp_path_factory.mktemp("glue") / "model"), "tiny", tasks, vocab_file=tiny_encoder_factory.vocab_file
    )


@pytest.mark.parametrize(
    "task, message",
    [
        ("rte", r"export_task 'rte': its head is the SAN answer module .* no class for"),
        ("ax", r"export_task 'ax': its head is the SAN answer module"),  # AX is predicted with MNLI's head
        ("qa_rank", r"export_task 'qa_rank': a ranking task; its score only orders one question's candidates"),
        ("sst2", r"export_task 'sst2': model .* has no such task; its tasks: rte, mnli, ax, qnli, qa_rank"),
    ],
)
def test_heads_without_a_transformers_class_are_refused(glue_model_dir, tmp_path, task, message):
    target = tmp_path / "hf"
    with pytest.raises(ExportError, match=message):
        mt.export_transformers(glue_model_dir, str(target), task=task)
    assert not target.exists()


WITHOUT_TRANSFORMERS = r"""
import importlib.abc, sys
class Forbid(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("transformers", "torch"):
            raise ImportError(f"{name} must not be needed to write the export")
sys.meta_path.insert(0, Forbid())
import mtkd_tf as mt
print(mt.export_transformers(sys.argv[1], sys.argv[2], task="qnli"))
"""


def test_the_checkpoint_is_written_without_transformers(glue_model_dir, tmp_path):
    target = str(tmp_path / "hf")
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_TRANSFORMERS, glue_model_dir, target],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == target and os.path.isfile(
        os.path.join(target, "model.safetensors")
    )


def test_a_linear_pair_head_exports_and_other_families_are_refused(glue_model_dir, tmp_path):
    path = mt.export_transformers(glue_model_dir, str(tmp_path / "qnli"), task="qnli")
    with open(os.path.join(path, "config.json")) as handle:
        config = json.load(handle)
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["id2label"] == {"0": "entailment", "1": "not_entailment"} and config["hidden_act"] == "gelu_new"
    assert sorted(os.listdir(path)) == [
        "config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer_config.json",
        "vocab.txt",
    ]
    with pytest.raises(ExportError, match="not empty"):
        mt.export_transformers(glue_model_dir, path)
    deberta = build_model_dir(
        str(tmp_path / "deberta"),
        "tiny_deberta_v3",
        [GLUE_TASKS["sst2"]],
        texts=["a film about a dog", "the old story was great"] * 20,
    )
    with pytest.raises(ExportError, match="its encoder is deberta_v3; export_transformers writes bert and roberta"):
        mt.export_transformers(deberta, str(tmp_path / "deberta_hf"))
    assert not (tmp_path / "deberta_hf").exists()


@pytest.mark.slow
def test_the_readme_doors_run_as_written(tiny_encoder_factory, tmp_path):
    """README's "Doors" commands and code, on a small exact-GELU BERT student in runs/quickstart/student."""
    pytest.importorskip("transformers")
    pytest.importorskip("torch")
    section = (
        open(os.path.join(ROOT, "README.md"), encoding="utf-8").read().split("\n## Doors\n", 1)[1].split("\n## ")[0]
    )
    blocks = re.findall(r"```(bash|python)\n(.*?)```", section, re.S)
    assert [language for language, _ in blocks] == ["bash", "python", "bash", "python"]
    build_model_dir(
        str(tmp_path / "runs" / "quickstart" / "student"),
        "tiny",
        [moviesuite.TASKS["rt_polarity"]],
        vocab_file=tiny_encoder_factory.vocab_file,
        exact_gelu=True,
    )
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", HF_HUB_OFFLINE="1")
    commands = [
        [sys.executable, os.path.join(ROOT, "bin", "run"), *code.split()[1:]]
        for language, code in blocks
        if language == "bash"
    ]
    commands.append([sys.executable, "-c", "\n".join(code for language, code in blocks if language == "python")])
    for command in commands:  # the two exports, then both Python examples in one process
        result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=environment)
        assert result.returncode == 0, (command[-1], result.stderr[-2000:])
    printed = result.stdout.strip().splitlines()
    assert printed[0] == "(1, 64, 64)", printed  # the preset's packing (max_seq_length 64) and the encoder's width
    assert printed[-1].startswith("{'rotten': ") and "'fresh': " in printed[-1], printed
