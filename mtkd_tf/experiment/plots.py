"""Pictures of a pipeline run, written next to report.json: scores per model and training curves.

`scores.png`: for each task's first metric, a bar per model (teachers, ensemble, baseline,
student), so "does the ensemble beat its members, and does the student keep the gain" reads
at a glance. `training_curves.png`: the student's per-task loss per epoch, split into its
weighted hard and soft parts, with the baseline's loss for comparison.
"""

from __future__ import annotations

import io
import json
import os
from typing import Mapping, Sequence

from mtkd_tf.runtime.files import write_atomic

_COLOURS = {"ensemble": "#1f77b4", "baseline": "#7f7f7f", "student": "#d62728"}
_MEMBER = "#aec7e8"


def _save(figure, path: str, dpi: int) -> None:
    """Renders the PNG in memory and writes it atomically (`write_atomic`): never a half-written plot."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=dpi)
    finally:
        plt.close(figure)
    write_atomic(path, buffer.getvalue())


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display (servers, CI, Colab all work)
    import matplotlib.pyplot as plt

    return plt


ERROR_BARS = {
    "student": "student - baseline",
    "ensemble": "ensemble - mean member",
    "student_mean": "student - baseline",
}


def _colour(row: str) -> str:
    """Members light blue; students red and baselines grey (their other seeds and variants lighter)."""
    if row in _COLOURS:
        return _COLOURS[row]
    if row in ("student_mean", "baseline_mean"):
        return _COLOURS[row.split("_")[0]]
    return {"student": "#ff9896", "baseline": "#c7c7c7"}.get(row.split("_")[0], _MEMBER)


def plot_scores(
    report: Mapping, rows: Sequence[str], path: str, intervals: Mapping | None = None, split: str = "dev"
) -> str:
    """Grouped bars: one group per task (its first metric), one bar per row of the report.

    With `intervals` (`{task: {metric: {"a - b": (estimate, low, high)}}}`), the student's bar
    carries the 95% interval of student - baseline and the ensemble's that of ensemble - mean
    member, drawn around the bar's value."""
    plt = _pyplot()
    tasks = list(report)
    figure, axis = plt.subplots(figsize=(max(6.0, 1.9 * len(tasks) + 2), 4.2))
    width = 0.8 / max(len(rows), 1)
    for r, row in enumerate(rows):
        values, labels = [], []
        for task in tasks:
            metric = next(iter(report[task]))
            labels.append(f"{task}\n{metric}")
            value = report[task][metric].get(row)
            values.append(100 * value if value is not None else 0.0)
        positions = [t + (r - (len(rows) - 1) / 2) * width for t in range(len(tasks))]
        colour = _colour(row)
        errors = None
        if intervals and row in ERROR_BARS:
            errors = [[0.0] * len(tasks), [0.0] * len(tasks)]
            for t, task in enumerate(tasks):
                found = intervals.get(task, {}).get(next(iter(report[task])), {}).get(ERROR_BARS[row])
                if found is not None:
                    estimate, low, high = found
                    errors[0][t] = 100 * (estimate - low)
                    errors[1][t] = 100 * (high - estimate)
        axis.bar(
            positions,
            values,
            width * 0.95,
            label=row,
            color=colour,
            yerr=errors,
            capsize=2,
            edgecolor="black" if colour in _COLOURS.values() else "none",
            linewidth=0.5,
        )
    axis.set_xticks(range(len(tasks)), labels)
    axis.set_ylabel(f"{split} score (x100)")
    axis.set_title(
        "Teachers, their ensemble, the baseline MT-DNN and the distilled student"
        + ("\n(error bars: 95% intervals of student - baseline and ensemble - mean member)" if intervals else ""),
        fontsize=10,
    )
    axis.axhline(0, color="black", linewidth=0.6)
    axis.legend(ncol=min(len(rows), 6), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False)
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    _save(figure, path, dpi=120)
    return path


def _history(history: str | Sequence[dict] | None) -> list[dict]:
    """A history as its epochs: given as such, or as the path of a history.json."""
    if not isinstance(history, str):
        return list(history or [])
    if not os.path.isfile(history):
        return []
    with open(history, encoding="utf-8") as handle:
        return json.load(handle)


def plot_training_curves(
    student_history: str | Sequence[dict],
    baseline_history: str | Sequence[dict] | None,
    tasks: Sequence[str],
    path: str,
) -> str:
    """Per task: the student's total, weighted hard and weighted soft loss per epoch (+ the baseline's)."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    student, baseline = _history(student_history), _history(baseline_history)
    columns = min(len(tasks), 4) or 1
    rows = -(-len(tasks) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.0 * rows), squeeze=False)
    for axis, task in zip(axes.flat, tasks, strict=False):  # the grid's spare cells are turned off below
        epochs = [entry["epoch"] + 1 for entry in student]
        for key, label, style in (
            (f"{task}_loss", "student total", "-"),
            (f"{task}_hard", "weighted hard", "--"),
            (f"{task}_soft", "weighted soft", ":"),
        ):
            if student and key in student[0]:
                axis.plot(
                    epochs, [entry[key] for entry in student], style, marker="o", color=_COLOURS["student"], label=label
                )
        if baseline and f"{task}_loss" in baseline[0]:
            axis.plot(
                [entry["epoch"] + 1 for entry in baseline],
                [entry[f"{task}_loss"] for entry in baseline],
                "-",
                marker="s",
                color=_COLOURS["baseline"],
                label="baseline (hard)",
            )
        axis.set_title(task)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlabel("epoch")
        axis.set_ylabel("training loss")
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(tasks) :]:
        axis.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    figure.suptitle("Student training: per-task loss = (1 - alpha) hard + alpha soft")
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    _save(figure, path, dpi=110)
    return path
