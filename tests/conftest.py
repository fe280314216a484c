"""Shared fixtures: a small GLUE-layout directory and a tiny random encoder."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture(scope="session")
def glue_dir(tmp_path_factory):
    """Synthetic GLUE in the official layout (every task, 64 training rows each)."""
    from mtkd_tf.data.suites import write_glue_sample

    return write_glue_sample(str(tmp_path_factory.mktemp("glue")), examples_per_task=64, seed=0)


@pytest.fixture(scope="session")
def tiny_encoder_factory(glue_dir):
    """Builds fresh tiny encoders (2 layers, hidden 64) with a vocabulary learned from the sample."""
    from mtkd_tf.data import readers
    from mtkd_tf.models.encoder import load_encoder
    from mtkd_tf.models.families import learn_wordpiece_vocabulary
    from mtkd_tf.tasks import GLUE_TASKS

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


def run_cli(*args, env=None, timeout=600):
    """Runs bin/run in a subprocess; returns the CompletedProcess."""
    import subprocess

    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "bin", "run"), *args],
        capture_output=True, text=True, timeout=timeout, env=environment, cwd=ROOT,
    )
