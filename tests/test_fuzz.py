"""Fuzzed input (issue 31, item 5): property-based tests with `hypothesis` over every reader of
user files and requests. Any input either parses, or raises the project's own error naming the
file and line (or the field); no bare KeyError/TypeError/UnicodeDecodeError from deep inside, no
hang. Examples are derandomized with no example database, so every run tries the same inputs.
"""

import base64
import contextlib
import json
import os
import re
import signal

import numpy as np
import pytest
import yaml
from conftest import run_cli
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mtkd_tf.config import GROUP_OF_FIELD, ConfigError, ExperimentConfig, define_flags
from mtkd_tf.data import readers
from mtkd_tf.data.readers import DataError
from mtkd_tf.data.split import SplitData
from mtkd_tf.data.tasks import GLUE_TASKS, REGRESSION, TaskError, load_task_file
from mtkd_tf.distill import soft_labels
from mtkd_tf.distill.soft_labels import SoftLabelError
from mtkd_tf.export import saved_model as export

# MTKD_FUZZ_EXAMPLES=5000 searches longer, with fresh random examples each run.
EXAMPLES = int(os.environ.get("MTKD_FUZZ_EXAMPLES", 0))
FUZZ = settings(
    max_examples=EXAMPLES or 80,
    derandomize=not EXAMPLES,
    database=None,
    deadline=10_000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
EXAMPLE_SECONDS = 20  # a hang fails the example instead of stalling the run


@contextlib.contextmanager
def time_limit(seconds: int = EXAMPLE_SECONDS):
    """Raises TimeoutError in the test if its body runs longer than `seconds` (SIGALRM)."""

    def expire(signum, frame):
        raise TimeoutError(f"no answer within {seconds} s: the input made the reader hang")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def line_count(data: bytes) -> int:
    """Lines as the readers count them: ends are \\n, \\r\\n or a lone \\r."""
    return len(re.findall(rb"\r\n|\r|\n", data)) + 1


def assert_names_place(message: str, path: str, data: bytes | None = None) -> None:
    """The message names the file (and, when it names a line, one that the file has)."""
    assert path in message, message
    found = re.search(re.escape(path) + r":(\d+)", message)
    if found and data is not None:
        assert 1 <= int(found.group(1)) <= line_count(data), (message, line_count(data))


# --- delimited data files: the GLUE TSV layouts and a custom quoted CSV ------------------------

ODD = [
    "",
    " ",
    "0",
    "1",
    "2.5",
    "5",
    "-1",
    "nan",
    "inf",
    "1e999",
    "1_0",
    '"',
    '""',
    "'",
    '"a\tb"',
    "\\",
    "\x00",
    "\ufeff",
    "\u2028",
    "é",
    "🎬",
    "\t",
    ",",
    "\r",
    "\n",
    "entailment",
    "neutral",
    "contradiction",
]
CELL = st.one_of(st.sampled_from(ODD), st.text(max_size=10))


@pytest.fixture(scope="module")
def glue_lines(tmp_path_factory):
    """Real rows of each GLUE layout (header first), the seed of the mutations."""
    from mtkd_tf.data.suites import write_glue_sample

    root = write_glue_sample(str(tmp_path_factory.mktemp("glue")), examples_per_task=6, seed=0)
    files = {
        name: readers.split_path(GLUE_TASKS[name], split, root)
        for name, split in [
            ("sst2", "train"),
            ("cola", "train"),
            ("stsb", "train"),
            ("mrpc", "dev"),
            ("mnli", "test_matched"),
        ]
    }
    return {name: open(path, encoding="utf-8").read().splitlines() for name, path in files.items()}


def mutated_file(data, lines: list[str], delimiter: str) -> bytes:
    """The file's lines with cells replaced, dropped, added or split, lines dropped or added,
    then line endings, a BOM or bytes that are not UTF-8."""
    lines = list(lines)
    for _ in range(data.draw(st.integers(0, 4), label="edits")):
        if not lines:
            lines.append("")
        row = data.draw(st.integers(0, len(lines) - 1), label="row")
        cells = lines[row].split(delimiter)
        what = data.draw(st.sampled_from(["replace", "drop", "add", "drop_line", "new_line", "quote"]), label="edit")
        at = data.draw(st.integers(0, len(cells) - 1), label="cell")
        if what == "replace":
            cells[at] = data.draw(CELL, label="cell text")
        elif what == "drop":
            del cells[at]
        elif what == "add":
            cells.insert(at, data.draw(CELL, label="new cell"))
        elif what == "quote":
            cells[at] = '"' + cells[at]
        if what == "drop_line":
            del lines[row]
        elif what == "new_line":
            lines.insert(row, delimiter.join(data.draw(st.lists(CELL, max_size=12), label="new line")))
        else:
            lines[row] = delimiter.join(cells)
    ending = data.draw(st.sampled_from(["\n", "\r\n", "\r"]), label="line ending")
    text = ending.join(lines) + data.draw(st.sampled_from(["", ending]), label="last ending")
    raw = (data.draw(st.sampled_from(["", "\ufeff"]), label="bom") + text).encode("utf-8")
    if data.draw(st.booleans(), label="bad bytes"):
        at = data.draw(st.integers(0, len(raw)), label="at")
        raw = raw[:at] + data.draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80"])) + raw[at:]
    return raw


def check_split(data: SplitData, task, split: str) -> None:
    """A split that parsed is one the pipeline can use."""
    assert len(data) > 0 and data.ids == [f"{task.name}/{split}/{i}" for i in range(len(data))]
    assert len(data.text_a) == len(data) and (data.text_b is None or len(data.text_b) == len(data))
    if data.labels is not None:
        if task.type == REGRESSION:
            assert np.all(np.isfinite(data.labels))
            low, high = task.score_range or (-np.inf, np.inf)
            assert data.labels.dtype == np.float32 and np.all((data.labels >= low) & (data.labels <= high))
        else:
            assert data.labels.min() >= 0 and data.labels.max() < task.num_classes


@FUZZ
@given(st.data())
def test_glue_tsv_files_parse_or_name_file_and_line(glue_lines, tmp_path_factory, data):
    name = data.draw(st.sampled_from(sorted(glue_lines)), label="layout")
    task = GLUE_TASKS[name]
    split = "test_matched" if name == "mnli" else "dev" if name == "mrpc" else "train"
    raw = mutated_file(data, glue_lines[name], "\t")
    path = str(tmp_path_factory.getbasetemp() / "fuzz_glue.tsv")
    with open(path, "wb") as handle:
        handle.write(raw)
    skip = data.draw(st.booleans(), label="skip_bad_rows")
    with time_limit():
        try:
            parsed = readers.read_delimited(path, task, split, task.source.layout(split), skip_bad_rows=skip)
        except DataError as error:
            assert_names_place(str(error), path, raw)
            event("refused")
            return
    event("parsed")
    check_split(parsed, task, split)


REVIEWS = """tasks:
  - name: reviews
    type: classification
    labels: [neg, pos]
    text_columns: [text, other]
    label_column: stars
    delimiter: ','
    quoting: true
    files: {train: train.csv}
"""


@FUZZ
@given(st.data())
def test_quoted_csv_files_parse_or_name_file_and_line(tmp_path_factory, data):
    directory = tmp_path_factory.getbasetemp()
    (directory / "reviews.yaml").write_text(REVIEWS)
    task = load_task_file(str(directory / "reviews.yaml"))["reviews"]
    lines = ["text,other,stars", '"good, really",x,pos', 'bad,"multi\nline",neg', '"""quoted""",y,pos']
    raw = mutated_file(data, lines, ",")
    path = str(directory / "fuzz_reviews.csv")
    with open(path, "wb") as handle:
        handle.write(raw)
    with time_limit():
        try:
            parsed = readers.read_delimited(path, task, "train", task.source.layout("train"))
        except DataError as error:
            assert_names_place(str(error), path, raw)
            event("refused")
            return
    event("parsed")
    check_split(parsed, task, "train")


# --- task files (YAML and JSON) -------------------------------------------------------------

SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-3, 400), st.floats(allow_nan=True), st.text(max_size=8))
JSON_VALUE = st.recursive(
    SCALAR,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
COLUMN = st.sampled_from(["text", "other", "stars", 0, 1, 2, -1, 7])
LIKELY = {  # per field: values a user might write (right and wrong); any JSON value is tried too
    "name": st.sampled_from(["reviews", "rev-2", "bad name", "", "x/y"]),
    "type": st.sampled_from(["classification", "regression", "ranking", "nope"]),
    "labels": st.lists(st.sampled_from(["neg", "pos", "answer", "other", 1]), max_size=3),
    "text_columns": st.lists(COLUMN, max_size=3),
    "label_column": st.one_of(st.none(), COLUMN),
    "header": st.booleans(),
    "delimiter": st.sampled_from([",", "\t", ";", "", "ab", '"', "\n", " "]),
    "quoting": st.booleans(),
    "files": st.dictionaries(
        st.sampled_from(["train", "dev", "test", "unlabelled"]),
        st.sampled_from(["train.csv", "dev.tsv", "../x.csv"]),
        max_size=3,
    ),
    "directory": st.sampled_from(["reviews", "", "sub/dir"]),
    "score_range": st.lists(st.floats(-10, 10), max_size=3),
    "metrics": st.lists(st.sampled_from(["accuracy", "f1", "pearson", "bogus"]), max_size=2),
    "dropout": st.floats(-1, 2),
    "answer_module": st.sampled_from(["linear", "san", "other"]),
    "san_steps": st.integers(-1, 6),
    "san_step_dropout": st.floats(-1, 2),
    "group_size": st.integers(-1, 5),
    "positive_label": st.sampled_from(["answer", "pos", "none"]),
    "dev_splits": st.lists(st.sampled_from(["dev", "dev_x"]), max_size=2),
    "test_splits": st.lists(st.sampled_from(["test"]), max_size=1),
    "test_layout": st.fixed_dictionaries(
        {},
        optional={
            "text_columns": st.lists(COLUMN, max_size=3),
            "label_column": COLUMN,
            "header": st.booleans(),
            "delimiter": st.sampled_from([",", "ab"]),
            "quoting": st.booleans(),
            "bogus": st.just(1),
        },
    ),
    "predict_with": st.sampled_from(["reviews", "mnli"]),
    "submission_name": st.sampled_from(["R"]),
    "hf_name": st.sampled_from(["user/data"]),
    "hf_splits": st.dictionaries(st.sampled_from(["train", "dev"]), st.sampled_from(["train", "validation"])),
    "tfds_splits": st.dictionaries(st.sampled_from(["train"]), st.sampled_from(["train"])),
    "unknown_field": st.just(1),
}
VALID_ENTRY = {
    "name": "reviews",
    "type": "classification",
    "labels": ["neg", "pos"],
    "text_columns": ["text"],
    "label_column": "stars",
    "delimiter": ",",
    "files": {"train": "train.csv"},
}


@st.composite
def task_entries(draw):
    """A task entry: a valid one with fields changed, dropped or added (likely or any JSON values)."""
    if draw(st.integers(0, 3), label="one field"):  # mostly: one field of a valid entry set to a likely value
        field = draw(st.sampled_from(sorted(LIKELY)), label="field")
        return {**VALID_ENTRY, field: draw(LIKELY[field], label=field)}
    entry = dict(VALID_ENTRY) if draw(st.integers(0, 4), label="from valid") else {}
    for field in draw(st.lists(st.sampled_from(sorted(LIKELY)), max_size=4, unique=True), label="fields"):
        how = draw(st.sampled_from(["likely"] * 5 + ["any", "drop"]), label=f"{field} value")
        if how == "drop":
            entry.pop(field, None)
        else:
            entry[field] = draw(LIKELY[field] if how == "likely" else JSON_VALUE, label=field)
    if not draw(st.integers(0, 9), label="odd key"):
        entry[draw(st.one_of(st.integers(), st.booleans(), st.none(), st.text(max_size=4)))] = 1
    return entry


@st.composite
def task_files(draw) -> tuple[str, bytes]:
    """(suffix, bytes): a YAML or JSON task file, well formed or not."""
    entries = draw(
        st.lists(task_entries(), min_size=int(draw(st.integers(0, 9)) > 0), max_size=2, unique_by=str), label="entries"
    )
    document = draw(st.sampled_from([{"tasks": entries}] * 8 + [entries, {"other": entries}]), label="document")
    if not draw(st.integers(0, 19), label="any document"):
        document = draw(JSON_VALUE, label="document value")
    suffix = draw(st.sampled_from([".yaml", ".json"]), label="format")
    try:
        text = json.dumps(document) if suffix == ".json" else yaml.safe_dump(document, allow_unicode=True)
    except (TypeError, ValueError):  # keys JSON cannot hold: write YAML
        suffix, text = ".yaml", yaml.safe_dump(document, allow_unicode=True)
    raw = text.encode("utf-8")
    edit = draw(st.sampled_from(["none"] * 6 + ["cut", "insert", "bytes"]), label="edit")
    at = draw(st.integers(0, len(raw)), label="at")
    if edit == "cut":
        raw = raw[:at]
    elif edit == "insert":
        raw = (
            raw[:at]
            + draw(
                st.sampled_from(
                    [
                        b":",
                        b"- ",
                        b"{",
                        b"&a ",
                        b"*a",
                        b"!!python/object:os.system ",
                        b"\t",
                        b"name: twice\nname: again\n",
                    ]
                ),
                label="inserted",
            )
            + raw[at:]
        )
    elif edit == "bytes":
        raw = raw[:at] + b"\xff\xfe" + raw[at:]
    return suffix, raw


def one_task(**changes) -> tuple[str, bytes]:
    return ".json", json.dumps({"tasks": [{**VALID_ENTRY, **changes}]}).encode()


@FUZZ
@given(task_files())
@example((".yaml", b"\xff\xfetasks: []\n"))  # found: UnicodeDecodeError
@example((".yaml", b"tasks:\n- {name: a, type: regression, text_columns: [t], 1: x}\n"))  # TypeError in the message
@example(one_task(labels=None))  # found: TypeError
@example(one_task(score_range=["a", 1]))  # ValueError
@example(one_task(test_layout={}))  # KeyError
@example(one_task(files={"train": 3}))  # loaded; TypeError in the reader
@example(one_task(delimiter="ab"))  # loaded; TypeError in the reader
@example(one_task(header="false"))  # loaded as a header, silently
@example(one_task(type="regression"))  # loaded; its labels read as class ids of a regression task
def test_task_files_load_or_name_file_and_field(tmp_path_factory, task_file):
    suffix, raw = task_file
    directory = tmp_path_factory.getbasetemp()
    path = str(directory / f"fuzz_tasks{suffix}")
    with open(path, "wb") as handle:
        handle.write(raw)
    with time_limit():
        try:
            tasks = load_task_file(path)
        except TaskError as error:
            assert str(error).startswith(f"task file {path}"), str(error)
            event("refused: " + re.sub(r"task file \S+", "", str(error))[:50])
            return
        event("loaded")
        # A task that loads is one the readers can use: its files resolve, its layouts read.
        sample = str(directory / "fuzz_sample.csv")
        with open(sample, "w", encoding="utf-8") as handle:
            handle.write("text,other,stars\nhello,there,pos\n")
        for task in tasks.values():
            assert {type(task.source.header), type(task.source.quoting)} == {bool}
            assert task.type != REGRESSION or not task.labels
            for split in task.source.files:
                assert isinstance(readers.split_path(task, split, str(directory)), str)
                try:
                    check_split(readers.read_delimited(sample, task, split, task.source.layout(split)), task, split)
                except DataError as error:
                    assert_names_place(str(error), sample)


# --- soft-label files (.npz) -------------------------------------------------------------------


def sst2_split() -> SplitData:
    task = GLUE_TASKS["sst2"]
    texts = ["a fine film", "dull", "", "ünïcödé 🎬"]
    return SplitData(
        task, "train", [f"sst2/train/{i}" for i in range(4)], texts, labels=np.asarray([1, 0, 0, 1], np.int32)
    )


def valid_soft_arrays() -> dict:
    data = sst2_split()
    targets = np.asarray([[0.2, 0.8], [0.9, 0.1], [0.5, 0.5], [0.3, 0.7]], np.float32)
    soft = soft_labels.build(data.task, [data], [targets], ["/teachers/member_0"], 1.0)
    return {"ids": soft.ids.astype(str), "targets": soft.targets, "hashes": soft.hashes, "metadata": soft.metadata}


ARRAYS = hnp.arrays(
    dtype=st.one_of(hnp.scalar_dtypes(), hnp.unicode_string_dtypes(max_len=12), hnp.byte_string_dtypes(max_len=4)),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
)


@st.composite
def soft_label_files(draw) -> bytes:
    """A soft-label archive with members replaced, dropped or added, metadata fields changed, or
    its bytes cut or flipped."""
    import io

    arrays = valid_soft_arrays()
    metadata = dict(arrays.pop("metadata"))
    for _ in range(draw(st.integers(0, 2), label="changes")):
        what = draw(st.sampled_from(["array", "drop", "metadata field", "drop field", "metadata"]), label="change")
        if what == "array":
            arrays[draw(st.sampled_from(["ids", "targets", "hashes", "extra"]), label="member")] = draw(
                ARRAYS, label="array"
            )
        elif what == "drop":
            arrays.pop(draw(st.sampled_from(["ids", "targets", "hashes"]), label="dropped"), None)
        elif not isinstance(metadata, dict):
            continue
        elif what == "metadata field":
            key = draw(st.sampled_from(sorted(metadata) + ["extra"]), label="field")
            metadata[key] = draw(JSON_VALUE, label=key)
        elif what == "drop field" and metadata:
            metadata.pop(draw(st.sampled_from(sorted(metadata))), None)
        else:
            metadata = draw(JSON_VALUE, label="metadata")
    members = dict(arrays)
    if draw(st.integers(0, 5), label="keep metadata"):
        members["metadata"] = np.asarray(
            json.dumps(metadata)
            if draw(st.integers(0, 5), label="as JSON")
            else draw(st.text(max_size=20), label="metadata text")
        )
    buffer = io.BytesIO()
    np.savez(buffer, **members)
    raw = buffer.getvalue()
    edit = draw(st.sampled_from(["none"] * 4 + ["cut", "flip"]), label="edit")
    at = draw(st.integers(0, max(len(raw) - 1, 0)), label="at")
    if edit == "cut":
        raw = raw[:at]
    elif edit == "flip":
        raw = raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1 :]
    return raw


def soft_label_file(metadata: dict | None = None, **arrays) -> bytes:
    import io

    members = {**valid_soft_arrays(), **arrays}
    members["metadata"] = np.asarray(json.dumps(members["metadata"] if metadata is None else metadata))
    buffer = io.BytesIO()
    np.savez(buffer, **members)
    return buffer.getvalue()


@FUZZ
@given(soft_label_files())
@example(soft_label_file(metadata=[]))  # found: AttributeError
@example(soft_label_file(targets=np.float32(1.0)))  # TypeError: len() of unsized object
@example(soft_label_file(metadata={**valid_soft_arrays()["metadata"], "temperature": 2.0}))  # align: no file named
def test_soft_label_files_read_or_name_file_and_field(tmp_path_factory, raw):
    path = str(tmp_path_factory.getbasetemp() / "fuzz_sst2.npz")
    with open(path, "wb") as handle:
        handle.write(raw)
    data = sst2_split()
    with time_limit():
        try:
            soft = soft_labels.read(path)
            targets = soft_labels.align(soft, data.task, data, 1.0)
        except SoftLabelError as error:
            assert str(error).startswith(f"soft labels {path}"), str(error)
            event("refused")
            return
    event("read")
    assert targets.shape == (len(data), 2) and np.allclose(targets.sum(axis=1), 1, atol=1e-3)


# --- flagfiles and bin/run's flags -------------------------------------------------------------

FLAG_NAMES = sorted(GROUP_OF_FIELD)
FLAG_VALUE = st.one_of(
    st.sampled_from(
        [
            "",
            "0",
            "1",
            "-1",
            "2",
            "1e9",
            "0.5",
            "1.5",
            "nan",
            "inf",
            "-inf",
            "x",
            "true",
            "false",
            "none",
            "sst2",
            "sst2,rte",
            "sst2,,rte",
            "rte:0.5",
            "rte:x",
            "a:b:c",
            "0.1,x",
            "tiny",
            "train",
            "pipeline",
            "runs/x",
            "glue_sample",
            "random:layers=x",
            "~",
            "é🎬",
        ]
    ),
    st.text(st.characters(blacklist_categories=["Cc", "Cs", "Zl", "Zp"]), max_size=8),
)


SELF = "@SELF@"  # stands for the flagfile's own path


@st.composite
def flagfiles(draw) -> tuple[bytes, int]:
    """(bytes, argv form) of a flagfile: flags with likely and unlikely values, comments, junk,
    nested flagfiles (itself, a missing one), sometimes a byte that is not UTF-8."""
    lines = []
    for _ in range(draw(st.integers(0, 8), label="lines")):
        name = draw(st.sampled_from(FLAG_NAMES + ["no_such_flag"]), label="flag")
        kind = draw(
            st.sampled_from(
                ["value"] * 6
                + ["bare", "no", "single dash", "no dash", "comment", "junk", "self", "missing file", "empty flagfile"]
            ),
            label="line",
        )
        value = draw(FLAG_VALUE, label="value")
        lines.append(
            {
                "value": f"--{name}={value}",
                "bare": f"--{name}",
                "no": f"--no{name}",
                "single dash": f"-{name}={value}",
                "no dash": f"{name}={value}",
                "comment": f"# --{name}={value}",
                "junk": value,
                "self": f"--flagfile={SELF}",
                "missing file": "--flagfile=/nonexistent/x.cfg",
                "empty flagfile": "--flagfile=",
            }[kind]
        )
    raw = "\n".join(lines).encode("utf-8")
    if draw(st.integers(0, 7), label="bad bytes") == 0:
        at = draw(st.integers(0, len(raw)), label="at")
        raw = raw[:at] + b"\xff" + raw[at:]
    return raw, draw(st.integers(0, 2), label="argv form")


def parse_like_bin_run(argv: list[str]):
    """What bin/run does with its arguments before a mode runs: absl's parsing (a `flags.Error`
    is printed as `FATAL Flags parsing error: ...`, exit status 1), then the config (`MtkdError`:
    `error: ...`, exit status 2)."""
    from absl import flags

    from mtkd_tf.config import check_flagfiles

    check_flagfiles(argv)
    flag_values = flags.FlagValues()
    define_flags(flag_values)
    flag_values(["bin/run", *argv])
    return ExperimentConfig.from_flags(flag_values).validate()


@FUZZ
@given(flagfiles())
@example((b"--epochs=2\n--tasks=sst2,r\xe9te", 1))  # absl: UnicodeDecodeError
@example((b"--teacher_pool=2\n--num_teachers=3", 0))  # an error of the config that did not name the flagfile
def test_flagfiles_parse_or_name_file_and_flag(tmp_path_factory, flagfile):
    from absl import flags

    path = str(tmp_path_factory.getbasetemp() / "fuzz.cfg")
    raw, form = flagfile
    raw = raw.replace(SELF.encode(), path.encode())
    with open(path, "wb") as handle:
        handle.write(raw)
    with time_limit():
        try:
            config = ExperimentConfig.from_flagfile(path)
            event("parsed")
            assert ExperimentConfig.from_dict(config.to_dict()) == config
        except ConfigError as error:
            assert str(error).startswith(f"flagfile {path}"), str(error)
            event("refused")
        # bin/run: the file, or its lines as arguments
        lines = [line.strip() for line in raw.decode("utf-8", "replace").splitlines()]
        argv = [lines, [f"--flagfile={path}"], ["--flagfile", path] + lines[:2]][form]
        try:
            parse_like_bin_run(argv)
        except (flags.Error, ConfigError) as error:
            assert str(error), "an error without a message"


def test_bin_run_names_a_flagfile_that_is_not_utf8(tmp_path):
    """Found by the fuzzing above: absl read a flagfile with bytes that are not UTF-8 into a traceback."""
    (tmp_path / "inner.cfg").write_bytes(b"--epochs=2\n--tasks=sst2,r\xe9te\n")
    (tmp_path / "outer.cfg").write_text(f"# settings\n--flagfile={tmp_path}/inner.cfg\n")
    result = run_cli(f"--flagfile={tmp_path}/outer.cfg", "--mode=report", timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "inner.cfg:2: bytes that are not UTF-8" in result.stderr and "Traceback" not in result.stderr


# --- REST request bodies for serve_check -------------------------------------------------------

TEXT = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", " ", "a film", "\ud800", "a\udfffb", "\x00", "🎬" * 50, "word " * 300]),
    st.binary(max_size=12).map(lambda raw: {"b64": base64.b64encode(raw).decode()}),  # TF Serving's bytes
    st.sampled_from([{"b64": "not base64!"}, {"b64": 3}, {"b64": "", "x": 1}]),
    JSON_VALUE,
)
ROW = st.one_of(TEXT, st.dictionaries(st.sampled_from(["sentence1", "sentence2", "extra"]), TEXT, max_size=3))
SIGNATURES = st.one_of(st.sampled_from(["sst2", "rte", "stsb", "serving_default", "nope", ""]), JSON_VALUE)


PLAIN_TEXT = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", "a film", "🎬" * 50, "word " * 300]),
    st.binary(max_size=12).map(lambda raw: {"b64": base64.b64encode(raw).decode()}),
)
INPUTS = {
    "sst2": ["sentence1"],
    "serving_default": ["sentence1"],
    "rte": ["sentence1", "sentence2"],
    "stsb": ["sentence1", "sentence2"],
}


@st.composite
def request_bodies(draw):
    """A TF Serving REST :predict body: mostly a well-formed one with at most one part wrong (a text
    of another type, a missing or extra input, a column of another length); else anything."""
    if draw(st.integers(0, 2), label="well formed"):
        name = draw(st.sampled_from(sorted(INPUTS)), label="signature_name")
        count = draw(st.integers(0, 4), label="rows")
        columns = {key: draw(st.lists(PLAIN_TEXT, min_size=count, max_size=count), label=key) for key in INPUTS[name]}
        wrong = draw(st.sampled_from(["none"] * 4 + ["value", "drop input", "extra input", "length"]), label="wrong")
        if wrong == "value" and count:
            columns["sentence1"][draw(st.integers(0, count - 1))] = draw(TEXT, label="value")
        elif wrong == "drop input":
            del columns[draw(st.sampled_from(sorted(columns)))]
        elif wrong == "extra input":
            columns["extra"] = ["x"] * count
        elif wrong == "length":
            columns["sentence1"] = columns["sentence1"] + ["one more"]
        if draw(st.booleans(), label="rows form"):
            rows = [{key: values[i] for key, values in columns.items() if i < len(values)} for i in range(count)]
            if len(INPUTS[name]) == 1 and wrong == "none" and draw(st.booleans(), label="bare texts"):
                rows = [row["sentence1"] for row in rows]
            return {"signature_name": name, "instances": rows}
        return {"signature_name": name, "inputs": columns}
    body = {}
    if draw(st.integers(0, 4), label="has signature"):
        body["signature_name"] = draw(SIGNATURES, label="signature_name")
    form = draw(st.sampled_from(["instances"] * 3 + ["inputs"] * 2 + ["both", "neither", "any"]), label="form")
    if form in ("instances", "both"):
        body["instances"] = draw(st.one_of(st.lists(ROW, max_size=4), JSON_VALUE), label="instances")
    if form in ("inputs", "both"):
        columns = st.dictionaries(
            st.sampled_from(["sentence1", "sentence2", "extra"]),
            st.one_of(st.lists(TEXT, max_size=3), TEXT),
            max_size=3,
        )
        body["inputs"] = draw(st.one_of(columns, st.lists(TEXT, max_size=3), JSON_VALUE), label="inputs")
    if form == "any":
        return draw(JSON_VALUE, label="body")
    return body


@FUZZ
@given(request_bodies())
@example(["a film"])  # found: AttributeError
@example({"instances": {"sentence1": "a"}})  # KeyError
@example({"signature_name": "sst2", "instances": [1]})  # TypeError
@example({"signature_name": "sst2", "instances": [None]})  # ValueError
@example({"signature_name": "sst2", "instances": ["\ud800"]})  # ValueError
@example({"signature_name": "sst2", "instances": [["a", "b"]]})  # answered as two texts
@example({"signature_name": "rte", "instances": [{"sentence1": "a"}]})  # KeyError
@example({"signature_name": "rte", "inputs": {"sentence1": ["a", "b"], "sentence2": ["c"]}})  # the process aborted
@example({"signature_name": "sst2", "instances": [{"b64": base64.b64encode(b"caf\xc3").decode()}]})  # ValueError
@example({"signature_name": ["sst2"], "instances": ["a"]})  # TypeError: unhashable
def test_rest_bodies_answer_or_name_the_field(served, body):
    with time_limit():
        try:
            response = export.answer(served, body)
        except export.ExportError as error:
            assert re.search(r"instances|inputs|signature|request body", str(error)), str(error)
            event("refused")
            return
    event("answered")
    rows = body["instances"] if "instances" in body else None
    outputs = response["predictions"] if rows is not None else [response["outputs"]]
    if rows is not None:
        assert len(outputs) == len(rows)
    for output in outputs:
        values = [output[key] for key in ("probabilities", "score") if key in output]
        assert values and np.all(np.isfinite(np.asarray(values, dtype=np.float64)))


@st.composite
def request_files(draw) -> bytes:
    """A request body's JSON, cut, with a byte inserted (not UTF-8, or breaking the JSON), or nested deep."""
    body = draw(request_bodies(), label="body")
    raw = json.dumps(body, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    edit = draw(st.sampled_from(["none", "cut", "insert", "nest"]), label="edit")
    at = draw(st.integers(0, len(raw)), label="at")
    if edit == "cut":
        return raw[:at]
    if edit == "insert":
        return raw[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\n", b",", b"}", b"NaN", b"\x00"])) + raw[at:]
    if edit == "nest":
        return b"[" * 100_000 + raw + b"]" * 100_000
    return raw


@FUZZ
@given(request_files())
@example(b'{"instances":\n ["caf\xe9"]}')  # UnicodeDecodeError
@example(b'{"instances": ["a"]')  # JSONDecodeError
def test_request_files_read_or_name_file_and_line(tmp_path_factory, raw):
    path = str(tmp_path_factory.getbasetemp() / "fuzz_request.json")
    with open(path, "wb") as handle:
        handle.write(raw)
    with time_limit():
        try:
            export.read_request(path)
        except export.ExportError as error:
            assert_names_place(str(error), path, raw)
            assert re.search(re.escape(path) + r"(:\d+)*: ", str(error)), str(error)
            event("refused")
            return
    event("read")


def test_serve_check_names_the_request_file(tiny_export, tmp_path):
    request = tmp_path / "request.json"
    request.write_bytes(b'{"signature_name": "sst2",\n "instances": ["caf\xe9"]}')
    with pytest.raises(export.ExportError, match=r"request.json:2: bytes that are not UTF-8"):
        export.serve_check(tiny_export, str(request))
    request.write_text('{"signature_name": "sst2", "instances": [{"sentence1": 3}]}')
    with pytest.raises(export.ExportError, match=r"request.json: instances\[0\].sentence1 must be a string"):
        export.serve_check(tiny_export, str(request))
