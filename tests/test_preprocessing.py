import numpy as np
import tensorflow as tf

from mtkd_tf.data.preprocessing import Preprocessor, load_tokenizer

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "movie", "was", "good", "bad", "plot", "a"]


def _preprocessor(length=16, multiple=0):
    return Preprocessor(load_tokenizer(VOCAB, lowercase=True), length, pad_to_multiple_of=multiple)


def test_pairs_pack_into_two_segments_with_cls_and_sep():
    pre = _preprocessor()
    features = pre(tf.constant(["The movie was good"]), tf.constant(["a bad plot"]))
    ids = features["token_ids"].numpy()[0]
    segments = features["segment_ids"].numpy()[0]
    mask = features["padding_mask"].numpy()[0]
    cls, sep = VOCAB.index("[CLS]"), VOCAB.index("[SEP]")
    words = [VOCAB.index(w) for w in "the movie was good".split()]
    second = [VOCAB.index(w) for w in "a bad plot".split()]
    assert ids[:10].tolist() == [cls, *words, sep, *second, sep]
    assert segments[:10].tolist() == [0] * 6 + [1] * 4
    assert mask.tolist() == [1] * 10 + [0] * 6
    assert ids.shape == (16,) and features["token_ids"].dtype == tf.int32


def test_truncation_keeps_both_segments_within_max_length():
    pre = _preprocessor(length=8)
    long_a = " ".join(["movie"] * 20)
    features = pre(tf.constant([long_a]), tf.constant(["good bad good bad good"]))
    segments = features["segment_ids"].numpy()[0]
    assert features["token_ids"].shape == (1, 8)
    assert 1 in segments and 0 in segments  # round-robin keeps part of each


def test_dynamic_padding_cuts_to_longest_rounded_up():
    pre = _preprocessor(length=64, multiple=8)
    features = pre(tf.constant(["good", "the movie was good the plot was bad"]))
    assert features["token_ids"].shape == (2, 16)  # longest 10 tokens -> 16
    assert int(np.sum(features["padding_mask"].numpy()[1])) == 10


def test_unknown_words_map_to_unk():
    pre = _preprocessor()
    ids = pre(tf.constant(["zebra"]))["token_ids"].numpy()[0]
    assert ids[1] == VOCAB.index("[UNK]")
