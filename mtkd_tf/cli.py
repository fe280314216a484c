"""`bin/run`: a thin absl shell over `Experiment` and `experiment.modes`. Every flag is a field of `ExperimentConfig`
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


def _report(config: ExperimentConfig) -> None:
    from mtkd_tf.experiment import modes

    try:
        modes.report(config)
    except FileNotFoundError as error:
        raise app.UsageError(str(error)) from None


# mode -> what it runs: a function of the config, or one of the Experiment (created first: it makes
# the strategy before any other TF op).
CONFIG_MODES = {
    "report": _report,
    "export": "export",
    "serve_check": "serve_check",
    "export_preset": "export_preset",
    "export_transformers": "export_transformers",
}
EXPERIMENT_MODES = {
    "train": "train",
    "evaluate": "evaluate_model",
    "predict": "predict",
    "distill": "distill",
    "train_teachers": None,
    "soft_labels": None,
    "pipeline": None,
}


def _run_mode(config: ExperimentConfig):
    from mtkd_tf.experiment import Experiment, modes

    mode = config.runtime.mode
    if mode in CONFIG_MODES:
        action = CONFIG_MODES[mode]
        return action(config) if callable(action) else getattr(modes, action)(config)
    experiment = Experiment(config)
    with experiment.lock():  # before any work: a second run on model_dir stops here
        if EXPERIMENT_MODES[mode]:
            result = getattr(modes, EXPERIMENT_MODES[mode])(experiment)
        else:
            result = {
                "train_teachers": experiment.teachers,
                "soft_labels": experiment.soft_labels,
                "pipeline": experiment.run,
            }[mode]()
    experiment.close()
    return result


def main(argv: list[str]) -> int:
    from mtkd_tf.errors import MtkdError
    from mtkd_tf.runtime import files
    from mtkd_tf.training import preemption

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])} (options are --flags)")
    logging.getLogger().setLevel(logging.INFO)
    started = time.time()
    try:
        config = ExperimentConfig.from_flags(FLAGS).validate()
        with preemption.stop_on_signals(config.runtime.stop_grace_seconds):
            result = _run_mode(config)
    except preemption.Preempted as error:
        print(f"{error.for_command_line()}", file=sys.stderr)
        return error.exit_status  # 128 + the signal: 143 (SIGTERM), 130 (SIGINT)
    except MtkdError as error:
        print(f"error: {error.for_command_line()}", file=sys.stderr)
        return 2
    except Exception as error:  # a full disk anywhere else (TensorFlow's writers, a library's file)
        if not files.disk_full(error):
            raise
        print(f"error: {files.no_room(getattr(error, 'filename', None) or 'a file', error)}", file=sys.stderr)
        return 2
    if result is not None and config.runtime.mode != "pipeline":
        print(json.dumps(result, indent=2))
    print(f"{config.runtime.mode} finished in {time.time() - started:.1f}s", file=sys.stderr)
    return 0


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, after checking that every flagfile is UTF-8 text (exit status 2 if not)."""
    from mtkd_tf.config import check_flagfiles
    from mtkd_tf.errors import MtkdError

    try:
        check_flagfiles(argv[1:])
    except MtkdError as error:
        print(f"error: {error.for_command_line()}", file=sys.stderr)
        sys.exit(2)
    return app.parse_flags_with_usage(argv)


def run() -> None:
    """Entry point of bin/run."""
    app.run(main, flags_parser=_parse_flags)
