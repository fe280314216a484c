"""Model outputs saved as they are computed, so an interrupted evaluation resumes where it stopped.

Evaluating a pipeline runs every model (members, students, baselines, fine-tuned copies) over
every labelled split. `OutputCache.outputs` saves each model's head outputs on each split under
`<directory>/<model>-<task>-<split>-<key>.npy` as soon as they exist, keyed by the model's manifest
checksum, the split's data fingerprint and the batch size, and checks for a stop request
(`preemption`) after each one: on SIGTERM or SIGINT the split being computed is finished and saved,
then `Preempted` is raised, and a re-run reads the saved outputs instead of computing them again.
Outputs are a pure function of model, data and batch size, so the resumed evaluation is the
uninterrupted one, bit for bit. A damaged file is recomputed with a warning, never used.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
from typing import Mapping

import numpy as np

from mtkd_tf.data.split import SplitData
from mtkd_tf.models import inference
from mtkd_tf.models import model_dir as model_dir_lib
from mtkd_tf.runtime.files import write_atomic
from mtkd_tf.training import preemption

logger = logging.getLogger("mtkd_tf")


class OutputCache:
    """Head outputs of saved models on labelled splits, computed once and kept in `directory`."""

    def __init__(self, directory: str, batch_size: int = 128):
        self.directory = directory
        self.batch_size = batch_size
        self._models: dict[str, object] = {}

    def outputs(
        self, model_dir: str, splits: Mapping[str, Mapping[str, SplitData]], name: str | None = None, model=None
    ) -> dict[tuple[str, str], np.ndarray]:
        """`{(task, split): outputs}` of the model in `model_dir` on every labelled split (as
        `inference.dev_outputs`); `name` labels its files (default: the directory's name); `model`:
        the model already loaded from `model_dir` (default: loaded when an output is missing)."""
        name = name or os.path.basename(os.path.normpath(model_dir))
        if model is not None:
            self._models = {model_dir: model}
        found = {}
        for key, data in inference.labelled_splits(splits):
            path = self._path(model_dir, name, data)
            values = self._read(path, len(data))
            if values is None:
                values = inference.predict_outputs(self._model(model_dir), data, self.batch_size)
                buffer = io.BytesIO()
                np.save(buffer, values)
                write_atomic(path, buffer.getvalue())
                preemption.check(f"after saving the outputs of {model_dir} on {key[0]}/{key[1]} ({path})")
            found[key] = values
        self._models.pop(model_dir, None)  # one model in memory at a time
        return found

    def remove(self) -> None:
        """Deletes the saved outputs, and the folder holding them if that is left empty."""
        shutil.rmtree(self.directory, ignore_errors=True)
        self._models.clear()
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(os.path.normpath(self.directory)))

    def __enter__(self) -> OutputCache:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        """Cleans up after a finished evaluation; an interrupted one keeps its outputs to resume from."""
        if kind is None:
            self.remove()

    def _model(self, model_dir: str):
        if model_dir not in self._models:
            self._models = {model_dir: model_dir_lib.load(model_dir)}
        return self._models[model_dir]

    def _path(self, model_dir: str, name: str, data: SplitData) -> str:
        with open(os.path.join(model_dir, model_dir_lib.MANIFEST_FILE), "rb") as handle:
            model = hashlib.sha256(handle.read()).hexdigest()
        key = hashlib.sha256(json.dumps([model, data.fingerprint(), self.batch_size]).encode()).hexdigest()[:16]
        return os.path.join(self.directory, f"{name}-{data.task.name}-{data.split}-{key}.npy")

    @staticmethod
    def _read(path: str, rows: int) -> np.ndarray | None:
        try:
            values = np.load(path, allow_pickle=False)
            if len(values) != rows or not np.all(np.isfinite(values)):
                raise ValueError(f"{len(values)} rows for {rows} examples, or non-finite values")
        except FileNotFoundError:
            return None
        except Exception as error:  # a damaged file is recomputed, never used
            logger.warning("saved outputs %s are unusable (%s); computing them again", path, error)
            return None
        return values
