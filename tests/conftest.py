"""Shared fixtures: a small GLUE-layout directory and a tiny random encoder."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402  (CrashAt; after TF_CPP_MIN_LOG_LEVEL is set)
import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def in_ci() -> bool:
    """Whether this is a CI run (`CI=true`, as .ci/run and CI services set it)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _missing_module(report) -> str | None:
    """The reason of a skip that `pytest.importorskip` raised for a module that is not installed."""
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr or "")
    reason = reason.removeprefix("Skipped: ")
    return reason if reason.startswith("could not import ") or " has __version__ " in reason else None


def _fail_in_ci(report) -> None:
    """In CI a test skipped for a missing module fails: CI installs the test extra and the
    transformers peer (benchmarks/requirements-peer.txt), and a skipped parity test cannot fail."""
    reason = _missing_module(report) if report.skipped and in_ci() else None
    if reason:
        report.outcome = "failed"
        report.longrepr = (
            f"{reason}: CI installs every module the tests import (.ci/run: the test extra and "
            "benchmarks/requirements-peer.txt), so this skip is a failure here"
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_in_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_in_ci(outcome.get_result())


@pytest.fixture(scope="session")
def glue_dir(tmp_path_factory):
    """Synthetic GLUE in the official layout (every task, 64 training rows each)."""
    from mtkd_tf.data.suites import write_glue_sample

    return write_glue_sample(str(tmp_path_factory.mktemp("glue")), examples_per_task=64, seed=0)


@pytest.fixture(scope="session")
def tiny_encoder_factory(glue_dir):
    """Builds fresh tiny encoders (2 layers, hidden 64) with a vocabulary learned from the sample."""
    from mtkd_tf.data import readers
    from mtkd_tf.data.tasks import GLUE_TASKS
    from mtkd_tf.models.encoder import load_encoder
    from mtkd_tf.models.families import learn_wordpiece_vocabulary

    texts = []
    for name in ("sst2", "rte", "stsb", "mnli"):
        data = readers.load_split(GLUE_TASKS[name], "train", data_dir=glue_dir)
        texts += data.text_a + (data.text_b or [])
    vocabulary = learn_wordpiece_vocabulary(texts, 300)
    vocab_file = os.path.join(glue_dir, "vocab.txt")
    with open(vocab_file, "w", encoding="utf-8") as handle:
        handle.write("".join(token + "\n" for token in vocabulary))

    def make(seed=0, dropout=None):
        return load_encoder("tiny", dropout=dropout, vocab_file=vocab_file, seed=seed)

    make.vocab_file = vocab_file
    return make


@pytest.fixture(scope="module")
def splits(glue_dir):
    """The first 48 training examples of rte (SAN head) and of stsb (a score), in that order: the
    data test_distill.py and test_resume.py train on (their TASKS)."""
    from mtkd_tf.data import readers
    from mtkd_tf.data.tasks import GLUE_TASKS

    return [readers.load_split(GLUE_TASKS[name], "train", data_dir=glue_dir).take(48) for name in ("rte", "stsb")]


def run_cli(*args, env=None, timeout=600):
    """Runs bin/run in a subprocess; returns the CompletedProcess."""
    import subprocess

    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "bin", "run"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
        cwd=ROOT,
    )


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """One SavedModel export (TF Serving layout) of an untrained tiny MT-DNN, built once per session:
    sst2 (one sentence), rte (a pair, SAN head), stsb (a pair, regression; max_seq_length 64)."""
    from mtkd_tf.data.preprocessing import Preprocessor
    from mtkd_tf.data.tasks import GLUE_TASKS, with_answer_modules
    from mtkd_tf.export import saved_model as export
    from mtkd_tf.models import model_dir as model_dir_lib
    from mtkd_tf.models.encoder import load_encoder
    from mtkd_tf.models.mtdnn import MTDNN

    texts = [
        "the old film shows a dog and was great",
        "a dog",
        "perhaps the story",
        "bad acting, dull plot",
        "Ünïcödé — ça marche? 🎬",
        "日本語のテキスト",
    ] * 8
    encoder = load_encoder("tiny", training_texts=texts, vocabulary_size=200, seed=0)
    tasks = with_answer_modules([GLUE_TASKS[name] for name in ("sst2", "rte", "stsb")], [])
    model = MTDNN(encoder.backbone, tasks, preprocessor=Preprocessor(encoder.tokenizer, 64))
    directory = str(tmp_path_factory.mktemp("tiny_export"))
    model_dir_lib.save(
        os.path.join(directory, "model"), model, encoder.tokenizer, encoder.lowercase, 64, encoder=encoder.spec
    )
    return export.export(os.path.join(directory, "model"), os.path.join(directory, "serving"))


@pytest.fixture(scope="module")
def served(tiny_export):
    """`tiny_export` loaded back for serving (imports tensorflow_text, as a server must)."""
    from mtkd_tf.export import saved_model as export

    return export.load_export(tiny_export)


class Crash(Exception):
    """Stands in for a pre-emption in in-process tests."""


class CrashAt(keras.callbacks.Callback):
    """Raises at the end of global step `step` (after that step's checkpoint, if any)."""

    def __init__(self, step):
        super().__init__()
        self.step, self.seen = step, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.step:
            raise Crash(f"killed at step {self.step}")
