"""The shared encoder: a keras-hub text backbone of any supported family and its tokenizer.

`--encoder` is one of:
- a size spec for a randomly initialised encoder, `random:family=roberta,layers=2,hidden=64,heads=2,
  intermediate=256` (family default bert; families in `mtkd_tf.models.families`), or an alias:
  `tiny` (BERT), `tiny_<family>` (`tiny_roberta`, `tiny_deberta_v3`, `tiny_electra`, `tiny_albert`,
  `tiny_distil_bert`, `tiny_xlm_roberta`); its vocabulary comes from `vocab_file` (WordPiece
  families) or is learned from the training text in the family's own kind (WordPiece,
  SentencePiece or byte-level BPE);
- a local directory: a keras-hub preset of any family, or a Hugging Face checkpoint that keras-hub
  converts (BERT, RoBERTa, ALBERT, DistilBERT, XLM-RoBERTa; docs/encoders.md);
- an alias of a verified offline asset (`minilm_l6`, see `mtkd_tf.runtime.assets`);
- a keras-hub preset name such as `bert_large_en_uncased` or `roberta_base_en` (downloaded by keras-hub).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Iterable

import keras
import keras_hub

from mtkd_tf.data.preprocessing import load_tokenizer
from mtkd_tf.models.families import FAMILIES, Family, family_of, learn_tokenizer, random_backbone


class EncoderError(ValueError):
    """The --encoder value cannot be resolved or loaded."""


ALIASES = {
    "tiny": "random:layers=2,hidden=64,heads=2,intermediate=256",
    "small": "random:layers=4,hidden=256,heads=4,intermediate=1024",
    **{f"tiny_{name}": f"random:family={name},layers=2,hidden=64,heads=2,intermediate=256" for name in FAMILIES},
}

_SPEC_KEYS = {
    "layers": "num_layers",
    "hidden": "hidden_dim",
    "heads": "num_heads",
    "intermediate": "intermediate_dim",
    "max_len": "max_sequence_length",
}


@keras.saving.register_keras_serializable(package="mtkd_tf")
class BertEncoderBackbone(keras_hub.models.BertBackbone):
    """keras-hub's `BertBackbone` with the feed-forward activation as config.

    keras-hub hard-codes tanh-approximated GELU. Checkpoints trained with exact (erf) GELU
    (Hugging Face `hidden_act: gelu`, e.g. MiniLM) need `hidden_activation="gelu"` to
    reproduce their hidden states (about 3e-3 apart otherwise).
    """

    def __init__(self, *args, hidden_activation: str = "gelu_approximate", **kwargs):
        super().__init__(*args, **kwargs)
        self.hidden_activation = hidden_activation
        if hidden_activation != "gelu_approximate":
            activation = keras.activations.get(hidden_activation)  # "gelu": exact, approximate=False
            for layer in self.transformer_layers:
                layer.activation = activation
                layer._feedforward_intermediate_dense.activation = activation

    def get_config(self):
        return {**super().get_config(), "hidden_activation": self.hidden_activation}


_HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_approximate", "gelu_pytorch_tanh": "gelu_approximate"}


def checkpoint_activation(directory: str) -> str:
    """The feed-forward activation a Hugging Face checkpoint was trained with."""
    config = os.path.join(directory, "config.json")
    if not os.path.isfile(config):
        return "gelu_approximate"  # keras-hub presets: keep keras-hub's definition
    with open(config, encoding="utf-8") as handle:
        hidden_act = json.load(handle).get("hidden_act", "gelu")
    if hidden_act not in _HF_ACTIVATIONS:
        raise EncoderError(f"{config}: hidden_act {hidden_act!r} is not supported ({', '.join(_HF_ACTIVATIONS)})")
    return _HF_ACTIVATIONS[hidden_act]


def with_activation(backbone: keras_hub.models.BertBackbone, activation: str) -> keras_hub.models.BertBackbone:
    """The same backbone (config and weights) with feed-forward `activation`."""
    if activation == "gelu_approximate" and not isinstance(backbone, BertEncoderBackbone):
        return backbone
    exact = BertEncoderBackbone.from_config({**backbone.get_config(), "hidden_activation": activation})
    exact.set_weights(backbone.get_weights())
    return exact


@dataclasses.dataclass
class Encoder:
    """A loaded encoder: the backbone, its tokenizer, its vocabulary and whether text is lower-cased."""

    backbone: keras.layers.Layer
    vocabulary: list[str]
    lowercase: bool
    spec: str
    tokenizer: object = None  # a keras-hub tokenizer; None: BERT WordPiece over `vocabulary`

    def __post_init__(self):
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.vocabulary, self.lowercase)


def parse_family(spec: str) -> Family:
    """The family a `random:...` spec names (`family=`; default bert)."""
    body = spec.split(":", 1)[1] if ":" in spec else ""
    names = [item.partition("=")[2] for item in body.split(",") if item.startswith("family=")]
    name = names[-1] if names else "bert"
    if name not in FAMILIES:
        raise EncoderError(f"encoder spec {spec!r}: unknown family {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def parse_size_spec(spec: str) -> dict[str, int]:
    """`random:layers=2,hidden=64,...` -> backbone keyword arguments (`family=` is read by `parse_family`)."""
    body = spec.split(":", 1)[1] if ":" in spec else ""
    config = {"num_layers": 2, "hidden_dim": 64, "num_heads": 2, "intermediate_dim": 256, "max_sequence_length": 512}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        if key == "family":
            continue
        if key not in _SPEC_KEYS or not value.isdigit() or int(value) <= 0:
            raise EncoderError(
                f"encoder spec {spec!r}: bad item {item!r}; expected family=<{'|'.join(FAMILIES)}> or positive "
                f"integers for {', '.join(_SPEC_KEYS)}"
            )
        config[_SPEC_KEYS[key]] = int(value)
    if config["hidden_dim"] % config["num_heads"]:
        raise EncoderError(f"encoder spec {spec!r}: hidden must be divisible by heads")
    return config


def read_vocabulary(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise EncoderError(f"vocabulary file {path}: no such file")
    with open(path, encoding="utf-8") as handle:
        return [line.rstrip("\n") for line in handle if line.rstrip("\n")]


def _directory_lowercase(path: str) -> bool:
    config = os.path.join(path, "tokenizer_config.json")
    if os.path.isfile(config):
        with open(config, encoding="utf-8") as handle:
            return bool(json.load(handle).get("do_lower_case", True))
    return "uncased" in os.path.basename(os.path.normpath(path)).lower()


def resolve_spec(spec: str) -> str:
    """Aliases -> what they stand for (offline assets are fetched and verified here)."""
    spec = ALIASES.get(spec, spec)
    from mtkd_tf.runtime import assets

    if spec in assets.ENCODERS:
        return assets.fetch_encoder(spec)
    return spec


def split_layers(spec: str) -> tuple[str, list[int] | None]:
    """`minilm_l6:layers=0,2,4` -> ("minilm_l6", [0, 2, 4]): a student keeping those layers of a
    pretrained encoder (size specs `random:layers=N` are not subsets)."""
    base, found, rest = spec.rpartition(":layers=")
    if not found or spec.startswith("random"):
        return spec, None
    try:
        layers = [int(item) for item in rest.split(",")]
    except ValueError:
        raise EncoderError(f"encoder {spec!r}: layers=... must list layer numbers, e.g. {base}:layers=0,2,4") from None
    if not layers or len(set(layers)) != len(layers) or min(layers) < 0:
        raise EncoderError(f"encoder {spec!r}: layers must be distinct non-negative layer numbers")
    return base, layers


def check_spec(spec: str) -> str:
    """Resolves `spec` and checks that it names an encoder, without building it (runs
    before any training, so a typo in a later stage's encoder fails early)."""
    original = spec
    spec, _ = split_layers(spec)
    spec = resolve_spec(spec)
    if spec.startswith("random"):
        parse_family(spec)
        parse_size_spec(spec)
    elif os.path.isdir(spec):
        has_hf = os.path.isfile(os.path.join(spec, "config.json"))
        has_preset = os.path.isfile(os.path.join(spec, "metadata.json"))
        if not (has_hf or has_preset):
            raise EncoderError(
                f"encoder directory {spec}: neither a keras-hub preset (metadata.json) nor a "
                "Hugging Face checkpoint (config.json + model.safetensors + tokenizer files)"
            )
        directory_family(spec)
    elif preset_family(spec) is None:
        raise EncoderError(
            f"unknown encoder {original!r}: not a directory, an alias ({', '.join(sorted(ALIASES))}, "
            f"minilm_l6), a size spec (random:family=..,layers=..) or a keras-hub preset of a supported family "
            f"({', '.join(FAMILIES)}; e.g. {', '.join(sorted(keras_hub.models.BertBackbone.presets)[:3])}, "
            f"{', '.join(sorted(keras_hub.models.RobertaBackbone.presets)[:2])})"
        )
    return spec


def preset_family(name: str) -> Family | None:
    """The family whose keras-hub presets include `name`, if any."""
    for family in FAMILIES.values():
        if name in family.backbone_class.presets:
            return family
    return None


# Hugging Face `model_type` -> family (what keras-hub's converters accept, and the two they lack).
_HF_MODEL_TYPES = {
    "bert": "bert",
    "roberta": "roberta",
    "albert": "albert",
    "distilbert": "distil_bert",
    "xlm-roberta": "xlm_roberta",
    "deberta-v2": "deberta_v3",
    "electra": "electra",
}


def directory_family(directory: str) -> Family:
    """The family of a keras-hub preset or Hugging Face checkpoint directory; a clear error for
    families keras-hub cannot convert from Hugging Face."""
    with open(os.path.join(directory, "config.json"), encoding="utf-8") as handle:
        config = json.load(handle)
    if "model_type" in config:  # Hugging Face
        family = FAMILIES.get(_HF_MODEL_TYPES.get(config["model_type"], ""))
        if family is None:
            raise EncoderError(
                f"encoder directory {directory}: Hugging Face model_type {config['model_type']!r} is not "
                f"a supported text encoder ({', '.join(sorted(_HF_MODEL_TYPES))})"
            )
        if not family.hf_converter:
            raise EncoderError(
                f"encoder directory {directory}: keras-hub 0.32 cannot convert Hugging Face "
                f"{config['model_type']} checkpoints; use a keras-hub preset of {family.name} instead "
                "(docs/encoders.md)"
            )
        return family
    name = config.get("class_name", "")
    for family in FAMILIES.values():
        if name == family.backbone or name == "BertEncoderBackbone" and family.name == "bert":
            return family
    raise EncoderError(
        f"encoder directory {directory}: backbone {name!r} is not a supported text encoder "
        f"({', '.join(f.backbone for f in FAMILIES.values())})"
    )


def _seed(seed: int | None) -> None:
    """Seeds Python's `random` (Keras's default seeds), NumPy and TensorFlow, unless `seed` is None."""
    if seed is not None:
        keras.utils.set_random_seed(seed)


def load_encoder(
    spec: str,
    dropout: float | None = None,
    vocab_file: str | None = None,
    training_texts: Iterable[str] | None = None,
    vocabulary_size: int = 2000,
    seed: int | None = None,
) -> Encoder:
    """Builds or loads the shared encoder named by `spec` (see the module docstring).

    `dropout` overrides the shared layers' dropout (the teachers differ by it). `seed`
    seeds Python, NumPy and TensorFlow right before the backbone is built, for every kind
    of `spec`: each Dropout layer's `SeedGenerator` draws its initial state from Python's
    `random` when it is created (also when pretrained weights are loaded afterwards, as
    its state is not a checkpoint weight), so the same seed gives the same weights and
    the same dropout masks (see docs/reliability.md, "Determinism").
    """
    original = spec
    base, layers = split_layers(spec)
    if layers is not None:
        encoder = load_encoder(base, dropout, vocab_file, training_texts, vocabulary_size, seed)
        return dataclasses.replace(encoder, backbone=keep_layers(encoder.backbone, layers, original), spec=original)
    spec = check_spec(spec)
    if spec.startswith("random"):
        return _random_encoder(
            parse_family(spec),
            parse_size_spec(spec),
            original,
            dropout,
            vocab_file,
            training_texts,
            vocabulary_size,
            seed,
        )
    overrides = {} if dropout is None else {"dropout": dropout}
    family = directory_family(spec) if os.path.isdir(spec) else preset_family(spec)
    _seed(seed)  # presets and Hugging Face directories too: their SeedGenerators are built unseeded otherwise
    try:
        backbone = family.backbone_class.from_preset(spec, **overrides)
        tokenizer = family.tokenizer_class.from_preset(spec)
    except Exception as error:
        raise EncoderError(f"cannot load encoder {original!r} from {spec}: {error}") from None
    if family.name != "bert":
        return Encoder(
            backbone,
            list(tokenizer.get_vocabulary()),
            lowercase=bool(getattr(tokenizer, "lowercase", False)),
            spec=original,
            tokenizer=tokenizer,
        )
    hugging_face = os.path.isfile(os.path.join(spec, "config.json")) and not os.path.isfile(
        os.path.join(spec, "metadata.json")
    )
    lowercase = _directory_lowercase(spec) if hugging_face else bool(tokenizer.lowercase)
    if hugging_face:
        backbone = with_activation(backbone, checkpoint_activation(spec))
    return Encoder(backbone, list(tokenizer.get_vocabulary()), lowercase=lowercase, spec=original)


def _random_encoder(
    family: Family,
    config: dict[str, int],
    spec: str,
    dropout: float | None,
    vocab_file: str | None,
    training_texts: Iterable[str] | None,
    vocabulary_size: int,
    seed: int | None,
) -> Encoder:
    """A randomly initialised encoder of any family, with a tokenizer of its kind: read from
    `vocab_file` (WordPiece families) or learned from `training_texts`."""
    if vocab_file:
        if family.vocabulary != "wordpiece":
            raise EncoderError(
                f"encoder {spec!r}: vocab_file is a WordPiece vocabulary; {family.name} uses "
                f"{family.vocabulary} (leave vocab_file empty to learn one from the training text)"
            )
        vocabulary = read_vocabulary(vocab_file)
        tokenizer, lowercase = family.tokenizer_class(vocabulary=vocabulary, lowercase=True), True
    elif training_texts is not None:
        tokenizer, lowercase = learn_tokenizer(family, training_texts, vocabulary_size)
    else:
        sources = "--vocab_file or training text" if family.vocabulary == "wordpiece" else "training text"
        raise EncoderError(
            f"encoder {spec!r} is random: give {sources} to make its {family.vocabulary} vocabulary from"
        )
    _seed(seed)
    backbone = random_backbone(family, config, tokenizer.vocabulary_size(), dropout)
    return Encoder(backbone, list(tokenizer.get_vocabulary()), lowercase=lowercase, spec=spec, tokenizer=tokenizer)


def keep_layers(backbone: keras.layers.Layer, layers: list[int], spec: str = "") -> keras.layers.Layer:
    """A backbone of the same family and width with only `layers` of `backbone`'s transformer
    layers (in that order), every weight copied: DistilBERT's initialisation of a smaller student
    from its teacher."""
    family = family_of(backbone)
    if family.name == "albert":
        raise EncoderError(
            f"encoder {spec!r}: ALBERT shares its layers across depth, so there are no layers to pick; "
            "use a random ALBERT with fewer layers"
        )
    outside = [index for index in layers if index >= backbone.num_layers]
    if outside:
        raise EncoderError(
            f"encoder {spec!r}: layer(s) {', '.join(map(str, outside))} out of range; the encoder has "
            f"{backbone.num_layers} (0-{backbone.num_layers - 1})"
        )
    smaller = type(backbone).from_config({**backbone.get_config(), "num_layers": len(layers)})
    prefix = "disentangled_attention_encoder_layer_" if family.name == "deberta_v3" else "transformer_layer_"
    source = {layer.name: layer for layer in backbone.layers}
    for layer in smaller.layers:
        name = layer.name
        if name.startswith(prefix):
            name = f"{prefix}{layers[int(name[len(prefix) :])]}"
        if layer.weights:
            layer.set_weights(source[name].get_weights())
    return smaller
