"""`ExperimentData`: an experiment's tasks and examples, read once and cached: training data
(without the held-out split, cut to `max_train_examples`), the held-out split, unlabelled text,
dev data, and the tasks that get teachers. Examples that a stage made (augmented or transfer
text, under `<model_dir>/data/`, `ExperimentLayout.made_examples`) join the unlabelled text when
they are there; they are read again whenever a file changes, so the cache stays valid while
stages add data."""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Sequence

from mtkd_tf.config import ExperimentConfig
from mtkd_tf.data.split import HELDOUT, SplitData, carve, keep_labels
from mtkd_tf.data.tasks import UNLABELLED, Task
from mtkd_tf.distill.student import teacher_task_names


class ExperimentData:
    """The data every stage reads, from `config.data` (see the module docstring)."""

    def __init__(self, config: ExperimentConfig, layout=None):
        self.config = config
        self.layout = layout  # an `ExperimentLayout`: where stages put the examples they make
        self._splits: dict[tuple, dict] = {}
        self._made: dict[tuple, SplitData] = {}

    @functools.cached_property
    def known_tasks(self) -> dict[str, Task]:
        """Every task this experiment can name: GLUE, the built-in suites, the task file's."""
        from mtkd_tf.data import suites
        from mtkd_tf.data import tasks as tasks_lib

        return tasks_lib.registry(self.config.data.task_file, extra=suites.suite_tasks())

    @functools.cached_property
    def tasks(self) -> list[Task]:
        from mtkd_tf.data import tasks as tasks_lib

        data = self.config.data
        tasks = tasks_lib.with_answer_modules(tasks_lib.resolve_tasks(data.tasks, self.known_tasks), data.answer_module)
        if data.data_source == "hf":  # a task file's task without labels takes its ClassLabel's names
            from mtkd_tf.data import hf_datasets

            tasks = hf_datasets.with_label_names(tasks, self.data_dir)
        return tasks

    @functools.cached_property
    def data_dir(self) -> str | None:
        data = self.config.data
        if data.suite:
            from mtkd_tf.data import suites

            return suites.suite_dir(data.suite, data.suite_size, seed=0)
        return data.data_dir

    def load(self, tasks: Sequence[Task], split: str, limit: int = 0) -> dict[str, dict[str, SplitData]]:
        """`{task: {split name: data}}` of `split` ("train", "dev", "test" or "unlabelled"), cut to `limit`."""
        from mtkd_tf.data import readers

        data = self.config.data
        key = (split, limit, tuple(task.name for task in tasks))
        if key not in self._splits:
            loaded = readers.load_splits(
                tasks,
                split,
                source=data.data_source,
                data_dir=self.data_dir,
                skip_bad_rows=data.skip_bad_rows,
                tfds_download=data.tfds_download,
            )
            self._splits[key] = {
                task: {name: part.take(limit) for name, part in by_split.items()} for task, by_split in loaded.items()
            }
        return self._splits[key]

    @property
    def trainable(self) -> list[Task]:
        return [task for task in self.tasks if task.trainable]

    @property
    def train(self) -> dict[str, SplitData]:
        """Each trained task's labelled training examples: without the held-out split, cut to
        `max_train_examples`, and (teacher tasks, `labelled_fraction` < 1) their labelled part."""
        return {name: parts[0] for name, parts in self._labelled.items()}

    @functools.cached_property
    def _labelled(self) -> dict[str, tuple[SplitData, SplitData | None]]:
        """`{task: (labelled, unlabelled rest or None)}` of the training data."""
        data = self.config.data
        if not data.heldout_examples:
            found = {
                name: s["train"] for name, s in self.load(self.trainable, "train", data.max_train_examples).items()
            }
        else:
            found = {name: rest.take(data.max_train_examples) for name, (rest, _) in self._carved.items()}
        if data.labelled_fraction == 1:
            return {name: (split, None) for name, split in found.items()}
        teacher_tasks = set(self.teacher_tasks)
        return {
            name: keep_labels(split, data.labelled_fraction) if name in teacher_tasks else (split, None)
            for name, split in found.items()
        }

    @functools.cached_property
    def _carved(self) -> dict[str, tuple[SplitData, SplitData]]:
        return {
            name: carve(s["train"], self.config.data.heldout_examples)
            for name, s in self.load(self.trainable, "train").items()
        }

    @property
    def heldout(self) -> dict[str, dict[str, SplitData]]:
        """`{task: {"heldout": data}}`: the labelled split the report tests the claims on (none
        without `heldout_examples`); carved from each task's training data, never trained on."""
        if not self.config.data.heldout_examples:
            return {}
        return {name: {HELDOUT: held} for name, (_, held) in self._carved.items()}

    @property
    def unlabelled(self) -> dict[str, SplitData]:
        """Extra text without labels: a task source's unlabelled file, and the training examples
        that `labelled_fraction` took the labels from."""
        extra = [task for task in self.trainable if UNLABELLED in task.source.files]
        found = {name: s[UNLABELLED] for name, s in self.load(extra, UNLABELLED).items()}
        for name, (_, rest) in self._labelled.items():
            if rest is not None:
                found[name] = dataclasses.replace(found[name].concat(rest), labels=None) if name in found else rest
        for name, made in self.made().items():
            found[name] = dataclasses.replace(found[name].concat(made), labels=None) if name in found else made
        return found

    def made(self) -> dict[str, SplitData]:
        """`{task: examples}` that stages wrote under the experiment directory (none without a layout)."""
        from mtkd_tf.data.examples_file import read_examples

        files = self.layout.made_example_files() if self.layout is not None else {}
        tasks = {task.name: task for task in self.trainable}
        found = {}
        for name, paths in files.items():
            if name not in tasks:
                continue
            for path in paths:
                stat = os.stat(path)
                key = (path, stat.st_mtime_ns, stat.st_size)
                if key not in self._made:
                    self._made[key] = read_examples(path, tasks[name])
                found[name] = found[name].concat(self._made[key]) if name in found else self._made[key]
        return {name: dataclasses.replace(data, labels=None) for name, data in found.items()}

    @property
    def dev(self) -> dict[str, dict[str, SplitData]]:
        return self.load(self.tasks, "dev", self.config.data.max_eval_examples)

    @property
    def texts(self) -> list[str]:
        """The training text (a random encoder's vocabulary is learned from it)."""
        return [text for data in self.train.values() for text in data.text_a + (data.text_b or [])]

    @property
    def teacher_tasks(self) -> list[str]:
        return teacher_task_names(self.tasks, self.config.teachers.teacher_tasks)

    def soft_label_data(self) -> dict[str, list[SplitData]]:
        """What the teachers label, per teacher task: its training data and its unlabelled text."""
        unlabelled = self.unlabelled
        return {
            name: [self.train[name]] + ([unlabelled[name]] if name in unlabelled else []) for name in self.teacher_tasks
        }
