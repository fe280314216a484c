"""Text-encoder families: the keras-hub backbone, tokenizer and packing of each one we accept.

MT-DNN needs three things from an encoder: a sequence output, one pooled vector per example and
a tokenizer with its way of packing one or two segments. keras-hub's families differ in all
three (which inputs the backbone takes, whether it has a pooled output, `[CLS] A [SEP] B [SEP]`
or `<s> A </s></s> B </s>`, WordPiece, SentencePiece or byte-level BPE); `Family` records
them (the packing is the preprocessing layer's, `mtkd_tf.data.preprocessing.DOUBLE_SEPARATOR`),
`encode` gives every backbone the same outputs, and `learn_tokenizer` / `random_backbone` build
small random encoders of any family from training text, offline.

>>> family = FAMILIES["roberta"]
>>> family.segments, family.double_separator, family.vocabulary
(False, True, 'bpe')
"""

from __future__ import annotations

import dataclasses
import io
import os
import tempfile
from typing import Any, Iterable

import keras
import keras_hub

from mtkd_tf.data.preprocessing import DOUBLE_SEPARATOR


@dataclasses.dataclass(frozen=True)
class Family:
    """One keras-hub text-encoder family."""

    name: str
    backbone: str  # class name in keras_hub.models
    tokenizer: str  # class name in keras_hub.models
    vocabulary: str  # how a random encoder's vocabulary is learned: wordpiece | sentencepiece | bpe
    segments: bool  # the backbone takes segment_ids
    hf_converter: bool = True  # keras-hub 0.32 converts Hugging Face checkpoints of this family

    @property
    def double_separator(self) -> bool:
        """Pairs packed <s> A </s></s> B </s> (RoBERTa, XLM-R): the preprocessing layer's table."""
        return DOUBLE_SEPARATOR[self.tokenizer]

    @property
    def backbone_class(self) -> type:
        return getattr(keras_hub.models, self.backbone)

    @property
    def tokenizer_class(self) -> type:
        return getattr(keras_hub.models, self.tokenizer)


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family("bert", "BertBackbone", "BertTokenizer", "wordpiece", segments=True),
        Family("roberta", "RobertaBackbone", "RobertaTokenizer", "bpe", segments=False),
        Family(
            "deberta_v3", "DebertaV3Backbone", "DebertaV3Tokenizer", "sentencepiece", segments=False, hf_converter=False
        ),
        Family("electra", "ElectraBackbone", "ElectraTokenizer", "wordpiece", segments=True, hf_converter=False),
        Family("albert", "AlbertBackbone", "AlbertTokenizer", "sentencepiece", segments=True),
        Family("distil_bert", "DistilBertBackbone", "DistilBertTokenizer", "wordpiece", segments=False),
        Family("xlm_roberta", "XLMRobertaBackbone", "XLMRobertaTokenizer", "sentencepiece", segments=False),
    )
}


def family_of(backbone: keras.layers.Layer) -> Family:
    """The family of a keras-hub backbone (subclasses count: `BertEncoderBackbone` is bert)."""
    for family in sorted(FAMILIES.values(), key=lambda f: -len(f.backbone_class.__mro__)):  # most derived first
        if isinstance(backbone, family.backbone_class):
            return family
    known = ", ".join(f.backbone for f in FAMILIES.values())
    raise ValueError(f"{type(backbone).__name__} is not a supported text backbone ({known})")


def tokenizer_family(tokenizer: Any) -> Family:
    """The family of a keras-hub tokenizer."""
    for family in sorted(FAMILIES.values(), key=lambda f: -len(f.tokenizer_class.__mro__)):
        if isinstance(tokenizer, family.tokenizer_class):
            return family
    raise ValueError(f"{type(tokenizer).__name__} is not the tokenizer of a supported encoder family")


def encode(backbone: keras.layers.Layer, inputs: dict) -> dict:
    """`{"sequence_output", "pooled_output"}` of any family: the inputs it takes (segment ids
    only where it has segment embeddings); the pooled vector is the backbone's pooler where it has
    one (BERT, ELECTRA, ALBERT), else the first token's vector, as the reference MT-DNN does."""
    names = [name for name in ("token_ids", "segment_ids", "padding_mask") if name in backbone.input]
    outputs = backbone({name: inputs[name] for name in names})
    if isinstance(outputs, dict) and "pooled_output" in outputs:
        return {"sequence_output": outputs["sequence_output"], "pooled_output": outputs["pooled_output"]}
    sequence = outputs["sequence_output"] if isinstance(outputs, dict) else outputs
    return {"sequence_output": sequence, "pooled_output": sequence[:, 0, :]}


def random_backbone(
    family: Family, size: dict[str, int], vocabulary_size: int, dropout: float | None = None
) -> keras.layers.Layer:
    """A randomly initialised backbone of `family` with `size` (num_layers, hidden_dim, num_heads,
    intermediate_dim, max_sequence_length)."""
    arguments: dict[str, Any] = {**size, "vocabulary_size": vocabulary_size}
    if dropout is not None:
        arguments["dropout"] = dropout
    if family.name == "electra":
        arguments["vocab_size"] = arguments.pop("vocabulary_size")
        arguments["embedding_dim"] = size["hidden_dim"]
    if family.name == "albert":
        arguments.update(embedding_dim=size["hidden_dim"], num_groups=1, num_inner_repetitions=1)
    if family.name == "deberta_v3":
        arguments["bucket_size"] = min(256, size["max_sequence_length"] // 2)
    return family.backbone_class(**arguments)


WORDPIECE_RESERVED = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
BPE_SPECIAL = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
# SentencePiece trainer settings that give each family's tokenizer the special ids it expects.
_SENTENCEPIECE = {
    "albert": dict(
        pad_id=0, pad_piece="<pad>", unk_id=1, bos_id=-1, eos_id=-1, user_defined_symbols=["[CLS]", "[SEP]", "[MASK]"]
    ),
    "deberta_v3": dict(
        pad_id=0,
        pad_piece="[PAD]",
        bos_id=1,
        bos_piece="[CLS]",
        eos_id=2,
        eos_piece="[SEP]",
        unk_id=3,
        unk_piece="[UNK]",
    ),
    "xlm_roberta": dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1),  # fairseq order; the tokenizer shifts ids
}


def learn_wordpiece_vocabulary(texts: Iterable[str], size: int = 2000) -> list[str]:
    """A lower-cased WordPiece vocabulary learned from text with keras-hub's trainer."""
    import tensorflow as tf

    data = tf.data.Dataset.from_tensor_slices(list(texts)).batch(1000)
    return keras_hub.tokenizers.compute_word_piece_vocabulary(
        data, vocabulary_size=size, lowercase=True, reserved_tokens=WORDPIECE_RESERVED
    )


def learn_tokenizer(family: Family, texts: Iterable[str], size: int = 2000) -> tuple[Any, bool]:
    """A tokenizer of `family` learned from `texts` with about `size` entries, and whether it
    lower-cases: WordPiece (keras-hub's trainer), SentencePiece (unigram, case-folding) or
    byte-level BPE (the `tokenizers` library keras-hub installs; cased, as RoBERTa's is)."""
    texts = [text for text in texts if text]
    if family.vocabulary == "wordpiece":
        return family.tokenizer_class(vocabulary=learn_wordpiece_vocabulary(texts, size), lowercase=True), True
    if family.vocabulary == "sentencepiece":
        import sentencepiece

        proto = io.BytesIO()
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_writer=proto,
            vocab_size=size,
            hard_vocab_limit=False,
            model_type="unigram",
            normalization_rule_name="nmt_nfkc_cf",
            minloglevel=2,
            **_SENTENCEPIECE[family.name],
        )
        return family.tokenizer_class(proto=proto.getvalue()), True
    from tokenizers import ByteLevelBPETokenizer

    trainer = ByteLevelBPETokenizer()
    # the 256 byte symbols come first; keras-hub's BPE tokenizer needs at least one merge after them
    trainer.train_from_iterator(
        texts, vocab_size=max(size, 256 + len(BPE_SPECIAL) + 64), special_tokens=BPE_SPECIAL, show_progress=False
    )
    with tempfile.TemporaryDirectory() as directory:
        vocabulary, merges = trainer.save_model(directory)
        with open(merges, encoding="utf-8") as handle:
            merge_lines = [line.rstrip("\n") for line in handle if line.strip() and not line.startswith("#version")]
        import json

        with open(vocabulary, encoding="utf-8") as handle:
            tokens = json.load(handle)
    return family.tokenizer_class(vocabulary=tokens, merges=merge_lines), False


TOKENIZER_DIR = "tokenizer"  # inside a model directory, for tokenizers other than BERT's vocab.txt


def save_tokenizer(tokenizer: Any, directory: str) -> list[str]:
    """Writes `tokenizer` (config + vocabulary assets) under `directory/tokenizer`; returns the
    written files, relative to `directory`."""
    target = os.path.join(directory, TOKENIZER_DIR)
    tokenizer.save_to_preset(target)
    return sorted(
        os.path.relpath(os.path.join(root, name), directory) for root, _, names in os.walk(target) for name in names
    )


def load_saved_tokenizer(directory: str) -> Any:
    """The tokenizer `save_tokenizer` wrote (keras-hub's `from_preset` wants a backbone config
    beside it, so the config is deserialised and the assets loaded directly)."""
    import json

    target = os.path.join(directory, TOKENIZER_DIR)
    with open(os.path.join(target, "tokenizer.json"), encoding="utf-8") as handle:
        tokenizer = keras.saving.deserialize_keras_object(json.load(handle))
    tokenizer.load_preset_assets(target)
    return tokenizer
