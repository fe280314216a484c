"""The analysis half of benchmarks/trec_probes: reads the trained probes, prints and saves the tables."""

from __future__ import annotations

import json
import os
from typing import Mapping, Sequence

import numpy as np

RUN = lambda name, run: name if run == 0 else f"{name}_s{run + 1}"  # noqa: E731


def _cpu() -> str:
    with open("/proc/cpuinfo", encoding="utf-8") as handle:
        return next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "unknown")


def analyse(out: str, configs: Mapping, seeds: int, tasks: Sequence[str]) -> dict:
    from mtkd_tf.distill import soft_labels
    from mtkd_tf.experiment import Experiment
    from mtkd_tf.experiment.significance import compare, t_interval
    from mtkd_tf.models import model_dir
    from mtkd_tf.models.evaluation import accuracy
    from mtkd_tf.models.inference import predict_outputs

    main = Experiment(configs["main"])
    dev = {task: main.data.dev[task]["dev"] for task in tasks}
    train = {task: main.data.train[task] for task in tasks}
    found: dict = {"cpu": _cpu(), "cores": os.cpu_count(), "soft_targets": {}, "models": {}, "probes": {}}

    for task in tasks:  # the soft targets on the training examples
        stored = soft_labels.read(soft_labels.path_for(os.path.join(out, "main", "soft_labels"), task))
        targets = soft_labels.align(stored, train[task].task, train[task], 1.0)
        labels = np.asarray(train[task].labels)
        stats = soft_labels.statistics(targets, labels)
        stats["class_order_matches_head"] = list(stored.metadata["labels"]) == list(train[task].task.labels)
        stats["mean_mass_per_class"] = dict(
            zip(train[task].task.labels, np.round(targets.mean(0), 4).tolist(), strict=True)
        )
        stats["gold_share_per_class"] = dict(
            zip(
                train[task].task.labels,
                np.round(np.bincount(labels, minlength=targets.shape[1]) / len(labels), 4).tolist(),
                strict=True,
            )
        )
        found["soft_targets"][task] = stats

    def evaluate(name: str, directory: str) -> None:
        model = model_dir.load(directory)
        entry = {}
        for task in tasks:
            outputs = predict_outputs(model, dev[task])
            probabilities = np.exp(outputs)
            predicted, labels = probabilities.argmax(1), np.asarray(dev[task].labels)
            names = dev[task].task.labels
            entry[task] = {
                "accuracy": accuracy(labels, predicted),
                "mean_top_probability": float(probabilities.max(1).mean()),
                "per_class_accuracy": {
                    names[c]: float(np.mean(predicted[labels == c] == c)) if np.any(labels == c) else None
                    for c in range(len(names))
                },
                "predicted_share": {names[c]: float(np.mean(predicted == c)) for c in range(len(names))},
                "predictions": predicted.tolist(),
                "outputs": outputs,
            }
        found["models"][name] = entry

    for k in range(3):
        evaluate(f"member_{k}", os.path.join(out, "main", "teachers", f"member_{k}"))
    for probe in configs:
        for run in range(seeds):
            for kind in ("baseline", "student"):
                directory = os.path.join(out, probe, RUN(kind, run))
                if model_dir.exists(directory):
                    evaluate(f"{probe}/{RUN(kind, run)}", directory)

    for task in tasks:  # student - baseline per probe: mean of the seed-paired differences with its t-interval
        labels = np.asarray(dev[task].labels)
        for probe in configs:
            own = "epochs3" if probe == "epochs3" else "main"
            students = [found["models"].get(f"{probe}/{RUN('student', r)}") for r in range(seeds)]
            baselines = [found["models"].get(f"{own}/{RUN('baseline', r)}") for r in range(seeds)]
            if not all(students) or not all(baselines):
                continue
            differences = [s[task]["accuracy"] - b[task]["accuracy"] for s, b in zip(students, baselines, strict=True)]
            both = compare(
                accuracy,
                labels,
                [np.asarray(s[task]["predictions"]) for s in students],
                [np.asarray(b[task]["predictions"]) for b in baselines],
            )
            found["probes"].setdefault(task, {})[probe] = {
                "students": [s[task]["accuracy"] for s in students],
                "baselines": [b[task]["accuracy"] for b in baselines],
                "t_interval": t_interval(differences).to_list(),
                "seeds_and_examples": both.to_list(),
                "student_top_probability": float(np.mean([s[task]["mean_top_probability"] for s in students])),
                "baseline_top_probability": float(np.mean([b[task]["mean_top_probability"] for b in baselines])),
            }
    equal = []  # alpha 0 must be the baseline
    for run in range(seeds):
        a, b = found["models"].get(f"alpha0/{RUN('student', run)}"), found["models"].get(f"main/{RUN('baseline', run)}")
        if a and b:
            equal.append(max(float(np.max(np.abs(a[t]["outputs"] - b[t]["outputs"]))) for t in tasks))
    found["alpha0_max_output_difference"] = equal
    for entry in found["models"].values():
        for task in tasks:
            entry[task].pop("outputs")
    with open(os.path.join(out, "probes.json"), "w", encoding="utf-8") as handle:
        json.dump(found, handle, indent=1)
    _print(found, tasks)
    return found


def _print(found: dict, tasks: Sequence[str]) -> None:
    print(f"CPU: {found['cores']} x {found['cpu']}")
    print("\nSoft targets on the training examples:")
    for task, stats in found["soft_targets"].items():
        print(
            f"- {task}: mean p(gold) {stats['gold_probability']:.3f}, agreement {100 * stats['agreement']:.1f}%, "
            f"entropy {stats['entropy']:.3f} of {stats['max_entropy']:.3f}, class order = head's: "
            f"{stats['class_order_matches_head']}; mass per class {stats['mean_mass_per_class']} against gold "
            f"{stats['gold_share_per_class']}"
        )
    for task in tasks:
        print(
            f"\n{task} dev accuracy, student - baseline (x100): mean of 3 seed-paired differences [t-interval] "
            "| [seeds + examples]"
        )
        print("| probe | students | baselines | difference [t] | [seeds + examples] | top p student / baseline |")
        print("|---|---|---|---|---|---|")
        for probe, row in found["probes"].get(task, {}).items():
            t, both = row["t_interval"], row["seeds_and_examples"]
            print(
                f"| {probe} | {' / '.join(f'{100 * v:.1f}' for v in row['students'])} | "
                f"{' / '.join(f'{100 * v:.1f}' for v in row['baselines'])} | {100 * t[0]:+.1f} [{100 * t[1]:+.1f}, "
                f"{100 * t[2]:+.1f}] | [{100 * both[1]:+.1f}, {100 * both[2]:+.1f}] | "
                f"{row['student_top_probability']:.3f} / {row['baseline_top_probability']:.3f} |"
            )
    print("\ntrec per-class dev accuracy (x100), mean over seeds:")
    names = list(next(iter(found["models"].values()))["trec"]["per_class_accuracy"])
    print("| model | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    groups: dict = {}
    for name, entry in found["models"].items():
        groups.setdefault(name.split("_s")[0] if "/" in name else name, []).append(entry["trec"]["per_class_accuracy"])
    for name, entries in groups.items():
        print(f"| {name} | " + " | ".join(f"{100 * np.mean([e[c] for e in entries]):.1f}" for c in names) + " |")
    print(
        "\nalpha 0 against the baseline of the same seed, max |output difference|: "
        f"{found['alpha0_max_output_difference']}"
    )
