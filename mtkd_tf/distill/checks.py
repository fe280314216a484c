"""The distillation settings' checks, written once: the config validates with them and so do the
loss terms that hold the settings (`distill.terms`), for a Distiller built without a config."""

from __future__ import annotations

from typing import Any, Sequence

from mtkd_tf.errors import ConfigError

ALPHA_SCHEDULES = ("constant", "anneal")


def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    """`value` of setting `name` is one of `choices`."""
    if value not in choices:
        raise ConfigError(f"{name} {value!r} is not one of {', '.join(choices)}", name)


def check_alpha(alpha: float, task_alpha: dict[str, float]) -> None:
    """alpha and every per-task alpha lie in [0, 1]."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}", "alpha")
    for task, value in task_alpha.items():
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"task_alpha {task} must be in [0, 1], got {value}", "task_alpha")


def check_temperature(temperature: float) -> None:
    """The distillation temperature is positive (the soft loss, soft-label files)."""
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}", "temperature")
