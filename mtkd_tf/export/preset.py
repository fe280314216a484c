"""The trained model's shared encoder as a keras-hub preset: the distilled student, out to keras-hub.

`export_preset(model_dir, target)` writes the encoder of the MT-DNN in `model_dir` (any of the
seven families, layer-subset students included) with keras-hub's own savers: `config.json` +
`model.weights.h5` + `metadata.json` (`backbone.save_to_preset`), `tokenizer.json` + its
vocabulary (`tokenizer.save_to_preset`) and, where the family has one, `preprocessor.json`: the
family's `TextClassifierPreprocessor` at the model's `max_seq_length`, which packs one or two
segments exactly as training did. Task heads stay behind (`export_transformers` takes one).

>>> import keras_hub
>>> mt.export_preset("runs/quickstart/student", "exports/student_preset")
>>> backbone = keras_hub.models.Backbone.from_preset("exports/student_preset")
>>> tokenizer = keras_hub.tokenizers.Tokenizer.from_preset("exports/student_preset")
>>> classifier = keras_hub.models.TextClassifier.from_preset("exports/student_preset", num_classes=3)

A BERT encoder converted from a Hugging Face checkpoint with exact (erf) GELU (MiniLM, and the
students made from it) is saved as mtkd_tf's `BertEncoderBackbone`, since keras-hub's
`BertBackbone` fixes GELU's tanh approximation (3e-3 apart): `import mtkd_tf` before
`from_preset` registers it, and the tokenizer, preprocessor and classifier classes below that
keras-hub's `from_preset` looks up by backbone class. Every other encoder loads with keras-hub alone.
"""

from __future__ import annotations

import logging

import keras
import keras_hub

from mtkd_tf.export.saved_model import ExportError
from mtkd_tf.models import model_dir as model_dir_lib
from mtkd_tf.models.encoder import BertEncoderBackbone
from mtkd_tf.models.families import family_of
from mtkd_tf.runtime.files import is_empty_target, new_directory

logger = logging.getLogger(__name__)


@keras.saving.register_keras_serializable(package="mtkd_tf")
class BertEncoderTokenizer(keras_hub.models.BertTokenizer):
    """keras-hub's `BertTokenizer`, declared the tokenizer of `BertEncoderBackbone` presets."""

    backbone_cls = BertEncoderBackbone


@keras.saving.register_keras_serializable(package="mtkd_tf")
class BertEncoderTextClassifierPreprocessor(keras_hub.models.BertTextClassifierPreprocessor):
    """keras-hub's `BertTextClassifierPreprocessor`, declared the one of `BertEncoderBackbone` presets."""

    backbone_cls = BertEncoderBackbone
    tokenizer_cls = BertEncoderTokenizer


@keras.saving.register_keras_serializable(package="mtkd_tf")
class BertEncoderTextClassifier(keras_hub.models.BertTextClassifier):
    """keras-hub's `BertTextClassifier` on a `BertEncoderBackbone` (`TextClassifier.from_preset`)."""

    backbone_cls = BertEncoderBackbone
    preprocessor_cls = BertEncoderTextClassifierPreprocessor


def preprocessor_class(backbone: keras_hub.models.Backbone) -> type | None:
    """keras-hub's `TextClassifierPreprocessor` for `backbone` (`BertBackbone` ->
    `BertTextClassifierPreprocessor`); None where keras-hub has none (ELECTRA)."""
    if isinstance(backbone, BertEncoderBackbone):
        return BertEncoderTextClassifierPreprocessor  # keras-hub's loader checks the class against the backbone's
    name = family_of(backbone).tokenizer.replace("Tokenizer", "TextClassifierPreprocessor")
    return getattr(keras_hub.models, name, None)


def keras_hub_backbone(backbone: keras_hub.models.Backbone) -> keras_hub.models.Backbone:
    """The backbone as keras-hub's own class wherever that class computes the same function (a
    `BertEncoderBackbone` with tanh-approximated GELU is a plain `BertBackbone`)."""
    if isinstance(backbone, BertEncoderBackbone) and backbone.hidden_activation == "gelu_approximate":
        config = {key: value for key, value in backbone.get_config().items() if key != "hidden_activation"}
        plain = keras_hub.models.BertBackbone.from_config(config)
        plain.set_weights(backbone.get_weights())
        return plain
    return backbone


def export_preset(model_dir: str, target: str) -> str:
    """Writes the shared encoder, tokenizer and packing of the model in `model_dir` as a keras-hub
    preset directory `target` (new, or empty); returns `target`."""
    if not is_empty_target(target):
        raise ExportError(
            f"export_dir {target}: exists and is not empty; a preset is written into a new directory", "export_dir"
        )
    trained = model_dir_lib.load(model_dir)
    backbone, tokenizer = keras_hub_backbone(trained.encoder), trained.preprocessor.tokenizer
    family = family_of(backbone)
    if isinstance(backbone, BertEncoderBackbone) and backbone.hidden_activation != "gelu_approximate":
        logger.warning(
            "%s: the encoder uses exact GELU, which keras-hub's BertBackbone cannot express; the preset "
            "needs `import mtkd_tf` before keras_hub's from_preset",
            model_dir,
        )
    preprocessor = preprocessor_class(backbone)
    with new_directory(target) as staging:
        backbone.save_to_preset(staging)
        tokenizer.save_to_preset(staging)
        if preprocessor is not None:
            preprocessor(tokenizer=tokenizer, sequence_length=trained.preprocessor.sequence_length).save_to_preset(
                staging
            )
    logger.info("keras-hub preset of %s's %s encoder -> %s", model_dir, family.name, target)
    return target
