"""The experiment's report: every model's dev metrics side by side, whether the differences are
real (95% paired bootstrap intervals), what the student kept, and one line per claim of the paper.

`report.json` holds `results` (`{task: {metric: {row: value, "kept": share}}}`), `intervals`
(`{task: {metric: {"student - baseline": [difference, low, high], ...}}}`), `claims`,
`warnings`, `rows` (the column order), `config` (the whole `ExperimentConfig`, so any result can
be re-run: `ExperimentConfig.from_dict(report["config"])`) and `environment`. `report.md` is the
tables, the claim lines and the warnings; `scores.png` and `training_curves.png` are its plots.
"""

from __future__ import annotations

import json
import os
from typing import Mapping, Sequence

import numpy as np

from mtkd_tf import plots
from mtkd_tf.data.split import SplitData
from mtkd_tf.evaluation import METRIC_FUNCTIONS, decide, labelled_splits, split_suffix
from mtkd_tf.files import write_atomic, write_json
from mtkd_tf.significance import RESAMPLES, Interval, paired_interval
from mtkd_tf.tasks import RANKING

BEST_MEMBER = "best member"
COMPARISONS = (("student", "baseline"), ("ensemble", BEST_MEMBER), ("student", "ensemble"), ("ensemble", "baseline"),
               ("student_ft", "baseline_ft"))
SPREAD_WARNING = 0.05  # members this far apart on a task (5 points): the ensemble measures seeds
STILL_LEARNING = 0.10  # a last epoch that lowered the training loss by 10% or more: not converged


def _members(rows: Sequence[str]) -> list[str]:
    return [row for row in rows if row.startswith("member_")]


def intervals(dev: Mapping[str, Mapping[str, SplitData]], outputs: Mapping[str, Mapping[tuple[str, str], np.ndarray]],
              rows: Mapping[str, Mapping[str, Mapping[str, float]]], resamples: int = RESAMPLES,
              seed: int = 0) -> dict[str, dict[str, dict[str, Interval]]]:
    """`{task: {metric: {"a - b": Interval}}}` for each of `COMPARISONS` whose models both have
    dev outputs; "best member" is, per task and metric, the member with the best dev score."""
    found: dict[str, dict[str, dict[str, Interval]]] = {}
    for key, data in labelled_splits(dev):
        task_name, split = key
        suffix = split_suffix(data.task, split)
        groups = data.groups if data.task.type == RANKING else None
        decided = {row: decide(data.task, outputs[row][key], data.groups) for row in outputs if key in outputs[row]}
        for name in data.task.metrics:
            metric = f"{name}_{suffix}" if suffix else name
            members = [row for row in _members(list(decided)) if metric in rows.get(row, {}).get(task_name, {})]
            chosen = dict(decided)
            if members:
                chosen[BEST_MEMBER] = decided[max(members, key=lambda row: rows[row][task_name][metric])]
            for a, b in COMPARISONS:
                if a in chosen and b in chosen:
                    found.setdefault(task_name, {}).setdefault(metric, {})[f"{a} - {b}"] = paired_interval(
                        METRIC_FUNCTIONS[name], data.labels, chosen[a], chosen[b], groups, resamples, seed)
    return found


def build_report(rows: Mapping[str, Mapping[str, Mapping[str, float]]],
                 found: Mapping[str, Mapping[str, Mapping[str, Interval]]] | None = None,
                 teacher_tasks: Sequence[str] | None = None) -> dict:
    """`{task: {metric: {row: value, ..., "kept": fraction}}}` from `{row: eval_results}`.

    `kept` is the share of the ensemble's gain over the baseline that the student kept,
    (student - baseline) / (ensemble - baseline), shown only when that gain is real: with
    intervals, when "ensemble - baseline" is significantly positive; without, when positive.
    Tasks without a teacher (not in `teacher_tasks`; None: every task had one) get no share.
    """
    report: dict = {}
    for row, results in rows.items():
        for task, metrics in results.items():
            for metric, value in metrics.items():
                report.setdefault(task, {}).setdefault(metric, {})[row] = value
    for task, metrics in report.items():
        if teacher_tasks is not None and task not in teacher_tasks:
            continue
        for metric, values in metrics.items():
            if {"ensemble", "baseline", "student"} <= set(values):
                gain = values["ensemble"] - values["baseline"]
                interval = (found or {}).get(task, {}).get(metric, {}).get("ensemble - baseline")
                real = interval.low > 0 if interval is not None else gain > 1e-9
                values["kept"] = (values["student"] - values["baseline"]) / gain if real else None
    return report


def verdict(interval: Interval) -> str:
    if not interval.significant:
        return "not significant"
    return "holds" if interval.difference > 0 else "does not hold"


def claims(report: Mapping, found: Mapping, teacher_tasks: Sequence[str] | None) -> list[str]:
    """One line per claim of the paper, judged on each task's first metric."""
    def first(task):
        return next(iter(report[task]))

    def line(title: str, comparison: str, tasks: Sequence[str]) -> str:
        parts = []
        for task in tasks:
            interval = found.get(task, {}).get(first(task), {}).get(comparison)
            if interval is not None:
                parts.append(f"{task} {first(task)} {interval.describe()}: {verdict(interval)}")
        return f"- {title}: " + ("; ".join(parts) if parts else "no rows to compare") + "."

    tasks = list(report)
    with_teacher = [t for t in tasks if teacher_tasks is None or t in teacher_tasks]
    without = [t for t in tasks if teacher_tasks is not None and t not in teacher_tasks]
    lines = [line("The ensemble beats its best member", "ensemble - best member", tasks),
             line("The student beats the baseline MT-DNN", "student - baseline", with_teacher)]
    kept = []
    for task in with_teacher:
        values = report[task][first(task)]
        if "kept" not in values:
            continue
        share = values["kept"]
        if share is None:
            kept.append(f"{task}: ensemble gain not significant")
        else:
            kept.append(f"{task}: {100 * share:.0f}% ({'holds' if share >= 0.5 else 'does not hold'})")
    lines.append("- The student keeps most (>= 50%) of the ensemble's gain: " + ("; ".join(kept) or "no rows") + ".")
    if without:
        lines.append(line("The gain carries to tasks without a teacher (student - baseline)", "student - baseline", without))
    finetuned = [task for task in tasks if "student_ft - baseline_ft" in found.get(task, {}).get(first(task), {})]
    if finetuned:
        lines.append(line("After per-task fine-tuning, the student beats the baseline", "student_ft - baseline_ft", finetuned))
    return lines


def warnings(report: Mapping, histories: Mapping[str, str]) -> list[str]:
    """Where the comparison measures noise: members far apart, or training still far from converged."""
    found = []
    for task, metrics in report.items():
        metric = next(iter(metrics))
        scores = [metrics[metric][row] for row in _members(list(metrics[metric]))]
        if len(scores) > 1 and max(scores) - min(scores) > SPREAD_WARNING:
            found.append(f"{task}: the teachers' {metric} spans {100 * min(scores):.1f}-{100 * max(scores):.1f} "
                         f"(more than {100 * SPREAD_WARNING:.0f} points): the ensemble mixes converged and unconverged members")
    for name, path in histories.items():
        if path and os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                history = json.load(handle)
            if len(history) >= 2 and history[-2]["loss"] > 0:
                drop = 1 - history[-1]["loss"] / history[-2]["loss"]
                if drop >= STILL_LEARNING:
                    found.append(f"{name}: its last epoch still lowered the training loss by {100 * drop:.0f}%: "
                                 "it has not converged, more epochs may change the comparison")
    return found


def report_table(report: Mapping, rows: Sequence[str]) -> str:
    """The scores as a Markdown table, one line per task and metric."""
    header = ["task", "metric", *rows, "kept"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task, metrics in report.items():
        for metric, values in metrics.items():
            cells = [f"{100 * values[row]:.1f}" if values.get(row) is not None else "-" for row in rows]
            kept = values.get("kept")
            shown = f"{100 * kept:.0f}%" if kept is not None else ("n.s." if "kept" in values else "-")
            lines.append("| " + " | ".join([task, metric, *cells, shown]) + " |")
    return "\n".join(lines)


def interval_table(found: Mapping) -> str:
    """The differences (x100) with their 95% paired bootstrap intervals; * marks significant ones."""
    names = [f"{a} - {b}" for a, b in COMPARISONS if any(f"{a} - {b}" in m for t in found.values() for m in t.values())]
    if not names:
        return ""
    lines = ["| task | metric | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 2)]
    for task, metrics in found.items():
        for metric, comparisons in metrics.items():
            cells = [comparisons[n].describe() + ("*" if comparisons[n].significant else "") if n in comparisons else "-"
                     for n in names]
            lines.append(f"| {task} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(root: str, rows: Mapping, order: Sequence[str], config: Mapping,
                 histories: Mapping[str, str] | None = None, environment: Mapping | None = None,
                 found: Mapping | None = None, teacher_tasks: Sequence[str] | None = None,
                 selection: Mapping | None = None) -> tuple[dict, str]:
    """Writes report.json, report.md and the plots; returns the report and report.md's text.

    `histories` maps "student" / "baseline" to their `history.json` (training curves);
    `found` are the intervals (`intervals`); `teacher_tasks` splits the claims by tasks with
    and without a teacher (None: every task had one); `selection` is the teacher pool's
    `selection.json` (every candidate's dev scores and the members kept)."""
    found = found or {}
    histories = histories or {}
    report = build_report(rows, found, teacher_tasks)
    claim_lines = claims(report, found, teacher_tasks) if found else []
    warning_lines = warnings(report, histories)
    text = report_table(report, order)
    if found:
        text += ("\n\nDifferences (x100) with 95% paired bootstrap intervals over the dev examples "
                 f"({RESAMPLES} resamples; * = the interval excludes 0):\n\n" + interval_table(found))
        text += "\n\nThe paper's claims on this run:\n" + "\n".join(claim_lines)
    if selection:
        ranked = sorted(selection["candidates"].items(), key=lambda item: -item[1]["mean"])
        text += (f"\n\nTeacher selection on {', '.join(selection['selection_tasks'])} dev (mean of each task's first "
                 "metric): " + ", ".join(f"{name} {100 * entry['mean']:.1f}" for name, entry in ranked)
                 + f"; kept {', '.join(selection['chosen'])}.")
    if warning_lines:
        text += "\n\nWarnings:\n" + "\n".join(f"- {line}" for line in warning_lines)
    serialisable = {task: {metric: {name: interval.to_list() for name, interval in comparisons.items()}
                           for metric, comparisons in metrics.items()} for task, metrics in found.items()}
    write_json(os.path.join(root, "report.json"), {
        "results": report, "intervals": serialisable, "claims": claim_lines, "warnings": warning_lines,
        "teacher_selection": dict(selection or {}),
        "rows": list(order), "config": dict(config), "environment": dict(environment or {})})
    write_atomic(os.path.join(root, "report.md"), text + "\n")
    plots.plot_scores(report, order, os.path.join(root, "scores.png"), found)
    plots.plot_training_curves(histories.get("student", ""), histories.get("baseline"), list(report),
                               os.path.join(root, "training_curves.png"))
    return report, text
