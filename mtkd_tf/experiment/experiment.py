"""`Experiment`: the paper's procedure end to end from one `ExperimentConfig`, as a list of stages.

    teachers -> soft labels -> distilled student (+ the plain MT-DNN baseline) -> evaluation -> report

>>> import mtkd_tf as mt
>>> config = mt.ExperimentConfig.from_flagfile("configs/tiny.cfg", model_dir="runs/kd", epochs=3)
>>> report = mt.Experiment(config).run()          # or stage by stage:
>>> experiment = mt.Experiment(config)
>>> experiment.teachers(); experiment.soft_labels(); student = experiment.student()
>>> student.predict_texts("sst2", ["a gripping film"])["label"]

`run()` walks `stages()` (mtkd_tf/experiment/stages.py). Calling a stage skips it when its
outputs exist and validate, so running the same experiment again resumes where it stopped, and a
stage interrupted mid-way resumes from its last checkpoint. Where each stage writes is
`ExperimentLayout`'s; what each stage may use (data, strategy, callbacks, clock) is the `Context`.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

import keras

from mtkd_tf.config import ExperimentConfig
from mtkd_tf.errors import ConfigError
from mtkd_tf.experiment import report as report_lib
from mtkd_tf.experiment import stages as stages_lib
from mtkd_tf.experiment.context import Context
from mtkd_tf.experiment.data import ExperimentData
from mtkd_tf.experiment.evaluate import Evaluate, Report
from mtkd_tf.experiment.gate import Gate
from mtkd_tf.experiment.layout import ExperimentLayout
from mtkd_tf.models import model_dir as model_dir_lib
from mtkd_tf.models.mtdnn import MTDNN
from mtkd_tf.runtime.directory_lock import DirectoryLock
from mtkd_tf.runtime.progress import duration
from mtkd_tf.training import distribute, preemption

logger = logging.getLogger("mtkd_tf")


class Experiment:
    """One run of the method, configured by an `ExperimentConfig` (see the module docstring).

    Args:
        config: every setting; `config.runtime.model_dir` is the experiment directory.
        strategy: a `tf.distribute.Strategy` (default: the one `config.runtime.strategy` names,
            created before any other TF op, as MultiWorkerMirroredStrategy requires).
        callbacks: Keras callbacks added to every training run (teachers, student, baseline).
    """

    def __init__(self, config: ExperimentConfig, strategy=None, callbacks: Sequence[keras.callbacks.Callback] = ()):
        config = config.validate()
        runtime = config.runtime
        if not runtime.model_dir:
            raise ConfigError("model_dir is required", "model_dir")
        strategy = strategy or distribute.get_strategy(runtime.strategy, runtime.num_gpus, runtime.tpu)
        preemption.reclaim()  # multi-worker: TensorFlow took SIGTERM over (see there)
        if runtime.deterministic:
            import tensorflow as tf

            tf.config.experimental.enable_op_determinism()
        precision = distribute.set_precision(runtime.mixed_precision)  # what `auto` resolved to
        layout = ExperimentLayout.of(config, lambda path: distribute.worker_dir(path, strategy))
        # `shared`: what earlier runs wrote; differs from `layout` only on non-chief workers, which
        # read the chief's teachers and soft labels unless they made their own.
        self.ctx = Context(
            config,
            ExperimentData(config, layout),
            layout,
            ExperimentLayout.of(config),
            strategy,
            precision,
            list(callbacks),
        )
        self.config, self.data, self.layout, self.strategy = config, self.ctx.data, layout, strategy

    # --- the pipeline ----------------------------------------------------------------------------
    def stages(self) -> list[stages_lib.Stage]:
        """The pipeline, in order: what `run()` walks and what its time estimate adds up."""
        ctx, config = self.ctx, self.config
        found: list[stages_lib.Stage] = []
        if ctx.teachers.needed or not ctx.teachers.from_files:  # every task's targets from a file: no members
            found.append(stages_lib.Teachers(ctx))
            if ctx.teachers.pooled:
                found.append(stages_lib.Selection(ctx))
            if ctx.teachers.finetuned:
                found.append(stages_lib.TeacherFinetune(ctx))
        gated = config.teachers.gate_margin is not None
        if gated:
            found += [stages_lib.baseline_stage(ctx, 0), Gate(ctx)]
        found.append(stages_lib.SoftLabels(ctx))
        for name, run in self.layout.seeded_dirs():
            if not (gated and (name, run) == ("baseline", 0)):
                found.append((stages_lib.student_stage if name == "student" else stages_lib.baseline_stage)(ctx, run))
        if self.layout.variant_dirs():
            found.append(stages_lib.Variants(ctx))
        if config.finetune.finetune_epochs and config.finetune.finetune_student:
            found.append(stages_lib.Finetune(ctx))
        return found + [Evaluate(ctx), Report(ctx)]

    def run(self) -> dict:
        """The whole pipeline: every stage in order, each skipped when already done; returns the report."""
        with preemption.stop_on_signals(self.config.runtime.stop_grace_seconds), self.lock():
            return self._run()

    def _run(self) -> dict:
        ctx = self.ctx
        ctx.validate()
        report_lib.fix_family(self.layout.root, self.config.distillation.primary_claims)  # before the first stage
        started, stages = time.time(), self.stages()
        for stage in stages:
            ctx.clock.plan(stage.steps())
        result = None
        try:
            for number, stage in enumerate(stages, start=1):
                ctx.position = (number, len(stages))
                result = stage()
                stopped = stage.stop_report(result)
                if stopped is not None:
                    return stopped
        finally:
            ctx.position = None
        logger.info("experiment finished in %s: %s", duration(time.time() - started), self.layout.root)
        return result

    def lock(self) -> DirectoryLock:
        """The lock of this process's experiment directory (`with experiment.lock(): ...`)."""
        return self.ctx.lock()

    def validate(self) -> None:
        """Settings that need the tasks, checked (and the data read) before any stage trains."""
        self.ctx.validate()

    def close(self) -> None:
        """Removes a non-chief worker's scratch directory (multi-worker runs)."""
        distribute.remove_worker_dir(self.config.runtime.model_dir, self.strategy)

    # --- stage by stage ----------------------------------------------------------------------------
    def teachers(self) -> list[str]:
        """Trains the ensemble's members, keeps the best of a pool and fine-tunes them (each skipped
        when done); returns the kept multi-task members' directories."""
        ctx = self.ctx
        if ctx.teachers.given:
            ctx.announce("teachers", f"using {len(ctx.teachers.given)} given model(s)")
            return ctx.teachers.given
        if not ctx.teachers.needed:
            ctx.announce(
                "teachers", "every teacher task's soft targets come from a file (soft_labels_file): none to train"
            )
            return []
        stages_lib.Teachers(ctx)()
        if ctx.teachers.pooled:
            stages_lib.Selection(ctx)()
        if ctx.teachers.finetuned:
            stages_lib.TeacherFinetune(ctx)()
        return ctx.teachers.dirs()

    def soft_labels(self) -> str:
        return stages_lib.SoftLabels(self.ctx)()

    def student(self, run: int = 0) -> MTDNN:
        """The distilled student of seed run `run` (seed `seed + run`), trained or loaded."""
        return model_dir_lib.load(stages_lib.student_stage(self.ctx, run)())

    def baseline(self, run: int = 0) -> MTDNN:
        """The plain MT-DNN with the student's settings, trained or loaded."""
        return model_dir_lib.load(stages_lib.baseline_stage(self.ctx, run)())

    def gate(self) -> dict:
        return Gate(self.ctx)()

    def variants(self) -> dict[str, str]:
        return stages_lib.Variants(self.ctx)()

    def finetune(self) -> dict[str, dict[str, str]]:
        return stages_lib.Finetune(self.ctx)()

    def evaluate(self) -> dict[str, dict]:
        return Evaluate(self.ctx)()

    def report(self, rows: dict[str, dict] | None = None) -> dict:
        """The report from the saved evidence (evaluating first if `rows` is None)."""
        if rows is None:
            self.evaluate()
        return Report(self.ctx)()
