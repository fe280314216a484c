"""A trained model directory: the MT-DNN, its vocabulary and how text was preprocessed.

Layout of `<model_dir>`: `model.keras` (the MTDNN), `vocab.txt`, `preprocessing.json`
(lowercase, max_seq_length, encoder spec), plus what training adds (`backup/`, `logs/`,
`history.json`, `eval_results.json`). Files are written under a temporary name and
renamed, so a crash never leaves a half-written model that a later stage accepts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Any

import keras

from mtkd_tf.data.preprocessing import Preprocessor, load_tokenizer
from mtkd_tf.models.mtdnn import MTDNN

MODEL_FILE = "model.keras"
VOCAB_FILE = "vocab.txt"
PREPROCESSING_FILE = "preprocessing.json"


class ModelDirError(ValueError):
    """A model directory is missing, incomplete or corrupt."""


@dataclasses.dataclass
class TrainedModel:
    model: MTDNN
    preprocessor: Preprocessor
    settings: dict[str, Any]
    directory: str

    @property
    def vocabulary(self) -> list[str]:
        return list(self.preprocessor.tokenizer.get_vocabulary())


def write_atomic(path: str, text: str) -> None:
    """Writes text to `path` via a temporary file in the same directory and a rename."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def write_json(path: str, value: Any) -> None:
    write_atomic(path, json.dumps(value, indent=2, sort_keys=False) + "\n")


def save(model_dir: str, model: MTDNN, vocabulary: list[str], lowercase: bool, max_seq_length: int,
         **settings: Any) -> None:
    """Saves model, vocabulary and preprocessing settings; the model file goes last."""
    os.makedirs(model_dir, exist_ok=True)
    write_atomic(os.path.join(model_dir, VOCAB_FILE), "".join(token + "\n" for token in vocabulary))
    write_json(
        os.path.join(model_dir, PREPROCESSING_FILE),
        {"lowercase": lowercase, "max_seq_length": max_seq_length, **settings},
    )
    temporary = os.path.join(model_dir, f".tmp-{os.getpid()}-{MODEL_FILE}")
    try:
        model.save(temporary)
        os.replace(temporary, os.path.join(model_dir, MODEL_FILE))
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def exists(model_dir: str) -> bool:
    return all(os.path.isfile(os.path.join(model_dir, name)) for name in (MODEL_FILE, VOCAB_FILE, PREPROCESSING_FILE))


def load(model_dir: str, pad_to_multiple_of: int = 16) -> TrainedModel:
    """Loads a directory written by `save`, with a clear error when something is missing."""
    if not os.path.isdir(model_dir):
        raise ModelDirError(f"model directory {model_dir}: no such directory (train a model there first)")
    missing = [name for name in (MODEL_FILE, VOCAB_FILE, PREPROCESSING_FILE) if not os.path.isfile(os.path.join(model_dir, name))]
    if missing:
        raise ModelDirError(f"model directory {model_dir}: missing {', '.join(missing)} (was training finished?)")
    with open(os.path.join(model_dir, PREPROCESSING_FILE), encoding="utf-8") as handle:
        settings = json.load(handle)
    try:
        model = keras.saving.load_model(os.path.join(model_dir, MODEL_FILE), compile=False)
    except Exception as error:
        raise ModelDirError(f"model directory {model_dir}: cannot load {MODEL_FILE}: {error}") from None
    tokenizer = load_tokenizer(os.path.join(model_dir, VOCAB_FILE), settings["lowercase"])
    preprocessor = Preprocessor(tokenizer, settings["max_seq_length"], pad_to_multiple_of)
    return TrainedModel(model, preprocessor, settings, model_dir)
