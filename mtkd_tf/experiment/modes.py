"""The single-model modes of `bin/run` beside the pipeline, as functions a Python user can call too:
train one MT-DNN, evaluate or predict with a trained one, distil a student alone, export a model
for TF Serving and check the export, export it to keras-hub or transformers, rebuild a report.

>>> experiment = mt.Experiment(mt.ExperimentConfig.from_flagfile("configs/tiny.cfg", model_dir="runs/one"))
>>> results = mt.modes.train(experiment)                      # bin/run --mode=train
>>> path = mt.modes.export(experiment.config.replace(export_dir="serving/one"))   # --mode=export
>>> path = mt.modes.export_transformers(experiment.config.replace(export_dir="hf/one", export_task="sst2"))
"""

from __future__ import annotations

import logging
import os

from mtkd_tf.config import ExperimentConfig
from mtkd_tf.errors import ConfigError
from mtkd_tf.experiment import gate as gate_lib
from mtkd_tf.experiment import report as report_lib
from mtkd_tf.experiment.output_cache import OutputCache
from mtkd_tf.export import preset as export_preset_lib
from mtkd_tf.export import saved_model as export_lib
from mtkd_tf.export import submission
from mtkd_tf.export import transformers as export_transformers_lib
from mtkd_tf.models import evaluation
from mtkd_tf.models import model_dir as model_dir_lib
from mtkd_tf.models.mtdnn import in_precision
from mtkd_tf.runtime.files import read_json, write_json
from mtkd_tf.training import distribute

logger = logging.getLogger("mtkd_tf")


def train(experiment) -> dict:
    """Trains one MT-DNN in `model_dir` (always anew) and evaluates it on dev."""
    ctx = experiment.ctx
    ctx.validate()
    config, root = ctx.config, ctx.layout.root
    with ctx.strategy.scope():
        ctx.announce("train", f"MT-DNN on {', '.join(ctx.data.train)} -> {root}")
        encoder = ctx.encoder(config.model.encoder, config.model.encoder_dropout, config.training.seed)
        trained = ctx.train(config, root, "MT-DNN", encoder=encoder)
        results = evaluation.evaluate(in_precision(trained, "float32"), ctx.data.dev, config.runtime.eval_batch_size)
    write_json(os.path.join(root, "eval_results.json"), results)
    return results


def evaluate_model(experiment) -> dict:
    """Evaluates the model in `model_dir` on dev; writes eval_results.json. Its outputs on each
    split are saved as they are computed (`OutputCache`): a stopped evaluation resumes."""
    ctx = experiment.ctx
    config, root = ctx.config, ctx.layout.root
    with OutputCache(ctx.layout.partial_dir("evaluate"), config.runtime.eval_batch_size) as cache:
        with ctx.strategy.scope():
            trained = model_dir_lib.load(config.runtime.model_dir)
            dev = ctx.data.dev
            results = evaluation.score_outputs(dev, cache.outputs(config.runtime.model_dir, dev, model=trained))
        write_json(os.path.join(root, "eval_results.json"), results)
    return results


def predict(experiment) -> list[str]:
    """GLUE-leaderboard files of the model in `model_dir` for every test split; with `mnli` also
    AX.tsv (scored with the MNLI head) when the AX test file is there, else one line says why."""
    config, data = experiment.config, experiment.data
    with experiment.strategy.scope():
        trained = model_dir_lib.load(config.runtime.model_dir)
        tasks, skipped = submission.prediction_tasks(
            data.tasks, data.known_tasks, data.data_dir, config.data.data_source, config.data.tfds_download
        )
        for line in skipped:
            logger.warning("%s", line)
        test = data.load(tasks, "test", config.data.max_eval_examples)
        output = config.runtime.output_dir
        output_dir = (
            distribute.worker_dir(output, experiment.strategy)
            if output
            else os.path.join(experiment.layout.root, "predictions")
        )
        return submission.write_predictions(trained, test, output_dir, config.runtime.eval_batch_size)


def distill(experiment) -> dict:
    """The student alone (bin/run --mode=distill), evaluated on dev."""
    student = experiment.student()
    with experiment.strategy.scope():
        results = evaluation.evaluate(student, experiment.data.dev, experiment.config.runtime.eval_batch_size)
    write_json(os.path.join(experiment.layout.student_dir, "eval_results.json"), results)
    return results


def latest_export(export_dir: str) -> str:
    """The newest version directory under a TF Serving model base path."""
    version = export_lib.next_version(export_dir) - 1
    if not version:
        raise ConfigError(f"export_dir {export_dir}: no exported version in it", "export_dir")
    return os.path.join(export_dir, str(version))


def export(config: ExperimentConfig) -> str:
    """Exports the model in `model_dir` as `<export_dir>/<version>` for TF Serving (a non-chief
    worker of a multi-worker run writes to its scratch directory); returns the path."""
    settings, runtime = config.export, config.runtime
    if not settings.export_dir or not runtime.model_dir:
        raise ConfigError("export needs model_dir (a trained model) and export_dir", ("model_dir", "export_dir"))
    strategy = distribute.get_strategy(runtime.strategy, runtime.num_gpus, runtime.tpu)
    return export_lib.export(
        runtime.model_dir,
        distribute.worker_dir(settings.export_dir, strategy),
        settings.export_version,
        settings.serving_default_task,
    )


def serve_check(config: ExperimentConfig) -> dict:
    """Answers `request_file` (a TF Serving REST :predict body) with `saved_model`, or the latest
    version under `export_dir`."""
    settings = config.export
    if not settings.request_file:
        raise ConfigError("serve_check needs request_file", "request_file")
    if not settings.saved_model and not settings.export_dir:
        raise ConfigError("serve_check needs saved_model or export_dir", ("saved_model", "export_dir"))
    return export_lib.serve_check(settings.saved_model or latest_export(settings.export_dir), settings.request_file)


def _export_paths(config: ExperimentConfig, mode: str) -> tuple[str, str]:
    if not config.runtime.model_dir or not config.export.export_dir:
        raise ConfigError(
            f"{mode} needs model_dir (a trained model) and export_dir (a new directory)", ("model_dir", "export_dir")
        )
    return config.runtime.model_dir, config.export.export_dir


def export_preset(config: ExperimentConfig) -> str:
    """Writes the shared encoder of the model in `model_dir` and its tokenizer as a keras-hub
    preset in `export_dir`; returns the directory."""
    return export_preset_lib.export_preset(*_export_paths(config, "export_preset"))


def export_transformers(config: ExperimentConfig) -> str:
    """Writes the model in `model_dir` as a transformers checkpoint in `export_dir`: the encoder,
    with `export_task`'s head when given; returns the directory."""
    return export_transformers_lib.export_transformers(
        *_export_paths(config, "export_transformers"), task=config.export.export_task
    )


def report(config: ExperimentConfig) -> dict:
    """Rebuilds a finished run's report from its saved evidence alone (no model is loaded), with the
    run's own resample count and claims' families (`--primary_claims`, if given, must be the run's);
    a run stopped by its closed gate gets the gate's report, from gate.json."""
    if not config.runtime.model_dir:
        raise ConfigError("report needs model_dir (a finished pipeline run)", "model_dir")
    root = config.runtime.model_dir
    inputs = os.path.join(root, report_lib.INPUTS)
    if gate_lib.closed(root) and not os.path.isfile(inputs):
        report, text = gate_lib.untestable_report(root)
        print(text)
        return report
    if config.distillation.primary_claims and os.path.isfile(inputs):  # empty: the run's own family
        report_lib.same_family(read_json(inputs).get("primary_claims"), config.distillation.primary_claims, root)
    return report_lib.rebuild(root)
