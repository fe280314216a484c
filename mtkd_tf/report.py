"""The experiment's report: every model's dev metrics side by side, and what the student kept.

`report.json` holds `results` (`{task: {metric: {row: value, "kept": share}}}`), `rows` (the
column order) and `config`, the whole `ExperimentConfig`, so any result can be re-run from
what it recorded (`ExperimentConfig.from_dict(report["config"])`). `report.md` is the table;
`scores.png` and `training_curves.png` are its plots.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

from mtkd_tf import plots
from mtkd_tf.files import write_atomic, write_json


def build_report(rows: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict:
    """`{task: {metric: {row: value, ..., "kept": fraction}}}` from `{row: eval_results}`.

    `kept` is the share of the ensemble's gain over the baseline that the student kept:
    (student - baseline) / (ensemble - baseline), when the ensemble gained.
    """
    report: dict = {}
    for row, results in rows.items():
        for task, metrics in results.items():
            for metric, value in metrics.items():
                report.setdefault(task, {}).setdefault(metric, {})[row] = value
    for metrics in report.values():
        for values in metrics.values():
            if {"ensemble", "baseline", "student"} <= set(values):
                gain = values["ensemble"] - values["baseline"]
                values["kept"] = (values["student"] - values["baseline"]) / gain if gain > 1e-9 else None
    return report


def report_table(report: Mapping, rows: Sequence[str]) -> str:
    """The report as a Markdown table, one line per task and metric."""
    header = ["task", "metric", *rows, "kept"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task, metrics in report.items():
        for metric, values in metrics.items():
            cells = [f"{100 * values[row]:.1f}" if values.get(row) is not None else "-" for row in rows]
            kept = values.get("kept")
            lines.append("| " + " | ".join([task, metric, *cells, f"{100 * kept:.0f}%" if kept is not None else "-"]) + " |")
    return "\n".join(lines)


def write_report(root: str, rows: Mapping, order: Sequence[str], config: Mapping,
                 histories: Mapping[str, str] | None = None, environment: Mapping | None = None) -> tuple[dict, str]:
    """Writes report.json (results, rows, the full config, where it ran), report.md and the plots.

    `histories` maps "student" / "baseline" to their `history.json` (training curves)."""
    report = build_report(rows)
    table = report_table(report, order)
    write_json(os.path.join(root, "report.json"), {"results": report, "rows": list(order), "config": dict(config),
                                                   "environment": dict(environment or {})})
    write_atomic(os.path.join(root, "report.md"), table + "\n")
    plots.plot_scores(report, order, os.path.join(root, "scores.png"))
    histories = histories or {}
    plots.plot_training_curves(histories.get("student", ""), histories.get("baseline"), list(report),
                               os.path.join(root, "training_curves.png"))
    return report, table
