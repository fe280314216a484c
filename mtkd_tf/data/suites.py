"""Built-in data suites that need no download, materialised as files under the cache.

`glue_sample` writes a small synthetic GLUE in the official directory layout, with each
file's real quirks (CoLA without header, MNLI's 12/16 columns and matched/mismatched
splits, literal quote characters, test files with an index column). Labels follow simple
lexical rules plus label noise, so a tiny encoder learns them and ensembles have room to
help. It stands in for GLUE on offline machines and in tests.
"""

from __future__ import annotations

import csv
import os
import shutil
from typing import Callable

import numpy as np

from mtkd_tf.errors import ConfigError
from mtkd_tf.runtime import assets

_NOUNS = (
    "film story actor plot scene director cast script movie ending camera music hero villain city dog child house car"
    " river"
).split()
_ADJS = "old young dark bright long short strange quiet loud simple".split()
_VERBS = "shows tells builds hides finds loses follows meets watches breaks".split()
_POS = "good great wonderful brilliant charming moving superb delightful".split()
_NEG = "bad awful boring dull weak clumsy tedious poor".split()
_DETS = ["the", "a", "this", "that"]
_SYN = {"film": "movie", "movie": "film", "story": "tale", "shows": "reveals", "tells": "says", "big": "large"}


class _Writer:
    def __init__(self, root: str):
        self.root = root

    def write(self, directory: str, name: str, header: list[str] | None, rows: list[list]) -> None:
        path = os.path.join(self.root, directory, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(
                handle, delimiter="\t", quoting=csv.QUOTE_NONE, quotechar=None, escapechar=None, lineterminator="\n"
            )
            if header:
                writer.writerow(header)
            writer.writerows([[str(value) for value in row] for row in rows])


class _Text:
    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def pick(self, words, k=1):
        return [str(w) for w in self.rng.choice(words, k)]

    def clause(self) -> list[str]:
        return (
            self.pick(_DETS)
            + self.pick(_ADJS)
            + self.pick(_NOUNS)
            + self.pick(_VERBS)
            + self.pick(_DETS)
            + self.pick(_NOUNS)
        )

    def sentence(self, words: list[str]) -> str:
        text = " ".join(words)
        if self.rng.random() < 0.1:
            text = f'"{text}" , he said'  # literal quotes, as in real GLUE text
        return text

    def noisy(self, label: int, classes: int, noise: float) -> int:
        return int(self.rng.integers(classes)) if self.rng.random() < noise else label


def _sst2(t: _Text, n: int):
    rows = []
    for _ in range(n):
        positive = t.rng.random() < 0.5
        strong, weak = (_POS, _NEG) if positive else (_NEG, _POS)
        words = t.clause() + ["and", "was"] + t.pick(strong, 2) + (t.pick(weak) if t.rng.random() < 0.3 else [])
        rows.append((t.sentence(words), None, t.noisy(int(positive), 2, 0.1)))
    return rows


def _cola(t: _Text, n: int):
    rows = []
    for _ in range(n):
        words = t.clause()
        acceptable = t.rng.random() < 0.6
        if not acceptable:
            t.rng.shuffle(words)
        rows.append((" ".join(words) + " .", None, t.noisy(int(acceptable), 2, 0.1)))
    return rows


def _paraphrase(t: _Text, n: int):
    rows = []
    for _ in range(n):
        first = t.clause() + ["and"] + t.clause()
        same = t.rng.random() < 0.5
        if same:
            second = [_SYN.get(w, w) for w in first]
        else:
            second = first[:3] + t.clause() + ["and"] + t.clause()[:3]
        rows.append((t.sentence(first), t.sentence(second), t.noisy(int(same), 2, 0.1)))
    return rows


def _similarity(t: _Text, n: int):
    rows = []
    for _ in range(n):
        first = t.clause() + t.clause()
        keep = t.rng.random()
        second = [w if t.rng.random() < keep else str(t.rng.choice(_NOUNS + _ADJS)) for w in first]
        overlap = sum(a == b for a, b in zip(first, second, strict=True)) / len(first)  # second is first, edited
        score = float(np.clip(5 * overlap + t.rng.normal(0, 0.4), 0, 5))
        rows.append((" ".join(first), " ".join(second), round(score, 3)))
    return rows


def _nli(t: _Text, n: int, labels: tuple[str, ...]):
    rows = []
    for _ in range(n):
        premise = t.clause() + ["while"] + t.clause()
        kind = int(t.rng.integers(len(labels)))
        if kind == 0:  # entailment: a part of the premise
            hypothesis = premise[:6]
        elif len(labels) == 3 and kind == 2:  # contradiction: the premise negated
            hypothesis = premise[:3] + ["never"] + premise[3:6]
        else:  # neutral / not_entailment: something new, often hedged
            hypothesis = (["perhaps"] if t.rng.random() < 0.7 else []) + premise[:2] + t.clause()[2:]
        rows.append((t.sentence(premise), t.sentence(hypothesis), labels[t.noisy(kind, len(labels), 0.1)]))
    return rows


def _sizes(n: int) -> dict[str, int]:
    return {"train": n, "dev": max(n // 4, 8), "test": max(n // 8, 8)}


def _labelled(
    t: _Text, w: _Writer, sizes: dict[str, int], directory, make: Callable, header, to_row, test_header, to_test_row
) -> None:
    """Writes a task's train.tsv, dev.tsv and test.tsv (the test file with its own header and rows)."""
    for split in ("train", "dev", "test"):
        rows = make(t, sizes[split])
        if split == "test":
            w.write(directory, f"{split}.tsv", test_header, [to_test_row(i, r) for i, r in enumerate(rows)])
        else:
            w.write(directory, f"{split}.tsv", header, [to_row(i, r) for i, r in enumerate(rows)])


def _write_single_sentence(t: _Text, w: _Writer, sizes: dict[str, int]) -> None:
    """CoLA (no header, a source and a star column) and SST-2."""
    _labelled(
        t,
        w,
        sizes,
        "CoLA",
        _cola,
        None,
        lambda i, r: ["gj04", r[2], "" if r[2] else "*", r[0]],
        ["index", "sentence"],
        lambda i, r: [i, r[0]],
    )
    _labelled(
        t,
        w,
        sizes,
        "SST-2",
        _sst2,
        ["sentence", "label"],
        lambda i, r: [r[0], r[2]],
        ["index", "sentence"],
        lambda i, r: [i, r[0]],
    )


def _write_similarity_and_paraphrase(t: _Text, w: _Writer, sizes: dict[str, int]) -> None:
    """MRPC, STS-B and QQP."""
    _labelled(
        t,
        w,
        sizes,
        "MRPC",
        _paraphrase,
        ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
        lambda i, r: [r[2], 1000 + i, 2000 + i, r[0], r[1]],
        ["index", "#1 ID", "#2 ID", "#1 String", "#2 String"],
        lambda i, r: [i, 1000 + i, 2000 + i, r[0], r[1]],
    )
    sts_cols = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2"]
    _labelled(
        t,
        w,
        sizes,
        "STS-B",
        _similarity,
        sts_cols + ["score"],
        lambda i, r: [i, "main-news", "sample", "2017", i, "none", "none", r[0], r[1], r[2]],
        sts_cols,
        lambda i, r: [i, "main-news", "sample", "2017", i, "none", "none", r[0], r[1]],
    )
    _labelled(
        t,
        w,
        sizes,
        "QQP",
        _paraphrase,
        ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
        lambda i, r: [i, 2 * i, 2 * i + 1, r[0] + " ?", r[1] + " ?", r[2]],
        ["id", "question1", "question2"],
        lambda i, r: [i, r[0] + " ?", r[1] + " ?"],
    )


_MNLI_LABELS = ("entailment", "neutral", "contradiction")
_MNLI_HEAD = [
    "index",
    "promptID",
    "pairID",
    "genre",
    "sentence1_binary_parse",
    "sentence2_binary_parse",
    "sentence1_parse",
    "sentence2_parse",
    "sentence1",
    "sentence2",
]


def _mnli_row(i, r, dev):
    """An MNLI row: 12 columns (train), or 16 with the five annotators' labels (dev)."""
    extra = [r[2]] * (5 if dev else 1)
    return [
        i,
        i,
        f"{i}e",
        "fiction",
        f"( {r[0]} )",
        f"( {r[1]} )",
        f"(ROOT {r[0]})",
        f"(ROOT {r[1]})",
        r[0],
        r[1],
        *extra,
        r[2],
    ]


def _write_mnli(t: _Text, w: _Writer, sizes: dict[str, int]) -> None:
    """MNLI (train, matched and mismatched dev and test splits) and the diagnostic set."""
    for split, name in {
        "train": "train.tsv",
        "dev_matched": "dev_matched.tsv",
        "dev_mismatched": "dev_mismatched.tsv",
    }.items():
        dev = split != "train"
        rows = _nli(t, sizes["dev" if dev else "train"], _MNLI_LABELS)
        labels_cols = [f"label{k}" for k in range(1, 6)] if dev else ["label1"]
        w.write(
            "MNLI", name, _MNLI_HEAD + labels_cols + ["gold_label"], [_mnli_row(i, r, dev) for i, r in enumerate(rows)]
        )
    for name in ("test_matched.tsv", "test_mismatched.tsv"):
        rows = _nli(t, sizes["test"], _MNLI_LABELS)
        w.write("MNLI", name, _MNLI_HEAD, [_mnli_row(i, r, False)[:10] for i, r in enumerate(rows)])
    w.write(
        "diagnostic",
        "diagnostic.tsv",
        ["index", "sentence1", "sentence2"],
        [[i, r[0], r[1]] for i, r in enumerate(_nli(t, sizes["test"], _MNLI_LABELS))],
    )


def _write_two_way_nli(t: _Text, w: _Writer, sizes: dict[str, int]) -> None:
    """QNLI, RTE and WNLI (WNLI with 0/1 labels)."""
    two_way = ("entailment", "not_entailment")
    _labelled(
        t,
        w,
        sizes,
        "QNLI",
        lambda t, n: _nli(t, n, two_way),
        ["index", "question", "sentence", "label"],
        lambda i, r: [i, r[1] + " ?", r[0], r[2]],
        ["index", "question", "sentence"],
        lambda i, r: [i, r[1] + " ?", r[0]],
    )
    _labelled(
        t,
        w,
        sizes,
        "RTE",
        lambda t, n: _nli(t, n, two_way),
        ["index", "sentence1", "sentence2", "label"],
        lambda i, r: [i, r[0], r[1], r[2]],
        ["index", "sentence1", "sentence2"],
        lambda i, r: [i, r[0], r[1]],
    )
    _labelled(
        t,
        w,
        sizes,
        "WNLI",
        lambda t, n: [(a, b, int(c == "entailment")) for a, b, c in _nli(t, n, two_way)],
        ["index", "sentence1", "sentence2", "label"],
        lambda i, r: [i, r[0], r[1], r[2]],
        ["index", "sentence1", "sentence2"],
        lambda i, r: [i, r[0], r[1]],
    )


def write_glue_sample(root: str, examples_per_task: int = 400, seed: int = 0) -> str:
    """Writes the synthetic GLUE-layout suite under `root` and returns it.

    One random stream feeds every file, so the tasks are written in a fixed order.
    """
    t = _Text(np.random.default_rng(seed))
    w = _Writer(root)
    sizes = _sizes(examples_per_task)
    _write_single_sentence(t, w, sizes)
    _write_similarity_and_paraphrase(t, w, sizes)
    _write_mnli(t, w, sizes)
    _write_two_way_nli(t, w, sizes)
    return root


RANKING_TASK_FILE = """\
# A pairwise ranking task (MT-DNN's QNLI formulation): candidates grouped by question.
tasks:
  - name: qa_rank
    type: ranking
    text_columns: [question, candidate]
    labels: [answer, other]
    positive_label: answer
    group_size: {group_size}
    files: {{train: train.tsv, dev: dev.tsv}}
"""


def write_ranking_sample(root: str, questions: int = 64, candidates: int = 4, seed: int = 0) -> str:
    """A synthetic question-answering ranking task under `root`; returns its task file.

    Each question ("which old film shows ?") has `candidates` sentences, one of which
    repeats its words (the answer); dev questions sometimes have one candidate more, as
    real data does.
    """
    rng = np.random.default_rng(seed)
    t = _Text(rng)
    w = _Writer(root)
    for split, count in (("train", questions), ("dev", max(questions // 4, 4))):
        rows = []
        for _ in range(count):
            answer = t.clause()
            question = " ".join(["which"] + answer[1:4] + ["?"])
            others = [t.clause() for _ in range(candidates - 1 + int(split == "dev" and rng.random() < 0.3))]
            group = [(" ".join(answer), "answer")] + [(" ".join(o), "other") for o in others]
            for k in rng.permutation(len(group)):
                rows.append([question, group[k][0], group[k][1]])
        w.write("qa_rank", f"{split}.tsv", ["question", "candidate", "label"], rows)
    path = os.path.join(root, "qa_rank.yaml")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(RANKING_TASK_FILE.format(group_size=candidates))
    return path


def _write_moviesuite(root: str, examples_per_task: int, seed: int) -> str:
    from mtkd_tf.data.moviesuite import write_moviesuite

    return write_moviesuite(root)


# name -> (writer, whether --suite_size and the seed shape it)
SUITES: dict[str, tuple[Callable[[str, int, int], str], bool]] = {
    "glue_sample": (write_glue_sample, True),
    "moviesuite": (_write_moviesuite, False),
}


def suite_tasks() -> dict:
    """Tasks of the built-in suites that are not GLUE tasks (for the task registry)."""
    from mtkd_tf.data.moviesuite import TASKS

    return dict(TASKS)


def suite_dir(name: str, examples_per_task: int = 400, seed: int = 0) -> str:
    """The directory of a built-in suite, written on first use (deterministic per size and seed).

    Writing happens in a staging directory renamed into place, so an interrupted build
    never leaves a half-written suite behind.
    """
    if name not in SUITES:
        raise ConfigError(f"suite {name!r} is unknown; built-in suites: {', '.join(SUITES)}", "suite")
    writer, sized = SUITES[name]
    label = f"{name}-{examples_per_task}-{seed}" if sized else f"{name}-v1"
    root = os.path.join(assets.cache_dir(), "suites", label)
    marker = os.path.join(root, ".complete")
    if not os.path.isfile(marker):
        staging = root + f".tmp{os.getpid()}"
        if os.path.isdir(staging):
            shutil.rmtree(staging)
        try:
            writer(staging, examples_per_task, seed)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        open(os.path.join(staging, ".complete"), "w").close()
        if os.path.isdir(root):
            shutil.rmtree(root)
        os.replace(staging, root)
    return root
