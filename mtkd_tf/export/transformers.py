"""The student in Hugging Face transformers' format, written without transformers installed.

`export_transformers(model_dir, target, task=None)` writes a checkpoint directory that
`transformers.AutoModel` / `AutoModelForSequenceClassification` / `AutoTokenizer` load, and that
keras-hub's own converter reads back (`keras_hub.models.Backbone.from_preset(target)`):
`config.json`, `model.safetensors` (tensor names as transformers writes them, the reverse of
keras-hub's `convert_bert.py` / `convert_roberta.py`) and the tokenizer files (`vocab.txt` for
BERT, `vocab.json` + `merges.txt` for RoBERTa, with `tokenizer_config.json` and
`special_tokens_map.json`). keras-hub 0.32's own Hugging Face exporter covers decoder LMs only.

- Families: BERT (MiniLM and other BERT checkpoints, tanh or exact GELU; layer-subset students)
  and RoBERTa. Others are refused; `export_preset` writes any family for keras-hub.
- `task=None`: the encoder alone (`BertModel` with its pooler, or `RobertaModel`).
- `task=<name>`, a classification or regression task with the linear head:
  `BertForSequenceClassification` / `RobertaForSequenceClassification` (`num_labels`,
  `id2label`/`label2id`, `problem_type`), computing the same logits as our head:
  * BERT: ours is `W^T pooler([CLS])`, the pooler being BERT's tanh dense; transformers'
    classifier is that pooler + dropout + dense: the same function, the weights copied.
  * RoBERTa: ours is `W^T x` on the `<s>` vector; transformers' head is
    `out_proj(tanh(dense(x)))`, with a dense + tanh layer ours lacks. It is written as
    `dense = eps * I`, `out_proj = W / eps`, with `eps` chosen from the last LayerNorm's weights
    so that every `|eps * x_i| <= 1e-3` (after LayerNorm `|x_i| <= |gamma_i| sqrt(H - 1) +
    |beta_i|`): tanh is then linear to within 3.4e-7 relative, below float32 rounding. Exact
    for inference; to fine-tune further in transformers, re-initialise that head.
- Refused, with the reason: the SAN answer module (K attention-and-GRU steps over both segments'
  token vectors) and ranking heads (a score compared within one question's candidates), which
  have no transformers equivalent.

Tokenisation follows the model's: lower-casing without accent stripping, as keras-hub's
`BertTokenizer` does (`strip_accents: false`); keras-hub case-folds with Unicode NFKC where
transformers lower-cases, so the two can differ on rare characters (ligatures, full-width forms).

>>> mt.export_transformers("runs/quickstart/student", "exports/student_hf", task="rt_polarity")
>>> from transformers import AutoModelForSequenceClassification, AutoTokenizer
>>> model = AutoModelForSequenceClassification.from_pretrained("exports/student_hf")
>>> tokenizer = AutoTokenizer.from_pretrained("exports/student_hf")
>>> model(**tokenizer(["a gripping film"], return_tensors="pt")).logits.softmax(-1)
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import numpy as np

from mtkd_tf.data.tasks import CLASSIFICATION, RANKING, REGRESSION, Task
from mtkd_tf.export.saved_model import ExportError
from mtkd_tf.models import model_dir as model_dir_lib
from mtkd_tf.models.families import family_of
from mtkd_tf.runtime.files import is_empty_target, new_directory, write_atomic, write_json
from mtkd_tf.version import __version__

logger = logging.getLogger(__name__)

FAMILIES = ("bert", "roberta")
_HF_ACTIVATIONS = {"gelu": "gelu", "gelu_approximate": "gelu_new"}  # keras -> transformers' hidden_act
ROBERTA_POSITION_OFFSET = 2  # transformers' RoBERTa numbers positions from padding_idx + 1 = 2
TANH_ARGUMENT = 1e-3  # the RoBERTa head's largest tanh argument: tanh(u) = u (1 - d), 0 <= d <= u^2 / 3


def _array(variable) -> np.ndarray:
    return np.ascontiguousarray(
        np.asarray(variable.numpy() if hasattr(variable, "numpy") else variable, dtype=np.float32)
    )


def _norm(layer, name: str) -> dict[str, np.ndarray]:
    return {f"{name}.weight": _array(layer.gamma), f"{name}.bias": _array(layer.beta)}


def _dense(layer, name: str) -> dict[str, np.ndarray]:
    """A Keras Dense ([in, out] kernel) as a torch Linear ([out, in] weight)."""
    return {f"{name}.weight": _array(layer.kernel).T.copy(), f"{name}.bias": _array(layer.bias)}


def encoder_layer_tensors(layer, prefix: str) -> dict[str, np.ndarray]:
    """One keras-hub `TransformerEncoder` (post-LayerNorm) under transformers' BERT/RoBERTa names."""
    if getattr(layer, "normalize_first", False):
        raise ExportError(f"{layer.name}: a pre-LayerNorm transformer layer has no BERT/RoBERTa equivalent")
    attention = layer._self_attention_layer
    tensors: dict[str, np.ndarray] = {}
    for name in ("query", "key", "value"):
        dense = getattr(attention, f"{name}_dense")
        kernel = _array(dense.kernel)  # [hidden, heads, head_dim]
        tensors[f"{prefix}attention.self.{name}.weight"] = kernel.reshape(kernel.shape[0], -1).T.copy()
        tensors[f"{prefix}attention.self.{name}.bias"] = _array(dense.bias).reshape(-1)
    output = _array(attention.output_dense.kernel)  # [heads, head_dim, hidden]
    tensors[f"{prefix}attention.output.dense.weight"] = output.reshape(-1, output.shape[-1]).T.copy()
    tensors[f"{prefix}attention.output.dense.bias"] = _array(attention.output_dense.bias)
    tensors.update(_norm(layer._self_attention_layer_norm, f"{prefix}attention.output.LayerNorm"))
    tensors.update(_dense(layer._feedforward_intermediate_dense, f"{prefix}intermediate.dense"))
    tensors.update(_dense(layer._feedforward_output_dense, f"{prefix}output.dense"))
    tensors.update(_norm(layer._feedforward_layer_norm, f"{prefix}output.LayerNorm"))
    return tensors


def _common_config(backbone, tokenizer, architecture: str, model_type: str) -> dict[str, Any]:
    return {
        "architectures": [architecture],
        "model_type": model_type,
        "vocab_size": int(backbone.vocabulary_size),
        "hidden_size": int(backbone.hidden_dim),
        "num_hidden_layers": int(backbone.num_layers),
        "num_attention_heads": int(backbone.num_heads),
        "intermediate_size": int(backbone.intermediate_dim),
        "hidden_dropout_prob": float(backbone.dropout),
        "attention_probs_dropout_prob": float(backbone.dropout),
        "initializer_range": 0.02,
        "position_embedding_type": "absolute",
        "pad_token_id": int(tokenizer.pad_token_id),
        "dtype": "float32",
    }


def bert_checkpoint(backbone, tokenizer, architecture: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A keras-hub `BertBackbone` (or mtkd_tf's exact-GELU `BertEncoderBackbone`) as a transformers
    BERT checkpoint: tensors (with the `bert.` prefix, as transformers' task models save them) and config."""
    activation = getattr(backbone, "hidden_activation", "gelu_approximate")
    if activation not in _HF_ACTIVATIONS:
        raise ExportError(
            f"BERT encoder with feed-forward activation {activation!r}: transformers' names only "
            f"{', '.join(_HF_ACTIVATIONS)} among ours"
        )
    tensors = {
        "bert.embeddings.word_embeddings.weight": _array(backbone.get_layer("token_embedding").embeddings),
        "bert.embeddings.position_embeddings.weight": _array(
            backbone.get_layer("position_embedding").position_embeddings
        ),
        "bert.embeddings.token_type_embeddings.weight": _array(backbone.get_layer("segment_embedding").embeddings),
        **_norm(backbone.get_layer("embeddings_layer_norm"), "bert.embeddings.LayerNorm"),
        **_dense(backbone.get_layer("pooled_dense"), "bert.pooler.dense"),
    }
    for index, layer in enumerate(backbone.transformer_layers):
        tensors.update(encoder_layer_tensors(layer, f"bert.encoder.layer.{index}."))
    config = {
        **_common_config(backbone, tokenizer, architecture, "bert"),
        "hidden_act": _HF_ACTIVATIONS[activation],
        "max_position_embeddings": int(backbone.max_sequence_length),
        "type_vocab_size": int(backbone.num_segments),
        "layer_norm_eps": 1e-12,
    }
    return tensors, config


def roberta_checkpoint(backbone, tokenizer, architecture: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A keras-hub `RobertaBackbone` as a transformers RoBERTa checkpoint: positions shifted by
    `ROBERTA_POSITION_OFFSET` (rows 0-1 are never used by unpadded tokens), zero token-type
    embeddings (keras-hub's RoBERTa has none)."""
    if tokenizer.pad_token_id != ROBERTA_POSITION_OFFSET - 1:
        raise ExportError(
            f"RoBERTa tokenizer with <pad> id {tokenizer.pad_token_id}: transformers numbers positions "
            f"from the pad id + 1 and keras-hub reads them from {ROBERTA_POSITION_OFFSET}, which "
            f"agree only for pad id {ROBERTA_POSITION_OFFSET - 1}"
        )
    hidden = int(backbone.hidden_dim)
    positions = _array(backbone.embeddings.position_embedding.position_embeddings)
    tensors = {
        "roberta.embeddings.word_embeddings.weight": _array(backbone.token_embedding.embeddings),
        "roberta.embeddings.position_embeddings.weight": np.concatenate(
            [np.zeros((ROBERTA_POSITION_OFFSET, hidden), np.float32), positions]
        ),
        "roberta.embeddings.token_type_embeddings.weight": np.zeros((1, hidden), np.float32),
        **_norm(backbone.embeddings_layer_norm, "roberta.embeddings.LayerNorm"),
    }
    for index, layer in enumerate(backbone.transformer_layers):
        tensors.update(encoder_layer_tensors(layer, f"roberta.encoder.layer.{index}."))
    config = {
        **_common_config(backbone, tokenizer, architecture, "roberta"),
        "hidden_act": "gelu",
        "max_position_embeddings": int(backbone.max_sequence_length) + ROBERTA_POSITION_OFFSET,
        "type_vocab_size": 1,
        "layer_norm_eps": 1e-5,
        "bos_token_id": int(tokenizer.start_token_id),
        "eos_token_id": int(tokenizer.end_token_id),
    }
    return tensors, config


def linear_through_tanh(kernel: np.ndarray, bias: np.ndarray, backbone) -> dict[str, np.ndarray]:
    """transformers' `RobertaClassificationHead` (`out_proj(tanh(dense(x)))`) set to compute `W^T x + b`
    on the encoder's `<s>` vector x: `dense = eps I`, `out_proj = W / eps` (see the module docstring)."""
    norm = backbone.transformer_layers[-1]._feedforward_layer_norm  # x is this LayerNorm's output
    hidden = int(backbone.hidden_dim)
    bound = float(np.max(np.abs(_array(norm.gamma)) * np.sqrt(hidden - 1) + np.abs(_array(norm.beta))))
    epsilon = TANH_ARGUMENT / max(bound, 1e-30)
    return {
        "classifier.dense.weight": (np.eye(hidden) * epsilon).astype(np.float32),
        "classifier.dense.bias": np.zeros(hidden, np.float32),
        "classifier.out_proj.weight": np.ascontiguousarray((kernel.T / epsilon).astype(np.float32)),
        "classifier.out_proj.bias": bias.astype(np.float32),
    }


CHECKPOINTS = {"bert": ("Bert", bert_checkpoint), "roberta": ("Roberta", roberta_checkpoint)}


def exported_head(model, task_name: str, model_dir: str) -> tuple[Task, Any]:
    """The task whose head goes with the encoder (AX -> MNLI's) and that head; refuses heads
    transformers has no class for."""
    try:
        task = model.task(task_name)
    except KeyError:
        raise ExportError(
            f"export_task {task_name!r}: model {model_dir} has no such task; its tasks: "
            f"{', '.join(t.name for t in model.all_tasks)}",
            "export_task",
        ) from None
    head_task = model.task(task.predict_with) if task.predict_with else task
    head = model.heads[head_task.name]
    if head_task.type == RANKING:
        raise ExportError(
            f"export_task {task_name!r}: a ranking task; its score only orders one question's candidates "
            "against each other (a softmax within each group), which no transformers head does. Export "
            "the encoder alone (no export_task) or a classification/regression task",
            "export_task",
        )
    if getattr(head, "reads_tokens", False):
        raise ExportError(
            f"export_task {task_name!r}: its head is the SAN answer module (K steps of attention and a "
            "GRU over both segments' token vectors), which transformers has no class for. Export the "
            "encoder alone (no export_task), or train the task with answer_module linear "
            f"(--answer_module={head_task.name}=linear)",
            "export_task",
        )
    if head_task.type not in (CLASSIFICATION, REGRESSION) or not hasattr(head, "dense"):
        raise ExportError(
            f"export_task {task_name!r}: a {head_task.type} head of type {type(head).__name__} "
            "has no transformers equivalent",
            "export_task",
        )
    return head_task, head


def _head_config(task: Task) -> dict[str, Any]:
    labels = list(task.labels) if task.type == CLASSIFICATION else [task.name]
    return {
        "id2label": {str(i): label for i, label in enumerate(labels)},
        "label2id": {label: i for i, label in enumerate(labels)},
        "problem_type": "single_label_classification" if task.type == CLASSIFICATION else "regression",
        "classifier_dropout": float(task.dropout),
    }


def write_bert_tokenizer(tokenizer, directory: str, max_length: int) -> None:
    """vocab.txt (keras-hub's own asset), tokenizer_config.json and special_tokens_map.json."""
    tokenizer.save_assets(directory)
    os.replace(os.path.join(directory, "vocabulary.txt"), os.path.join(directory, "vocab.txt"))
    special = {
        "unk_token": tokenizer.oov_token,
        "sep_token": tokenizer.sep_token,
        "pad_token": tokenizer.pad_token,
        "cls_token": tokenizer.cls_token,
        "mask_token": tokenizer.mask_token,
    }
    write_json(
        os.path.join(directory, "tokenizer_config.json"),
        {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": bool(tokenizer.lowercase),
            "strip_accents": bool(tokenizer.strip_accents),
            "tokenize_chinese_chars": bool(tokenizer.split_on_cjk),
            "model_max_length": max_length,
            **special,
        },
    )
    write_json(os.path.join(directory, "special_tokens_map.json"), special)


def write_roberta_tokenizer(tokenizer, directory: str, max_length: int) -> None:
    """vocab.json and merges.txt (with the `#version` line transformers' files have),
    tokenizer_config.json and special_tokens_map.json."""
    write_atomic(os.path.join(directory, "vocab.json"), json.dumps(dict(tokenizer.vocabulary), ensure_ascii=False))
    merges = [merge for merge in tokenizer.merges if not merge.startswith("#version")]
    write_atomic(os.path.join(directory, "merges.txt"), "#version: 0.2\n" + "".join(f"{merge}\n" for merge in merges))
    special = {
        "bos_token": tokenizer.start_token,
        "eos_token": tokenizer.end_token,
        "sep_token": tokenizer.end_token,
        "cls_token": tokenizer.start_token,
        "pad_token": tokenizer.pad_token,
        "mask_token": tokenizer.mask_token,
    }
    if "<unk>" in tokenizer.vocabulary:
        special["unk_token"] = "<unk>"
    write_json(
        os.path.join(directory, "tokenizer_config.json"),
        {
            "tokenizer_class": "RobertaTokenizer",
            "add_prefix_space": False,
            "trim_offsets": True,
            "errors": "replace",
            "model_max_length": max_length,
            **special,
        },
    )
    write_json(os.path.join(directory, "special_tokens_map.json"), special)


TOKENIZER_WRITERS = {"bert": write_bert_tokenizer, "roberta": write_roberta_tokenizer}


def export_transformers(model_dir: str, target: str, task: str | None = None) -> str:
    """Writes the model in `model_dir` as a transformers checkpoint directory `target` (new, or
    empty): the encoder alone, or with `task`'s head as `...ForSequenceClassification`; returns `target`."""
    from safetensors.numpy import save_file

    if not is_empty_target(target):
        raise ExportError(
            f"export_dir {target}: exists and is not empty; a checkpoint is written into a new directory", "export_dir"
        )
    trained = model_dir_lib.load(model_dir)
    backbone, tokenizer = trained.encoder, trained.preprocessor.tokenizer
    family = family_of(backbone)
    if family.name not in CHECKPOINTS:
        raise ExportError(
            f"model {model_dir}: its encoder is {family.name}; export_transformers writes "
            f"{' and '.join(FAMILIES)} encoders (MiniLM is BERT); export_preset writes any family "
            "for keras-hub"
        )
    head_task, head = exported_head(trained, task, model_dir) if task else (None, None)
    prefix, checkpoint = CHECKPOINTS[family.name]
    architecture = f"{prefix}ForSequenceClassification" if head is not None else f"{prefix}Model"
    tensors, config = checkpoint(backbone, tokenizer, architecture)
    if head is not None:
        kernel, bias = _array(head.dense.kernel), _array(head.dense.bias)
        if family.name == "bert":
            tensors.update({"classifier.weight": kernel.T.copy(), "classifier.bias": bias})
        else:
            tensors.update(linear_through_tanh(kernel, bias, backbone))
        config.update(_head_config(head_task))
    config["mtkd_tf"] = {
        "version": __version__,
        "encoder": model_dir_lib.settings(model_dir).get("encoder"),
        "task": task,
        "max_seq_length": trained.preprocessor.sequence_length,
    }
    with new_directory(target) as staging:
        save_file(tensors, os.path.join(staging, "model.safetensors"), metadata={"format": "pt"})
        write_json(os.path.join(staging, "config.json"), config)
        TOKENIZER_WRITERS[family.name](tokenizer, staging, trained.preprocessor.sequence_length)
    logger.info("transformers %s of %s -> %s", architecture, model_dir, target)
    return target
