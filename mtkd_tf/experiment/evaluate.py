"""The last two stages: every model's outputs on dev and the held-out split, saved as the
report's evidence (`report.Evidence`), and the report built from that evidence alone."""

from __future__ import annotations

import os

import numpy as np

from mtkd_tf.data.split import HELDOUT, SplitData, ids_digest
from mtkd_tf.data.tasks import CLASSIFICATION, RANKING
from mtkd_tf.distill import ensemble, soft_labels, teacher_check
from mtkd_tf.experiment.layout import finetuned_row
from mtkd_tf.experiment.output_cache import OutputCache
from mtkd_tf.experiment.report import INPUTS, OUTPUTS, Evidence, fix_family, write_report
from mtkd_tf.experiment.stages import Stage
from mtkd_tf.models import evaluation, inference
from mtkd_tf.models import model_dir as model_dir_lib
from mtkd_tf.runtime.environment import environment
from mtkd_tf.runtime.files import read_json, write_json

HELDOUT_RULE = "the examples (ranking: questions) whose blake2b('heldout\\0' + id) sort first"


class Evaluate(Stage):
    """Every member, the ensemble, the baseline and the student (and, with fine-tuning,
    `baseline_ft` / `student_ft`: each task scored by the copy fine-tuned on it) on dev and on the
    held-out split; returns `{row: dev results}`. With fine-tuned teachers, a task's member and
    ensemble outputs are those of the members fine-tuned on it. The evidence (every row's
    per-example predictions, the histories, the soft targets' statistics) goes to the experiment
    directory, so the report can be rebuilt without the models."""

    name = "evaluate"

    def outputs(self) -> list[str]:
        return [os.path.join(self.layout.root, name) for name in (INPUTS, OUTPUTS)]

    def done(self) -> bool:
        return False  # always from the models as they are now (its outputs are evidence, not models)

    def cache(self) -> OutputCache:
        return OutputCache(self.layout.partial_dir(self.name), self.config.runtime.eval_batch_size)

    def run(self) -> dict[str, dict]:
        fix_family(self.layout.root, self.config.distillation.primary_claims)  # refuses a family changed mid-run
        data = self.ctx.data
        heldout, dev = data.heldout, data.dev
        self.announce(
            "every member, the ensemble, the baseline and the student on dev"
            + (" and the held-out split" if heldout else "")
        )
        splits = {task: {**by_split, **heldout.get(task, {})} for task, by_split in dev.items()}
        with self.cache() as cache:
            outputs = self.outputs_of(splits, cache)
            rows = {
                name: evaluation.score_outputs(
                    {task: dev[task] for task in dev if any(key[0] == task for key in found)},
                    {key: value for key, value in found.items() if key[1] != HELDOUT},
                )
                for name, found in outputs.items()
            }
            directories = {os.path.basename(os.path.normpath(d)): d for d in self.ctx.teachers.dirs()}
            directories.update({name: d for name, d in self.layout.model_dirs().items() if name in outputs})
            for name, directory in directories.items():
                write_json(os.path.join(directory, "eval_results.json"), rows[name])
            self.evidence(splits, outputs).save(self.layout.root)
        return rows

    def outputs_of(
        self, splits: dict[str, dict[str, SplitData]], cache: OutputCache | None = None
    ) -> dict[str, dict[tuple[str, str], np.ndarray]]:
        """`{row: {(task, split): head outputs}}` of every model of the report on `splits`; each
        model's outputs on each split are saved in `cache` as they are computed (a stop request
        ends the stage there, and a re-run reads them back)."""
        ctx, layout = self.ctx, self.layout
        cache = cache or self.cache()
        outputs: dict[str, dict] = {}
        member_dirs = ctx.teachers.dirs()
        by_members: dict[tuple, list[str]] = {}  # tasks that share one set of members
        for task, dirs in ctx.teachers.by_task(list(splits)).items():
            by_members.setdefault(tuple(dirs), []).append(task)
        for dirs, tasks in by_members.items() if member_dirs else ():
            subset = {task: splits[task] for task in tasks}
            each = [cache.outputs(directory, subset) for directory in dirs]
            for directory, found in zip(member_dirs, each, strict=True):
                outputs.setdefault(os.path.basename(os.path.normpath(directory)), {}).update(found)
            outputs.setdefault("ensemble", {}).update(ensemble.average_outputs(subset, each))
        shown = sorted(layout.model_dirs().items(), key=lambda item: not item[0].startswith("baseline"))
        for name, directory in shown:  # baselines first
            if model_dir_lib.exists(directory):
                outputs[name] = cache.outputs(directory, splits, name)
        seeded = sorted(layout.seeded_dirs().items(), key=lambda item: (item[0][0] != "baseline", item[0][1]))
        for (name, run), directory in seeded:
            for task, path in layout.finetuned_dirs(directory, ctx.finetune_tasks).items():
                if model_dir_lib.exists(path):
                    row = finetuned_row(name, run)
                    outputs.setdefault(row, {}).update(cache.outputs(path, {task: splits[task]}, row))
        return outputs

    def evidence(self, splits: dict[str, dict[str, SplitData]], outputs: dict[str, dict]) -> Evidence:
        """What the report is built from, with nothing that needs a model."""
        ctx, layout, config = self.ctx, self.layout, self.config
        labelled = dict(inference.labelled_splits(splits))
        predictions = {
            (row, *key): evaluation.decide(labelled[key].task, values, labelled[key].groups)
            for row, found in outputs.items()
            for key, values in found.items()
        }
        tasks = {}
        for (task, split), data in labelled.items():
            entry = tasks.setdefault(task, {"type": data.task.type, "metrics": list(data.task.metrics), "suffixes": {}})
            entry["suffixes"][split] = "" if split == HELDOUT else evaluation.split_suffix(data.task, split)
        histories = {
            row: read_json(os.path.join(d, "history.json"))
            for row, d in layout.model_dirs().items()
            if os.path.isfile(os.path.join(d, "history.json"))
        }
        selection = os.path.join(ctx.readable("teacher_dir"), os.path.basename(layout.selection_file))
        optional = lambda path: read_json(path) if os.path.isfile(path) else None  # noqa: E731
        return Evidence(
            rows=list(outputs),
            tasks=tasks,
            predictions=predictions,
            labels={key: np.asarray(data.labels) for key, data in labelled.items()},
            groups={key: np.asarray(data.groups) for key, data in labelled.items() if data.task.type == RANKING},
            teacher_tasks=list(ctx.data.teacher_tasks) if config.teachers.teacher_tasks else None,
            histories=histories,
            selection=optional(selection),
            gate=optional(layout.gate_file),
            soft_targets=self.soft_target_statistics(),
            teacher_check=optional(layout.teacher_check_file(ctx.readable("soft_labels_dir")))
            if config.teachers.teacher_check != "off"
            else None,
            trivial={
                name: teacher_check.trivial_score(data.task, data.task.metrics[0], data.labels)
                for name, data in ctx.data.train.items()
            },
            warmup_fraction=config.training.warmup_fraction,
            heldout={
                task: {
                    "from": "train",
                    "examples": len(by_split[HELDOUT]),
                    "ids_sha256": ids_digest(by_split[HELDOUT]),
                    "rule": HELDOUT_RULE,
                }
                for task, by_split in ctx.data.heldout.items()
            },
            config=config.to_dict(),
            environment=environment(ctx.precision),
            seed=config.training.seed,
            resamples=config.distillation.bootstrap_resamples,
            primary_claims=sorted(set(config.distillation.primary_claims)) or None,
        )

    def soft_target_statistics(self) -> dict[str, dict]:
        """Per distilled classification task: the soft targets on the labelled training examples
        against gold (mean probability of gold, agreement, entropy)."""
        directory = self.ctx.readable("soft_labels_dir")
        found = {}
        for name in self.ctx.data.teacher_tasks:
            data = self.ctx.data.train[name]
            path = soft_labels.path_for(directory, name)
            if data.task.type != CLASSIFICATION or not os.path.isfile(path):
                continue
            targets = soft_labels.align(soft_labels.read(path), data.task, data, self.config.distillation.temperature)
            found[name] = soft_labels.statistics(targets, data.labels)
        return found


class Report(Stage):
    """report.json (with the full config), report.md and the plots, from the saved evidence."""

    name = "report"

    def inputs(self) -> list[str]:
        return Evaluate(self.ctx).outputs()

    def outputs(self) -> list[str]:
        return [os.path.join(self.layout.root, name) for name in ("report.json", "report.md")]

    def done(self) -> bool:
        return False  # cheap, and always from the latest evidence

    def run(self) -> dict:
        self.announce(f"{os.path.join(self.layout.root, 'report.md')}")
        report, table = write_report(self.layout.root, Evidence.load(self.layout.root))
        print(table)
        return report
