"""Small model directories of any encoder family, for the export tests: built, not trained
(an export must reproduce whatever weights the model holds), with weights whose
outputs are far from uniform and vary with the input, so that a wrong head mapping cannot hide
behind probabilities near 1/K."""

import os

import numpy as np

from mtkd_tf.data.preprocessing import Preprocessor
from mtkd_tf.models import model_dir as model_dir_lib
from mtkd_tf.models.encoder import load_encoder, with_activation
from mtkd_tf.models.mtdnn import MTDNN

HEAD_SCALE = 3.0  # head kernels ~ N(0, HEAD_SCALE^2 / hidden): logits of a few units


def moviesuite_texts(count: int = 400) -> list[str]:
    """Real sentences: the first `count` rt_polarity training sentences of moviesuite (a `download` asset)."""
    from mtkd_tf.data import moviesuite, readers, suites

    root = suites.suite_dir("moviesuite")
    return readers.load_split(moviesuite.TASKS["rt_polarity"], "train", data_dir=root).text_a[:count]


def moviesuite_sample(split: str = "dev", count: int = 12) -> dict[str, list]:
    """The first `count` examples of each moviesuite task's `split`: `{task: (text_a, text_b or None)}`."""
    from mtkd_tf.data import moviesuite, readers, suites

    root = suites.suite_dir("moviesuite")
    sample = {}
    for name, task in moviesuite.TASKS.items():
        data = readers.load_split(task, split, data_dir=root)
        sample[name] = (data.text_a[:count], data.text_b[:count] if data.text_b else None)
    return sample


def build_model_dir(
    directory: str,
    encoder_spec: str,
    tasks: list,
    texts: list[str] | None = None,
    vocab_file: str | None = None,
    max_seq_length: int = 64,
    exact_gelu: bool = False,
    rescale: bool = True,
    seed: int = 0,
) -> str:
    """Writes an MT-DNN of `encoder_spec` with `tasks` to `directory`, as training would save it
    (`rescale`: a random encoder's kernels redrawn at a trained model's scale)."""
    encoder = load_encoder(encoder_spec, vocab_file=vocab_file, training_texts=texts, vocabulary_size=400, seed=seed)
    backbone = with_activation(encoder.backbone, "gelu") if exact_gelu else encoder.backbone
    model = MTDNN(backbone, tasks, preprocessor=Preprocessor(encoder.tokenizer, max_seq_length))
    rng = np.random.default_rng(seed)
    # At keras-hub's initialisation (kernels ~ N(0, 0.02^2)) attention barely moves the [CLS] vector away from
    # its own embedding, so every input gets nearly the same pooled vector; kernels of a trained model's scale
    # make it depend on the text.
    for weight in backbone.weights if rescale else ():
        if weight.path.endswith("kernel"):
            weight.assign(rng.normal(0.0, 1.0 / np.sqrt(backbone.hidden_dim), weight.shape).astype("float32"))
    for head in model.heads.values():
        if hasattr(head, "dense"):
            kernel, bias = head.dense.get_weights()
            head.dense.set_weights(
                [
                    rng.normal(0.0, HEAD_SCALE / np.sqrt(kernel.shape[0]), kernel.shape).astype("float32"),
                    rng.normal(0.0, 0.5, bias.shape).astype("float32"),
                ]
            )
    model_dir_lib.save(directory, model, encoder.tokenizer, encoder.lowercase, max_seq_length, encoder=encoder_spec)
    return directory


def wordpiece_vocabulary(texts: list[str], directory: str, size: int = 400) -> str:
    """A WordPiece vocab.txt learned once from `texts` (shared by the WordPiece families: learning is the slow part)."""
    from mtkd_tf.models.families import learn_wordpiece_vocabulary

    path = os.path.join(directory, "vocab.txt")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("".join(token + "\n" for token in learn_wordpiece_vocabulary(texts, size)))
    return path
