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
import re
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
SEEDED = ("student", "baseline", "student_ft", "baseline_ft")  # rows repeated with `seeds`
_RUN = re.compile(r"^(student|baseline|student_ft|baseline_ft)(?:_s(\d+))?$")
VARIANT = re.compile(r"^student_(anneal|r\d+)$")  # beyond the paper: teacher annealing, self-distillation rounds
SPREAD_WARNING = 0.05  # members this far apart on a task (5 points): the ensemble measures seeds
STILL_LEARNING = 0.10  # a last epoch that lowered the training loss by 10% or more: not converged


def _members(rows: Sequence[str]) -> list[str]:
    return [row for row in rows if row.startswith("member_")]


def run_row(name: str, run: int) -> str:
    """The report row of seed run `run` (0-based) of `name`: `student`, `student_s2`, `student_s3`, ..."""
    return name if run == 0 else f"{name}_s{run + 1}"


def seed_runs(rows: Sequence[str]) -> dict[str, list[str]]:
    """`{"student": ["student", "student_s2", ...], ...}` for each of `SEEDED` with 2+ runs in `rows`."""
    runs: dict[str, list[str]] = {}
    for row in rows:
        match = _RUN.match(row)
        if match:
            runs.setdefault(match.group(1), []).append(row)
    return {name: found for name, found in runs.items() if len(found) > 1}


def comparisons(rows: Sequence[str]) -> list[tuple[str, str]]:
    """Which differences get intervals: `COMPARISONS`, the seed means', and each variant against
    the student and the baseline."""
    found = list(COMPARISONS)
    means = seed_runs(rows)
    if {"student", "baseline"} <= set(means):
        found += [("student_mean", "baseline_mean"), ("ensemble", "baseline_mean")]
    if {"student_ft", "baseline_ft"} <= set(means):
        found.append(("student_ft_mean", "baseline_ft_mean"))
    found += [(row, other) for row in rows if VARIANT.match(row) for other in ("student", "baseline")]
    return found


def _mean(values: Mapping, name: str) -> str:
    """`name_mean` when the report has seed means, else `name`."""
    return f"{name}_mean" if f"{name}_mean" in values else name


def intervals(dev: Mapping[str, Mapping[str, SplitData]], outputs: Mapping[str, Mapping[tuple[str, str], np.ndarray]],
              rows: Mapping[str, Mapping[str, Mapping[str, float]]], resamples: int = RESAMPLES,
              seed: int = 0) -> dict[str, dict[str, dict[str, Interval]]]:
    """`{task: {metric: {"a - b": Interval}}}` for each of `COMPARISONS` whose models both have
    dev outputs; "best member" is, per task and metric, the member with the best dev score."""
    found: dict[str, dict[str, dict[str, Interval]]] = {}
    pairs, means = comparisons(list(outputs)), seed_runs(list(outputs))
    for key, data in labelled_splits(dev):
        task_name, split = key
        suffix = split_suffix(data.task, split)
        groups = data.groups if data.task.type == RANKING else None
        decided = {row: decide(data.task, outputs[row][key], data.groups) for row in outputs if key in outputs[row]}
        for name, runs in means.items():
            if all(run in decided for run in runs):
                decided[f"{name}_mean"] = [decided[run] for run in runs]
        for name in data.task.metrics:
            metric = f"{name}_{suffix}" if suffix else name
            members = [row for row in _members(list(decided)) if metric in rows.get(row, {}).get(task_name, {})]
            chosen = dict(decided)
            if members:
                chosen[BEST_MEMBER] = decided[max(members, key=lambda row: rows[row][task_name][metric])]
            for a, b in pairs:
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
    for metrics in report.values():
        for values in metrics.values():
            for name, runs in seed_runs(list(values)).items():  # mean and sd over seeds
                scores = [values[run] for run in runs if values.get(run) is not None]
                if len(scores) == len(runs):
                    values[f"{name}_mean"], values[f"{name}_sd"] = float(np.mean(scores)), float(np.std(scores, ddof=1))
    for task, metrics in report.items():
        if teacher_tasks is not None and task not in teacher_tasks:
            continue
        for metric, values in metrics.items():
            student, baseline = _mean(values, "student"), _mean(values, "baseline")
            if {"ensemble", baseline, student} <= set(values):
                gain = values["ensemble"] - values[baseline]
                interval = (found or {}).get(task, {}).get(metric, {}).get(f"ensemble - {baseline}")
                real = interval.low > 0 if interval is not None else gain > 1e-9
                values["kept"] = (values[student] - values[baseline]) / gain if real else None
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
    values = report[tasks[0]][first(tasks[0])] if tasks else {}
    student_vs_baseline = f"{_mean(values, 'student')} - {_mean(values, 'baseline')}"  # seed means when there are
    seeds = " (mean over seeds)" if "student_mean" in values else ""
    lines = [line("The ensemble beats its best member", "ensemble - best member", tasks),
             line(f"The student beats the baseline MT-DNN{seeds}", student_vs_baseline, with_teacher)]
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
        lines.append(line(f"The gain carries to tasks without a teacher ({student_vs_baseline})", student_vs_baseline,
                          without))
    finetuned_vs = f"{_mean(values, 'student_ft')} - {_mean(values, 'baseline_ft')}"
    finetuned = [task for task in tasks if finetuned_vs in found.get(task, {}).get(first(task), {})]
    if finetuned:
        lines.append(line(f"After per-task fine-tuning, the student beats the baseline{seeds}", finetuned_vs, finetuned))
    variants = [row for row in values if VARIANT.match(row)]
    for row in variants:  # beyond the paper
        what = "teacher annealing" if row.endswith("anneal") else f"self-distillation round {row.split('_r')[-1]}"
        lines.append(line(f"Beyond the paper, {what} ({row}) beats the student", f"{row} - student", tasks))
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


def _cell(values: Mapping, row: str) -> str:
    if values.get(row) is None:
        return "-"
    spread = values.get(row[: -len("_mean")] + "_sd") if row.endswith("_mean") else None
    return f"{100 * values[row]:.1f}" + (f" ± {100 * spread:.1f}" if spread is not None else "")


def columns(report: Mapping, rows: Sequence[str]) -> list[str]:
    """`rows` with each seed mean (`student_mean`, ...) after its last run."""
    order = list(rows)
    for name, runs in seed_runs(rows).items():
        if any(f"{name}_mean" in values for metrics in report.values() for values in metrics.values()):
            order.insert(order.index(runs[-1]) + 1, f"{name}_mean")
    return order


def report_table(report: Mapping, rows: Sequence[str]) -> str:
    """The scores as a Markdown table, one line per task and metric (seed means as mean ± sd)."""
    header = ["task", "metric", *rows, "kept"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task, metrics in report.items():
        for metric, values in metrics.items():
            cells = [_cell(values, row) for row in rows]
            kept = values.get("kept")
            shown = f"{100 * kept:.0f}%" if kept is not None else ("n.s." if "kept" in values else "-")
            lines.append("| " + " | ".join([task, metric, *cells, shown]) + " |")
    return "\n".join(lines)


def interval_table(found: Mapping) -> str:
    """The differences (x100) with their 95% paired bootstrap intervals; * marks significant ones."""
    names = list(dict.fromkeys(name for metrics in found.values() for pairs in metrics.values() for name in pairs))
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
    order = columns(report, order)
    claim_lines = claims(report, found, teacher_tasks) if found else []
    warning_lines = warnings(report, histories)
    text = report_table(report, order)
    means = seed_runs(order)
    if means:
        text += ("\n\n" + "; ".join(f"{name}_mean: mean ± sd over {len(runs)} seeds ({', '.join(runs)})"
                                    for name, runs in means.items()) + ".")
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
