"""`bin/run`: a thin absl shell over `Experiment` and `experiment.modes`. Every flag is a field of `ExperimentConfig`
(same name, type, default and help), so `--flagfile=configs/X.cfg` works and flags given
after it override the file. `--mode` picks the stage; `pipeline` runs them all.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Callable, NamedTuple

from absl import app, flags

from mtkd_tf.config import ExperimentConfig, define_flags

FLAGS = flags.FLAGS
define_flags(FLAGS)


class Mode(NamedTuple):
    """What a `--mode` runs: `run` takes the Experiment when `needs_experiment` (created first: it
    makes the strategy before any other TF op; the mode runs under its model_dir lock), else the config."""

    run: Callable[[Any], Any]
    needs_experiment: bool


def _in_modes(name: str) -> Callable[[Any], Any]:
    """`experiment.modes.<name>`, imported when the mode runs (the import loads TensorFlow)."""

    def run(target):
        from mtkd_tf.experiment import modes

        return getattr(modes, name)(target)

    return run


def _experiment_method(name: str) -> Callable[[Any], Any]:
    return lambda experiment: getattr(experiment, name)()


def _report(config: ExperimentConfig) -> None:
    """Rebuilds the report (which writes and prints it); a missing run is a usage error."""
    from mtkd_tf.experiment import modes

    try:
        modes.report(config)
    except FileNotFoundError as error:
        raise app.UsageError(str(error)) from None


# Every --mode, in config.MODES' order: what it runs, and on what.
MODES: dict[str, Mode] = {
    "train": Mode(_in_modes("train"), needs_experiment=True),
    "evaluate": Mode(_in_modes("evaluate_model"), needs_experiment=True),
    "predict": Mode(_in_modes("predict"), needs_experiment=True),
    "train_teachers": Mode(_experiment_method("teachers"), needs_experiment=True),
    "soft_labels": Mode(_experiment_method("soft_labels"), needs_experiment=True),
    "distill": Mode(_in_modes("distill"), needs_experiment=True),
    "pipeline": Mode(_experiment_method("run"), needs_experiment=True),
    "report": Mode(_report, needs_experiment=False),
    "export": Mode(_in_modes("export"), needs_experiment=False),
    "serve_check": Mode(_in_modes("serve_check"), needs_experiment=False),
    "export_preset": Mode(_in_modes("export_preset"), needs_experiment=False),
    "export_transformers": Mode(_in_modes("export_transformers"), needs_experiment=False),
}


def _run_mode(config: ExperimentConfig):
    mode = MODES[config.runtime.mode]
    if not mode.needs_experiment:
        return mode.run(config)
    from mtkd_tf.experiment import Experiment

    experiment = Experiment(config)
    with experiment.lock():  # before any work: a second run on model_dir stops here
        result = mode.run(experiment)
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
