"""A trained model directory: the MT-DNN, its vocabulary and how text was preprocessed.

Files of `<model_dir>`: `model.keras` (the MTDNN), `vocab.txt`, `preprocessing.json`
(lowercase, max_seq_length, encoder spec), `manifest.json` (their SHA-256, written last),
plus what training adds (`backup/`, `logs/`, `history.json`, `eval_results.json`). Files
are written under a temporary name and renamed, so a crash never leaves a half-written
model that a later stage accepts.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any

import keras

from mtkd_tf.data.preprocessing import PAD_TO_MULTIPLE_OF, Preprocessor, load_tokenizer
from mtkd_tf.errors import MtkdError
from mtkd_tf.models.families import TOKENIZER_DIR, load_saved_tokenizer, save_tokenizer
from mtkd_tf.models.mtdnn import MTDNN, in_precision
from mtkd_tf.runtime.files import disk_full, no_room, sha256, write_atomic, write_json

logger = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
VOCAB_FILE = "vocab.txt"
PREPROCESSING_FILE = "preprocessing.json"
MANIFEST_FILE = "manifest.json"  # SHA-256 of the files above, written last: the directory is complete
FILES = (MODEL_FILE, PREPROCESSING_FILE)  # and the tokenizer: vocab.txt (BERT) or tokenizer/
CONFIG_FILE = "experiment.json"  # the ExperimentConfig that trained it (written by the Experiment)


class ModelDirError(MtkdError, ValueError):
    """A model directory is missing, incomplete or corrupt."""


def save(model_dir: str, model: MTDNN, tokenizer: Any, lowercase: bool, max_seq_length: int, **settings: Any) -> None:
    """Saves model, tokenizer and preprocessing settings; the model file goes last. `tokenizer`:
    a WordPiece vocabulary (list) or BERT tokenizer (written as vocab.txt), or any keras-hub
    tokenizer (written under `tokenizer/`)."""
    import keras_hub

    os.makedirs(model_dir, exist_ok=True)
    # Either format replaces the other: `load` reads vocab.txt whenever it is there.
    if os.path.exists(os.path.join(model_dir, TOKENIZER_DIR)):
        shutil.rmtree(os.path.join(model_dir, TOKENIZER_DIR))
    if isinstance(tokenizer, list) or type(tokenizer) is keras_hub.models.BertTokenizer:
        vocabulary = tokenizer if isinstance(tokenizer, list) else tokenizer.get_vocabulary()
        write_atomic(os.path.join(model_dir, VOCAB_FILE), "".join(token + "\n" for token in vocabulary))
        tokenizer_files = [VOCAB_FILE]
    else:
        if os.path.exists(os.path.join(model_dir, VOCAB_FILE)):
            os.remove(os.path.join(model_dir, VOCAB_FILE))
        tokenizer_files = save_tokenizer(tokenizer, model_dir)
    write_json(
        os.path.join(model_dir, PREPROCESSING_FILE),
        {"lowercase": lowercase, "max_seq_length": max_seq_length, **settings},
    )
    manifest = os.path.join(model_dir, MANIFEST_FILE)
    if os.path.exists(manifest):
        os.remove(manifest)  # the directory is incomplete until the new manifest is written
    temporary = os.path.join(model_dir, f".tmp-{os.getpid()}-{MODEL_FILE}")
    try:
        model.save(temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, os.path.join(model_dir, MODEL_FILE))
    except Exception as error:
        if disk_full(error):
            raise no_room(
                os.path.join(model_dir, MODEL_FILE),
                error,
                "the model directory stays incomplete (no manifest), so nothing uses it, and a training "
                "run's checkpoints are kept until its model is saved",
            ) from None
        raise
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    written = (MODEL_FILE, PREPROCESSING_FILE, *tokenizer_files)
    write_json(manifest, {"sha256": {name: sha256(os.path.join(model_dir, name)) for name in written}})


def _tokenizer_file(model_dir: str) -> str:
    """vocab.txt (BERT WordPiece), else the saved keras-hub tokenizer's config."""
    legacy = os.path.join(model_dir, VOCAB_FILE)
    return legacy if os.path.isfile(legacy) else os.path.join(model_dir, TOKENIZER_DIR, "tokenizer.json")


def exists(model_dir: str) -> bool:
    """Whether `save` finished writing `model_dir` (its manifest is written last)."""
    return all(os.path.isfile(os.path.join(model_dir, name)) for name in (*FILES, MANIFEST_FILE)) and os.path.isfile(
        _tokenizer_file(model_dir)
    )


def complete(model_dir: str) -> bool:
    """Whether `model_dir` holds a finished, intact model (what a re-run may skip training for)."""
    if not exists(model_dir):
        return False
    try:
        verify(model_dir)
    except ModelDirError as error:
        logger.warning("%s; it will be trained again", error)
        return False
    return True


def verify(model_dir: str) -> None:
    """Checks every file against the manifest: a truncated, empty or altered model is never used."""
    manifest = os.path.join(model_dir, MANIFEST_FILE)
    try:
        with open(manifest, encoding="utf-8") as handle:
            expected = dict(json.load(handle)["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelDirError(
            f"model directory {model_dir}: {MANIFEST_FILE} is unreadable ({type(error).__name__}: "
            f"{error}); retrain the model (delete the directory and re-run)"
        ) from None
    for name, digest in expected.items():
        path = os.path.join(model_dir, name)
        if not os.path.isfile(path):
            raise ModelDirError(
                f"model directory {model_dir}: {name} is missing (listed in {MANIFEST_FILE}); "
                "retrain the model (delete the directory and re-run)"
            )
        if sha256(path) != digest:
            size = os.path.getsize(path)
            raise ModelDirError(
                f"model directory {model_dir}: {name} is corrupt (its SHA-256 differs from {MANIFEST_FILE}; "
                f"{'empty' if not size else f'{size} bytes'}); retrain the model (delete the directory and re-run)"
            )


def settings(model_dir: str) -> dict:
    """The preprocessing settings saved with a model (lowercase, max_seq_length, encoder spec)."""
    with open(os.path.join(model_dir, PREPROCESSING_FILE), encoding="utf-8") as handle:
        return json.load(handle)


def load(model_dir: str, pad_to_multiple_of: int = PAD_TO_MULTIPLE_OF, policy: str = "float32") -> MTDNN:
    """Loads a directory written by `save`: the MT-DNN with its preprocessor (it predicts from
    raw strings, `model.predict_texts`), with a clear error when something is missing.

    The encoder computes under `policy` (float32 by default, also for a model trained in
    mixed_bfloat16: metrics and served scores do not depend on the machine's precision)."""
    if not os.path.isdir(model_dir):
        raise ModelDirError(f"model directory {model_dir}: no such directory (train a model there first)")
    missing = [name for name in (*FILES, MANIFEST_FILE) if not os.path.isfile(os.path.join(model_dir, name))]
    if not os.path.isfile(_tokenizer_file(model_dir)):
        missing.append(f"{VOCAB_FILE} (or tokenizer/)")
    if missing:
        raise ModelDirError(f"model directory {model_dir}: missing {', '.join(missing)} (was training finished?)")
    verify(model_dir)
    saved = settings(model_dir)
    try:
        model = keras.saving.load_model(os.path.join(model_dir, MODEL_FILE), compile=False)
    except Exception as error:
        raise ModelDirError(
            f"model directory {model_dir}: cannot load {MODEL_FILE} ({type(error).__name__}: {error}); if it was "
            "written by another version of mtkd_tf, train it again (delete the directory and re-run the same command)"
        ) from None
    if os.path.isfile(os.path.join(model_dir, VOCAB_FILE)):
        tokenizer = load_tokenizer(os.path.join(model_dir, VOCAB_FILE), saved["lowercase"])
    else:
        tokenizer = load_saved_tokenizer(model_dir)
    model.preprocessor = Preprocessor(tokenizer, saved["max_seq_length"], pad_to_multiple_of)
    model.directory = model_dir
    return in_precision(model, policy)
