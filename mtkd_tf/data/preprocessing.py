"""Tokenisation and packing with keras-hub, applied inside tf.data (no Python per-example loop).

`Preprocessor` turns one or two string tensors into encoder inputs: ids from the encoder's
keras-hub tokenizer (WordPiece, SentencePiece or byte-level BPE), then `MultiSegmentPacker` adds
the family's special tokens (`[CLS] A [SEP] B [SEP]`, or `<s> A </s></s> B </s>` for RoBERTa and
XLM-R: `DOUBLE_SEPARATOR`, which `mtkd_tf.models.families` reads), segment ids, and truncates
pairs round-robin to `sequence_length`.
"""

from __future__ import annotations

import os
from typing import Any

import keras_hub
import tensorflow as tf

from mtkd_tf.data.batch import FEATURES  # noqa: F401  (re-exported; the batch layout owns the names)
from mtkd_tf.errors import ConfigError


def load_tokenizer(vocabulary: str | list[str], lowercase: bool = True) -> keras_hub.models.BertTokenizer:
    """A BERT WordPiece tokenizer from a vocab.txt path or a token list."""
    if isinstance(vocabulary, str) and not os.path.isfile(vocabulary):
        raise FileNotFoundError(f"vocabulary file {vocabulary}: no such file")
    return keras_hub.models.BertTokenizer(vocabulary=vocabulary, lowercase=lowercase)


DOUBLE_SEPARATOR: dict[str, bool] = {
    "BertTokenizer": False,
    "DebertaV3Tokenizer": False,
    "ElectraTokenizer": False,
    "AlbertTokenizer": False,
    "DistilBertTokenizer": False,
    "RobertaTokenizer": True,
    "XLMRobertaTokenizer": True,
}
"""How the tokenizer of each supported encoder family (keras-hub class name) packs pairs:
`<s> A </s></s> B </s>` (True: RoBERTa, XLM-R) or `[CLS] A [SEP] B [SEP]`."""


def double_separator(tokenizer: Any) -> bool:
    """Whether `tokenizer`'s family packs pairs with two end tokens between the segments
    (`DOUBLE_SEPARATOR`; subclasses count as their keras-hub class)."""
    for klass in type(tokenizer).__mro__:  # most derived first
        if klass.__name__ in DOUBLE_SEPARATOR and getattr(keras_hub.models, klass.__name__, None) is klass:
            return DOUBLE_SEPARATOR[klass.__name__]
    raise ValueError(f"{type(tokenizer).__name__} is not the tokenizer of a supported encoder family")


PAD_TO_MULTIPLE_OF = 8
"""Default padding unit of dynamic batches: near-exact padding on short texts (16 padded
rt_polarity's batches 27% beyond their longest member, costing 1.1-1.2x per step on this CPU;
docs/performance.md), while keeping the set of batch shapes small."""


class Preprocessor:
    """Raw text -> `{token_ids, segment_ids, padding_mask}`, split in two halves for tf.data.

    `tokenize` runs once per example (and is cached); `pack` runs per batch, so batches
    can be padded only to their longest member (`pad_to_multiple_of` bounds the number of
    distinct shapes; 0 pads every batch to `sequence_length`).
    """

    def __init__(
        self,
        tokenizer: keras_hub.tokenizers.Tokenizer,
        sequence_length: int,
        pad_to_multiple_of: int = PAD_TO_MULTIPLE_OF,
    ):
        if sequence_length < 3:
            raise ConfigError(f"max_seq_length must be at least 3, got {sequence_length}", "max_seq_length")
        self.tokenizer = tokenizer
        self.sequence_length = sequence_length
        self.pad_to_multiple_of = pad_to_multiple_of
        end = tokenizer.end_token_id
        self.packer = keras_hub.layers.MultiSegmentPacker(
            sequence_length=sequence_length,
            start_value=tokenizer.start_token_id,
            end_value=end,
            sep_value=[end, end] if double_separator(tokenizer) else None,
            pad_value=tokenizer.pad_token_id,
            truncate="round_robin",
        )

    def prepare(self) -> "Preprocessor":
        """Makes the tokenizer's TF ops usable in a tf.data or tf.function graph: a SentencePiece
        tokenizer's op lives in TF's kernel cache, which `tf.random.set_seed` (hence
        `keras.utils.set_random_seed`) clears, so it is rebuilt from its proto here."""
        if getattr(self.tokenizer, "proto", None) is not None:
            self.tokenizer.set_proto(self.tokenizer.proto)
        return self

    def tokenize(self, *texts: tf.Tensor) -> tuple[tf.RaggedTensor, ...]:
        """Batched strings -> ragged token ids, one tensor per segment."""
        return tuple(self.tokenizer(text) for text in texts)

    def pack(self, *segments: tf.RaggedTensor) -> dict[str, tf.Tensor]:
        """Ragged token ids of 1 or 2 segments -> dense model inputs."""
        token_ids, segment_ids = self.packer(tuple(segments))
        padding_mask = tf.cast(token_ids != self.tokenizer.pad_token_id, tf.int32)
        features = {
            "token_ids": token_ids,
            "segment_ids": segment_ids,
            "padding_mask": padding_mask,
        }
        if self.pad_to_multiple_of:
            features = trim_to_longest(features, self.pad_to_multiple_of)
        return features

    def __call__(self, *texts: tf.Tensor) -> dict[str, tf.Tensor]:
        """Batched raw strings -> model inputs (tokenize + pack)."""
        return self.pack(*self.tokenize(*texts))


def trim_to_longest(features: dict[str, tf.Tensor], multiple: int) -> dict[str, tf.Tensor]:
    """Cuts padding columns beyond the batch's longest sequence, rounded up to `multiple`."""
    mask = features["padding_mask"]
    longest = tf.reduce_max(tf.reduce_sum(mask, axis=1))
    length = (longest + multiple - 1) // multiple * multiple
    length = tf.minimum(tf.maximum(length, 1), tf.shape(mask)[1])
    return {name: value[:, :length] for name, value in features.items()}
