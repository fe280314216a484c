"""The experiment's report: every model's scores, and the paper's claims as structured verdicts.

The report is built from its evidence alone (`Evidence`: each model's per-example predictions on
dev and on the held-out split, the labels, the training histories, the teacher selection, the
soft targets' statistics, the config and the machine), saved beside it as `report_outputs.npz`
and `report_inputs.json`; `rebuild(root)` (`bin/run --mode=report`) makes the same report.json
and report.md again without any model.

Claims are tested on the held-out split where the run has one (`heldout_examples`; dev made every
choice: teacher selection, the picked member), on each task's first metric:
- the ensemble beats its mean member, and the member picked on dev;
- the ensemble beats the baseline; the student beats the baseline;
- the student keeps at least half of the ensemble's gain (the paper: nearly all), asked only where
  that gain is significant, with an interval from the same resamples;
- the gain carries to tasks without a teacher, asked only where a teacher task gained;
- after fine-tuning the student beats the baseline; beyond the paper, each variant beats the student.
Each claim is `{key, claim, task, metric, split, estimate, low, high, level, method, seeds, p,
p_adjusted, family, verdict, reason}`; `verdict` is holds / does not hold / not significant / untested.
`key` names what is claimed (`student_vs_baseline`; `CLAIMS` holds every key with its title) and
`(key, task)` names one claim: the report matches claims on keys alone, `claim` is the title to read.
Intervals are seed-aware (`significance.compare`) where a side has two or more runs; a
comparison of single runs is "untested" (its example-only interval is shown, labelled). Intervals
are unadjusted 95%; verdicts use Holm-adjusted p-values within each `family`: the run's primary
claims (`--primary_claims`, fixed when the run starts: `fix_family`) and, separately, the other,
secondary ones; with none named, one family of every tested claim (`all`). The evidence records the
bootstrap's resample count (evidence without it used 1,000); the footer gives its Monte Carlo error.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Mapping, Sequence

import numpy as np

from mtkd_tf.distill import teacher_check
from mtkd_tf.distill.teacher_check import did_not_converge
from mtkd_tf.errors import ConfigError
from mtkd_tf.experiment import plots, significance
from mtkd_tf.experiment.claim_keys import (  # noqa: F401  (re-exported: the report's claims by key)
    CLAIMS,
    KEPT_THRESHOLD,
    KNOWN_KEYS,
    VARIANT_CLAIM,
    check_claim_keys,
    claim_kind,
    variant_key,
)
from mtkd_tf.experiment.layout import members, seed_runs, variant
from mtkd_tf.experiment.significance import (
    LEVEL,
    REGISTERED_RESAMPLES,
    Comparison,
    compare_many,
    holm,
    ratio_interval,
)
from mtkd_tf.models.evaluation import METRIC_FUNCTIONS
from mtkd_tf.runtime.files import read_json, write_atomic, write_json, write_npz

INPUTS, OUTPUTS = "report_inputs.json", "report_outputs.npz"
ALPHA = 1 - LEVEL
STILL_LEARNING = 0.10  # a task's loss that fell 10% or more over the last epoch: not converged
HOLDS, FAILS, NOT_SIGNIFICANT, UNTESTED = "holds", "does not hold", "not significant", "untested"

# --- the claims' families: Holm runs within each, fixed before the run ------------------------------

PRIMARY, SECONDARY, ALL = "primary", "secondary", "all"  # a claim's Holm family (`all`: no primary claims named)
FAMILY_FILE = "claims_family.json"  # the run's primary claims, recorded when its pipeline starts


def family(key: str, primary: Sequence[str] | None) -> str:
    """The Holm family of the claims named `key`: primary or secondary when the run named primary claims, else all."""
    if not primary:
        return ALL
    return PRIMARY if key in primary else SECONDARY


def describe_family(primary: Sequence[str] | None) -> str:
    """A family as the errors say it."""
    return (
        f"primary claims {', '.join(sorted(primary))}" if primary else "no primary claims (one family of every claim)"
    )


def same_family(recorded: Sequence[str] | None, given: Sequence[str] | None, root: str) -> None:
    """A ConfigError naming both families if `given` differs from the one the run in `root` recorded."""
    if sorted(set(recorded or ())) != sorted(set(given or ())):
        raise ConfigError(
            f"primary_claims: the run in {root} recorded {describe_family(recorded)}, not "
            f"{describe_family(given)}: a run's family is fixed before it starts (use the recorded one; "
            "--mode=report with --primary_claims empty uses it)",
            "primary_claims",
        )


def recorded_family(root: str) -> tuple[bool, list[str] | None]:
    """`(found, primary claims)` a run in `root` recorded: its family file, else its evidence (from
    before family files; no field: no primary claims)."""
    for name in (FAMILY_FILE, INPUTS):
        path = os.path.join(root, name)
        if os.path.isfile(path):
            return True, read_json(path).get("primary_claims") or None
    return False, None


def fix_family(root: str, primary: Sequence[str] | None) -> list[str] | None:
    """Records the run's primary claims in `root` before its first stage; a run resumed (or a report
    built) with a different family is refused, naming both. Returns the family."""
    found, recorded = recorded_family(root)
    if found:
        same_family(recorded, primary, root)
        if os.path.isfile(os.path.join(root, FAMILY_FILE)):
            return recorded
    write_json(os.path.join(root, FAMILY_FILE), {"primary_claims": sorted(set(primary)) if primary else None})
    return sorted(set(primary)) if primary else None


@dataclasses.dataclass
class Evidence:
    """Everything a report is built from. `predictions[(row, task, split)]` are decided predictions
    (class ids, or scores); `labels` / `groups` are keyed by `(task, split)`; `tasks[task]` holds
    its `metrics` and, per split, the metric suffix (`{"dev_matched": "matched"}`)."""

    rows: list[str]
    tasks: dict[str, dict]
    predictions: dict[tuple[str, str, str], np.ndarray]
    labels: dict[tuple[str, str], np.ndarray]
    groups: dict[tuple[str, str], np.ndarray] = dataclasses.field(default_factory=dict)
    teacher_tasks: list[str] | None = None
    histories: dict[str, list] = dataclasses.field(default_factory=dict)
    selection: dict | None = None
    gate: dict | None = None
    soft_targets: dict[str, dict] = dataclasses.field(default_factory=dict)
    heldout: dict[str, dict] = dataclasses.field(default_factory=dict)
    warmup_fraction: float = 0.1
    config: dict = dataclasses.field(default_factory=dict)
    environment: dict = dataclasses.field(default_factory=dict)
    seed: int = 0
    resamples: int = REGISTERED_RESAMPLES
    primary_claims: list[str] | None = None
    teacher_check: dict | None = None  # soft_labels/teacher_check.json: {"mode", "tasks": {task: check}}
    trivial: dict[str, float] = dataclasses.field(default_factory=dict)  # each task's trivial predictor (x100)

    def save(self, root: str) -> None:
        arrays = {f"pred|{row}|{task}|{split}": value for (row, task, split), value in self.predictions.items()}
        arrays.update({f"labels|{task}|{split}": value for (task, split), value in self.labels.items()})
        arrays.update({f"groups|{task}|{split}": value for (task, split), value in self.groups.items()})
        write_npz(os.path.join(root, OUTPUTS), arrays, compressed=True)
        fields = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("predictions", "labels", "groups")
        }
        write_json(os.path.join(root, INPUTS), fields)

    @classmethod
    def load(cls, root: str) -> "Evidence":
        for name in (INPUTS, OUTPUTS):
            if not os.path.isfile(os.path.join(root, name)):
                raise FileNotFoundError(
                    f"{os.path.join(root, name)}: no report evidence here (a pipeline run's evaluate stage writes it)"
                )
        fields = read_json(os.path.join(root, INPUTS))
        predictions, labels, groups = {}, {}, {}
        with np.load(os.path.join(root, OUTPUTS), allow_pickle=False) as saved:
            for name in saved.files:
                kind, *key = name.split("|")
                {"pred": predictions, "labels": labels, "groups": groups}[kind][tuple(key)] = saved[name]
        return cls(predictions=predictions, labels=labels, groups=groups, **fields)

    def splits(self, task: str, heldout: bool) -> list[str]:
        """The task's labelled dev splits, or its held-out split."""
        found = [split for (name, split) in self.labels if name == task]
        return [s for s in found if (s == "heldout") == heldout]

    def metric_name(self, task: str, split: str, metric: str) -> str:
        suffix = self.tasks[task]["suffixes"].get(split, "")
        return f"{metric}_{suffix}" if suffix else metric

    def score(self, row: str, task: str, split: str, metric: str) -> float | None:
        key = (row, task, split)
        if key not in self.predictions:
            return None
        return METRIC_FUNCTIONS[metric](self.labels[(task, split)], self.predictions[key])


# --- the tables -------------------------------------------------------------------------------------


def scores(evidence: Evidence, heldout: bool) -> dict:
    """`{task: {metric: {row: value, "<name>_mean": ..., "<name>_sd": ...}}}` on dev or the held-out split."""
    table: dict = {}
    for task, meta in evidence.tasks.items():
        for split in evidence.splits(task, heldout):
            for metric in meta["metrics"]:
                values = {row: evidence.score(row, task, split, metric) for row in evidence.rows}
                values = {row: value for row, value in values.items() if value is not None}
                for name, runs in seed_runs(list(values)).items():
                    if len(runs) > 1:
                        found = [values[run] for run in runs]
                        values[f"{name}_mean"], values[f"{name}_sd"] = (
                            float(np.mean(found)),
                            float(np.std(found, ddof=1)),
                        )
                if values:
                    table.setdefault(task, {})[evidence.metric_name(task, split, metric)] = values
    return table


def columns(table: Mapping, rows: Sequence[str]) -> list[str]:
    """`rows` with each seed mean (`student_mean`, ...) after its last run."""
    order = list(rows)
    for name, runs in seed_runs(rows).items():
        if any(f"{name}_mean" in values for metrics in table.values() for values in metrics.values()):
            order.insert(order.index(runs[-1]) + 1, f"{name}_mean")
    return order


def _cell(values: Mapping, row: str) -> str:
    if values.get(row) is None:
        return "-"
    spread = values.get(row[: -len("_mean")] + "_sd") if row.endswith("_mean") else None
    return f"{100 * values[row]:.1f}" + (f" ± {100 * spread:.1f}" if spread is not None else "")


def score_table(table: Mapping, rows: Sequence[str]) -> str:
    """The scores as a Markdown table, one line per task and metric (seed means as mean ± sd)."""
    lines = ["| " + " | ".join(["task", "metric", *rows]) + " |", "|" + "---|" * (len(rows) + 2)]
    for task, metrics in table.items():
        for metric, values in metrics.items():
            lines.append("| " + " | ".join([task, metric, *(_cell(values, row) for row in rows)]) + " |")
    return "\n".join(lines)


# --- the claims -------------------------------------------------------------------------------------


def _claim(
    key: str, task: str, metric: str, split: str, found: Comparison | None, reason: str = "", untested: str = ""
) -> dict:
    """Claim `key` on `task`; `untested` (a reason) keeps it from a verdict. A comparison of single runs
    is untested; a seed-aware one is judged by `_judge` after the multiplicity correction."""
    claim = {
        "key": key,
        "claim": claim_kind(key)[0],
        "task": task,
        "metric": metric,
        "split": split,
        "estimate": None,
        "low": None,
        "high": None,
        "level": LEVEL,
        "method": None,
        "seeds": None,
        "p": None,
        "p_adjusted": None,
        "family": None,  # set by `_judge`
        "verdict": UNTESTED,
        "reason": untested or reason,
    }
    if found is None:
        claim["reason"] = untested or "no rows to compare"
        return claim
    claim.update(
        estimate=found.estimate, low=found.low, high=found.high, method=found.method, seeds=list(found.seeds), p=found.p
    )
    if untested:
        return claim
    if not found.seed_aware:
        claim["reason"] = "untested: one seed (one run per side; the interval resamples examples only)"
    else:
        claim["verdict"] = None  # judged after the multiplicity correction
    return claim


def _judge(claims: list[dict], primary: Sequence[str] | None) -> None:
    """Holm within each family (the primary claims, the secondary ones; or one of all) over the claims
    still to judge; then holds / does not hold / not significant."""
    for claim in claims:
        claim["family"] = family(claim["key"], primary)
    for name in (PRIMARY, SECONDARY, ALL):
        judged = [claim for claim in claims if claim["verdict"] is None and claim["family"] == name]
        for claim, adjusted in zip(judged, holm([claim["p"] for claim in judged]), strict=True):
            claim["p_adjusted"] = adjusted
            if adjusted < ALPHA:
                claim["verdict"] = HOLDS if claim["estimate"] > 0 else FAILS
            else:
                claim["verdict"] = NOT_SIGNIFICANT


def comparisons(evidence: Evidence, task: str, split: str, metric: str, picked: str | None) -> dict[str, Comparison]:
    """Every comparison of the claims on one task, split and metric, jointly resampled."""
    rows = [row for row in evidence.rows if (row, task, split) in evidence.predictions]
    runs = seed_runs(rows)
    run = lambda row: evidence.predictions[(row, task, split)]  # noqa: E731
    sides = {
        "ensemble": ["ensemble"] if "ensemble" in rows else [],
        "mean member": members(rows),
        "picked member": [picked] if picked in rows else [],
        **runs,
    }
    wanted = [
        ("ensemble", "mean member"),
        ("ensemble", "picked member"),
        ("ensemble", "baseline"),
        ("student", "baseline"),
        ("student", "ensemble"),
        ("student_ft", "baseline_ft"),
    ]
    pairs = [
        (a, b)
        for a, b in wanted
        if sides.get(a) and sides.get(b) and (len(sides[a]) == len(sides[b]) or 1 in (len(sides[a]), len(sides[b])))
    ]
    pairs += [(row, "student") for row in rows if variant(row) and runs.get("student")]
    side = lambda name: [run(r) for r in sides[name]] if name in sides else [run(name)]  # noqa: E731
    variant_side = lambda a, b: side(b)[:1] if variant(a) else side(b)  # a variant is one seed: its own  # noqa: E731
    found = compare_many(
        METRIC_FUNCTIONS[metric],
        evidence.labels[(task, split)],
        [(side(a), variant_side(a, b)) for a, b in pairs],
        evidence.groups.get((task, split)),
        evidence.resamples,
        evidence.seed,
    )
    return {f"{a} - {b}": comparison for (a, b), comparison in zip(pairs, found, strict=True)}


def picked_member(evidence: Evidence, task: str) -> str | None:
    """The member with the best dev score on the task's first metric (the winner a user would pick)."""
    metric, split = evidence.tasks[task]["metrics"][0], evidence.splits(task, heldout=False)[0]
    scored = {row: evidence.score(row, task, split, metric) for row in members(evidence.rows)}
    scored = {row: value for row, value in scored.items() if value is not None}
    return max(scored, key=scored.__getitem__) if scored else None


def claims(evidence: Evidence) -> tuple[list[dict], dict]:
    """The paper's claims on each task's first metric (held-out split where there is one), and
    `{task: {"a - b": Comparison}}` behind them."""
    everything, found = [], {}
    teacher_tasks = evidence.teacher_tasks if evidence.teacher_tasks is not None else list(evidence.tasks)
    split_of = {
        task: (evidence.splits(task, heldout=True) or evidence.splits(task, heldout=False))[0]
        for task in evidence.tasks
    }
    for task, meta in evidence.tasks.items():
        found[task] = comparisons(evidence, task, split_of[task], meta["metrics"][0], picked_member(evidence, task))
    dev_note = (
        ""
        if any(evidence.splits(t, True) for t in evidence.tasks)
        else "no held-out split (heldout_examples=0): tested on dev, which also picked the member and the teachers; "
    )
    for task, meta in evidence.tasks.items():
        split = split_of[task]
        metric = evidence.metric_name(task, split, meta["metrics"][0])
        everything += _task_claims(task, metric, split, found[task], task in teacher_tasks, dev_note)
    everything = [c for c in everything if c["reason"] != "no rows to compare"]
    _judge(everything, evidence.primary_claims)
    _gates(everything, evidence, found, teacher_tasks)
    return everything, found


def _task_claims(
    task: str, metric: str, split: str, found: Mapping[str, Comparison], teacher: bool, note: str
) -> list[dict]:
    """The claims on one task, from its comparisons `found` (`note` opens each reason)."""
    made = []
    has = lambda key: claim_kind(key)[1] in found
    claim = lambda key, reason="", untested="": made.append(
        _claim(key, task, metric, split, found.get(claim_kind(key)[1]), (note + reason).rstrip("; "), untested)
    )
    if teacher:
        claim(
            "ensemble_vs_mean_member",
            "members as seeds; the ensemble is one run, its own training noise is not included",
        )
        claim(
            "ensemble_vs_picked_member",
            untested="one ensemble against one member: training noise is unmeasured (example-only interval)"
            if has("ensemble_vs_picked_member")
            else "",
        )
        claim(
            "ensemble_vs_baseline",
            "one ensemble against the baseline's seeds: the ensemble's own training noise is not included",
        )
        claim("student_vs_baseline")
    elif has("gain_carries"):
        claim("gain_carries")
    if has("student_ft_vs_baseline_ft"):
        claim("student_ft_vs_baseline_ft")
    for comparison in found:
        row = comparison.split(" - ")[0]
        if variant(row):
            claim(
                variant_key(row),
                untested="one run of the variant against the student of the same seed: training noise is unmeasured",
            )
    return made


def _gates(everything: list[dict], evidence: Evidence, found: dict, teacher_tasks: Sequence[str]) -> None:
    """The claims asked only where another holds: the kept share (an ensemble gain to keep) and
    the gain carrying (a teacher-task gain to carry)."""
    verdict = {(c["key"], c["task"]): c["verdict"] for c in everything}
    gained = any(verdict.get(("student_vs_baseline", t)) == HOLDS for t in teacher_tasks)
    for c in everything:
        if c["key"] == "gain_carries" and not gained and c["verdict"] != UNTESTED:
            c["verdict"], c["reason"] = UNTESTED, "no teacher task's student gained significantly: no gain to carry"
    for task in teacher_tasks:
        if task not in found:
            continue
        beats = [i for i, c in enumerate(everything) if c["task"] == task and c["key"] == "student_vs_baseline"]
        if not beats:
            continue
        kept = {
            **everything[beats[0]],
            "key": "kept_share",
            "claim": claim_kind("kept_share")[0],
            "estimate": None,
            "low": None,
            "high": None,
            "method": None,
            "seeds": None,
            "p": None,
            "p_adjusted": None,
            "family": family("kept_share", evidence.primary_claims),
            "verdict": UNTESTED,
        }
        if verdict.get(("ensemble_vs_baseline", task)) != HOLDS:
            kept["reason"] = "the ensemble's gain over the baseline is not significant: nothing to keep"
        else:
            student = found[task][claim_kind("student_vs_baseline")[1]]
            gain = found[task][claim_kind("ensemble_vs_baseline")[1]]
            share = ratio_interval(student, gain)
            kept.update(
                estimate=share.difference,
                low=share.low,
                high=share.high,
                method=f"ratio of {gain.method}",
                seeds=list(student.seeds),
            )
            student_gained = verdict.get(("student_vs_baseline", task)) == HOLDS
            kept["verdict"] = (
                HOLDS
                if student_gained and share.low >= KEPT_THRESHOLD
                else FAILS
                if share.high < KEPT_THRESHOLD
                else NOT_SIGNIFICANT
            )
            kept["reason"] = (
                f"(student - baseline) / (ensemble - baseline); holds where the student beats the baseline "
                f"and the share's interval lies above {KEPT_THRESHOLD:.0%}"
            )
        everything.insert(beats[0] + 1, kept)


def p_text(p: float) -> str:
    """A p-value as the report prints it: to 0.01, and to 0.001 below 0.01 (what the default resample
    count leaves fixed; the footer gives the Monte Carlo error)."""
    return f"{p:.3f}" if p < 0.01 else f"{p:.2f}"


def claim_line(claim: Mapping) -> str:
    """One claim as text: the estimate with its interval (x100; the kept share as a fraction), p, verdict, why."""
    what = f"- {claim['claim']}: {claim['task']} {claim['metric']} ({claim['split']})"
    if claim["estimate"] is not None:
        share = claim["key"] == "kept_share"
        show = (lambda v: f"{v:+.2f}") if share else (lambda v: f"{100 * v:+.1f}")  # noqa: E731
        what += f" {show(claim['estimate'])} [{show(claim['low'])}, {show(claim['high'])}]"
    if claim["p"] is not None:
        within = f", {claim['family']}" if claim.get("family") in (PRIMARY, SECONDARY) else ""
        what += f", p {p_text(claim['p'])}" + (
            f" (Holm {p_text(claim['p_adjusted'])}{within})" if claim["p_adjusted"] is not None else ""
        )
    if claim["seeds"]:
        what += f", runs {claim['seeds'][0]} vs {claim['seeds'][1]}"
    verdict = claim["verdict"] + (f" ({claim['reason']})" if claim["reason"] else "")
    return f"{what}: **{verdict}**"


def monte_carlo(found_claims: Sequence[Mapping], found: Mapping, resamples: int, seed: int) -> dict:
    """The bootstrap's Monte Carlo error in this report: the largest standard error of a p, of a
    Holm-adjusted p (its multiplier times its p's) and of an interval bound (points x100)."""
    tested = [c for c in found_claims if c["p"] is not None and c["method"] is not None]
    errors = [significance.p_error(c["p"], resamples) for c in tested]
    adjusted = [
        significance.p_error(c["p"], resamples) * c["p_adjusted"] / c["p"]
        for c in tested
        if c["p_adjusted"] is not None and c["p_adjusted"] < 1 and c["p"] > 0
    ]
    bounds = [
        100 * max(significance.bound_error(comparison.draws, LEVEL))
        for pairs in found.values()
        for comparison in pairs.values()
        if comparison.draws is not None and len(comparison.draws) > 1
    ]
    return {
        "resamples": resamples,
        "seed": seed,
        "p_se_max": max(errors, default=None),
        "p_adjusted_se_max": max(adjusted, default=None),
        "bound_se_max": max(bounds, default=None),
    }


def monte_carlo_text(error: Mapping) -> str:
    """report.md's footer: the resample count and the Monte Carlo error of what the report prints."""
    count = error["resamples"]
    text = (
        f"\n\nMonte Carlo error ({count:,} bootstrap resamples, seed {error['seed']}; p is printed to 0.01, or 0.001 "
        f"below 0.01, bounds to 0.1 point): a p's standard error is 2 sqrt(q (1 - q) / {count:,}) with q = p / 2, "
        f"at most {1 / np.sqrt(count):.3f}"
    )
    if error["p_se_max"] is not None:
        text += f", here at most {error['p_se_max']:.3f}"
    if error["p_adjusted_se_max"] is not None:
        text += f"; a Holm-adjusted p's is its multiplier times that, here at most {error['p_adjusted_se_max']:.3f}"
    bound = error["bound_se_max"]
    if bound is not None:
        text += "; an interval bound's, from the draws around it, is " + (
            f"at most {bound:.2f} points here" if bound >= 0.005 else "below 0.01 points here"
        )
    return text + "."


# --- warnings and the whole report ----------------------------------------------------------------


def warnings(dev: Mapping, evidence: Evidence) -> list[str]:
    """Where a comparison measures noise: a member that did not converge (`teacher_check.did_not_converge`,
    on its dev score), or a task's loss still falling after warm-up."""
    found = []
    checked = (evidence.teacher_check or {}).get("tasks", {})
    for task, metrics in dev.items():
        metric = next(iter(metrics))
        scores = {row: 100 * metrics[metric][row] for row in members(list(metrics[metric]))}
        best = max(scores.values(), default=0.0)
        for row, score in scores.items():
            reason = did_not_converge(score, evidence.trivial.get(task), best)
            if reason is None:
                continue
            left_out = any(m["name"] == row and not m["kept"] for m in checked.get(task, {}).get("members", []))
            found.append(
                f"{task}: {row} did not converge (dev {metric}: {reason})"
                + ("; the teacher check left it out of the ensemble" if left_out else "")
            )
    for row, history in evidence.histories.items():
        warm = int(np.ceil(evidence.warmup_fraction * len(history))) if history else 0
        after = history[warm:]  # the epochs after warm-up: a warm-up epoch's mean loss is high by design
        if len(after) < 2:
            continue
        for task in evidence.tasks:
            key = f"{task}_loss"
            if key in after[-1] and after[-2].get(key, 0) > 0:
                drop = 1 - after[-1][key] / after[-2][key]
                if drop >= STILL_LEARNING:
                    found.append(
                        f"{row}: {task}'s training loss fell {100 * drop:.0f}% over its last epoch: it has not "
                        "converged, more epochs may change the comparison"
                    )
    return found


def soft_target_table(stats: Mapping[str, Mapping]) -> str:
    lines = [
        "| task | examples | mean p(gold) | agreement with gold | entropy (nats) | max entropy |",
        "|---|---|---|---|---|---|",
    ]
    for task, found in stats.items():
        lines.append(
            f"| {task} | {found['examples']} | {found['gold_probability']:.3f} | {100 * found['agreement']:.1f}% | "
            f"{found['entropy']:.3f} | {found['max_entropy']:.3f} |"
        )
    return "\n".join(lines)


def _scores_text(evidence: Evidence, dev: Mapping, held: Mapping, order: list) -> str:
    """The dev table, the held-out one when there is one, and what each seed mean averages."""
    text = "Dev scores (x100):\n\n" + score_table(dev, order)
    if held:
        text += (
            "\n\nHeld-out scores (x100; the claims' split, carved from training data, never trained on):\n\n"
            + score_table(held, columns(held, evidence.rows))
        )
    means = {name: runs for name, runs in seed_runs(order).items() if len(runs) > 1}
    if means:
        text += (
            "\n\n"
            + "; ".join(
                f"{name}_mean: mean ± sd over {len(runs)} seeds ({', '.join(runs)})" for name, runs in means.items()
            )
            + "."
        )
    return text


def _families_text(primary: Sequence[str] | None) -> str:
    """What the claims' Holm adjustment runs over."""
    if not primary:
        return "verdicts use Holm-adjusted p over every tested claim"
    return (
        f"verdicts use Holm-adjusted p within each family, fixed before the run: the primary claims "
        f"({', '.join(sorted(primary))}; Holm over the tested ones, marked primary) and, separately, the "
        "secondary ones (every other tested claim, marked secondary)"
    )


def _claims_text(found_claims: list[dict], primary: Sequence[str] | None = None) -> str:
    """The claims with their verdicts, and why one seed leaves them untested."""
    text = ""
    if found_claims:
        text += (
            "\n\nThe paper's claims (each task's first metric; estimate x100 with its unadjusted 95% interval; "
            f"{_families_text(primary)}; intervals count seeds and examples where a "
            "side has 2+ runs, else the claim is untested):\n" + "\n".join(claim_line(c) for c in found_claims)
        )
    if any("one seed" in c["reason"] for c in found_claims):
        text += (
            "\n\nOne seed per model cannot tell a method from the luck of a training run, so those claims are "
            "untested: run with --seeds=3 or more for verdicts (docs/results.md has such runs)."
        )
    return text


def _ensemble_text(evidence: Evidence) -> str:
    """The soft targets' statistics, the teacher selection and the gate, where the run has them."""
    text = ""
    if evidence.soft_targets:
        text += (
            "\n\nSoft targets on the training examples (what distillation adds beyond the labels):\n\n"
            + soft_target_table(evidence.soft_targets)
        )
    selection = evidence.selection
    if selection:
        ranked = sorted(selection["candidates"].items(), key=lambda item: -item[1]["mean"])
        text += (
            f"\n\nTeacher selection on {', '.join(selection['selection_tasks'])} dev (mean of each task's first "
            "metric): "
            + ", ".join(f"{name} {100 * entry['mean']:.1f}" for name, entry in ranked)
            + f"; kept {', '.join(selection['chosen'])}."
        )
    if evidence.teacher_check:
        text += (
            f"\n\nTeacher check (--teacher_check={evidence.teacher_check['mode']}; rules in docs/protocol.md; dev x100 "
            "on the selection subset):\n\n" + teacher_check.markdown(evidence.teacher_check["tasks"])
        )
    if evidence.gate:
        gate = evidence.gate
        text += (
            f"\n\nGate (before any student trained): the selected ensemble beat baseline run 0 on dev by "
            f"{gate['gain']:+.2f} points (teacher tasks' first metrics, averaged; margin {gate['margin']}): "
            + ", ".join(f"{task} {s['ensemble']:.1f} vs {s['baseline']:.1f}" for task, s in gate["scores"].items())
            + "."
        )
    return text


def build(evidence: Evidence) -> tuple[dict, str]:
    """report.json's content and report.md's text, from the evidence alone."""
    dev, held = scores(evidence, heldout=False), scores(evidence, heldout=True)
    order = columns(dev, evidence.rows)
    found_claims, found = claims(evidence)
    warning_lines = warnings(dev, evidence)
    text = (
        _scores_text(evidence, dev, held, order)
        + _claims_text(found_claims, evidence.primary_claims)
        + _ensemble_text(evidence)
    )
    if warning_lines:
        text += "\n\nWarnings:\n" + "\n".join(f"- {line}" for line in warning_lines)
    error = monte_carlo(found_claims, found, evidence.resamples, evidence.seed)
    if found_claims:
        text += monte_carlo_text(error)
    report = {
        "results": dev,
        "results_heldout": held,
        "claims": found_claims,
        "primary_claims": evidence.primary_claims,
        "bootstrap": error,
        "intervals": {
            task: {
                "split": next((c["split"] for c in found_claims if c["task"] == task), None),
                **{name: comparison.to_list() for name, comparison in pairs.items()},
            }
            for task, pairs in found.items()
        },
        "warnings": warning_lines,
        "soft_targets": evidence.soft_targets,
        "teacher_check": evidence.teacher_check,
        "heldout": evidence.heldout,
        "teacher_selection": dict(evidence.selection or {}),
        "gate": evidence.gate,
        "rows": order,
        "config": evidence.config,
        "environment": evidence.environment,
    }
    return report, text


def write_report(root: str, evidence: Evidence) -> tuple[dict, str]:
    """Writes report.json, report.md and the plots from `evidence`; returns the report and report.md's text."""
    report, text = build(evidence)
    write_json(os.path.join(root, "report.json"), report)
    write_atomic(os.path.join(root, "report.md"), text + "\n")
    shown = report["results_heldout"] or report["results"]
    bars = {task: {next(iter(shown[task])): pairs} for task, pairs in claims_intervals(report).items() if task in shown}
    plots.plot_scores(
        shown,
        report["rows"],
        os.path.join(root, "scores.png"),
        bars,
        "held-out" if report["results_heldout"] else "dev",
    )
    plots.plot_training_curves(
        evidence.histories.get("student", []),
        evidence.histories.get("baseline"),
        list(evidence.tasks),
        os.path.join(root, "training_curves.png"),
    )
    return report, text


def claims_intervals(report: Mapping) -> dict:
    """`{task: {"a - b": (estimate, low, high)}}` of the report's comparisons (the plots' error bars)."""
    return {
        task: {name: value for name, value in pairs.items() if name != "split"}
        for task, pairs in report["intervals"].items()
    }


def rebuild(root: str) -> dict:
    """Rebuilds report.json, report.md and the plots of a finished run from its saved evidence."""
    report, text = write_report(root, Evidence.load(root))
    print(text)
    return report


def read_report(root: str) -> dict:
    with open(os.path.join(root, "report.json"), encoding="utf-8") as handle:
        return json.load(handle)
