"""`bin/run`: a thin absl shell over `Experiment`. Every flag is a field of `ExperimentConfig`
(same name, type, default and help), so `--flagfile=configs/X.cfg` works and flags given
after it override the file. `--mode` picks the stage; `pipeline` runs them all.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from absl import app, flags

from mtkd_tf.config import ExperimentConfig, define_flags

FLAGS = flags.FLAGS
define_flags(FLAGS)


def _export(config: ExperimentConfig):
    from mtkd_tf import distribute, export

    settings, runtime = config.export, config.runtime
    if not settings.export_dir or not runtime.model_dir:
        raise app.UsageError("--mode=export needs --model_dir (a trained model) and --export_dir")
    strategy = distribute.get_strategy(runtime.strategy, runtime.num_gpus, runtime.tpu)  # non-chief workers: scratch
    path = export.export(runtime.model_dir, distribute.worker_dir(settings.export_dir, strategy), settings.export_version,
                         settings.serving_default_task)
    print(f"exported {path}", file=sys.stderr)
    return path


def _serve_check(config: ExperimentConfig):
    import os

    from mtkd_tf import export

    settings = config.export
    if not settings.request_file:
        raise app.UsageError("--request_file is required for --mode=serve_check")
    path = settings.saved_model
    if not path:
        if not settings.export_dir:
            raise app.UsageError("--mode=serve_check needs --saved_model or --export_dir")
        path = os.path.join(settings.export_dir, str(export.next_version(settings.export_dir) - 1))
    return export.serve_check(path, settings.request_file)


def _report(config: ExperimentConfig):
    """Rebuilds a finished run's report from its saved evidence alone (no model is loaded)."""
    from mtkd_tf import report

    if not config.runtime.model_dir:
        raise app.UsageError("--mode=report needs --model_dir (a finished pipeline run)")
    try:
        report.rebuild(config.runtime.model_dir)
    except FileNotFoundError as error:
        raise app.UsageError(str(error)) from None
    return None


# mode -> what it runs: an Experiment method, or a function of the config.
MODES = {
    "train": "train", "evaluate": "evaluate_model", "predict": "predict", "train_teachers": "teachers",
    "soft_labels": "soft_labels", "distill": "distill", "pipeline": "run",
    "report": _report, "export": _export, "serve_check": _serve_check,
}


def main(argv: list[str]) -> int:
    from mtkd_tf.errors import MtkdError

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])} (options are --flags)")
    logging.getLogger().setLevel(logging.INFO)
    started = time.time()
    try:
        config = ExperimentConfig.from_flags(FLAGS).validate()
        action = MODES[config.runtime.mode]
        if callable(action):
            result = action(config)
        else:
            from mtkd_tf.experiment import Experiment

            experiment = Experiment(config)  # first: it creates the strategy before any other TF op
            result = getattr(experiment, action)()
            experiment.close()
    except MtkdError as error:
        print(f"error: {error.for_command_line()}", file=sys.stderr)
        return 2
    if result is not None and config.runtime.mode != "pipeline":
        print(json.dumps(result, indent=2))
    print(f"{config.runtime.mode} finished in {time.time() - started:.1f}s", file=sys.stderr)
    return 0


def run() -> None:
    """Entry point of bin/run."""
    app.run(main)
