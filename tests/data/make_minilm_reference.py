"""Records tests/data/minilm_reference.npz: MiniLM-L6 hidden states from a plain NumPy BERT.

The reference is independent of keras-hub: it reads the checkpoint's safetensors and runs
the Hugging Face BERT equations with exact (erf) GELU, as the checkpoint was trained.
Run once (needs the cached asset): `python tests/data/make_minilm_reference.py`.
"""

import os
import sys

import numpy as np
from safetensors.numpy import load_file
from scipy.special import erf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

SINGLE = ["A three-hour cinema master class.", "How did serfdom develop in and then leave Russia ?"]
PAIR = (["The film is a charming delight."], ["Nobody liked the movie at all."])


def layer_norm(x, weight, bias, eps=1e-12):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def dense(x, w, prefix):
    return x @ w[f"{prefix}.weight"].T + w[f"{prefix}.bias"]


def bert(w, token_ids, segment_ids, mask, layers=6, heads=12):
    x = w["embeddings.word_embeddings.weight"][token_ids]
    x = x + w["embeddings.position_embeddings.weight"][np.arange(token_ids.shape[1])][None]
    x = x + w["embeddings.token_type_embeddings.weight"][segment_ids]
    x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
    batch, length, hidden = x.shape
    size = hidden // heads
    bias = (1.0 - mask[:, None, None, :]) * -1e9
    for i in range(layers):
        p = f"encoder.layer.{i}"

        def split(t):
            return t.reshape(batch, length, heads, size).transpose(0, 2, 1, 3)

        q, k, v = (split(dense(x, w, f"{p}.attention.self.{n}")) for n in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(size) + bias
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        context = (scores / scores.sum(-1, keepdims=True)) @ v
        context = context.transpose(0, 2, 1, 3).reshape(batch, length, hidden)
        x = layer_norm(
            x + dense(context, w, f"{p}.attention.output.dense"),
            w[f"{p}.attention.output.LayerNorm.weight"],
            w[f"{p}.attention.output.LayerNorm.bias"],
        )
        h = dense(x, w, f"{p}.intermediate.dense")
        h = 0.5 * h * (1.0 + erf(h / np.sqrt(2.0)))  # exact GELU
        x = layer_norm(
            x + dense(h, w, f"{p}.output.dense"), w[f"{p}.output.LayerNorm.weight"], w[f"{p}.output.LayerNorm.bias"]
        )
    return x


def main():
    import tensorflow as tf

    from mtkd_tf.data.preprocessing import Preprocessor, load_tokenizer
    from mtkd_tf.models.encoder import read_vocabulary
    from mtkd_tf.runtime import assets

    directory = assets.fetch_encoder("minilm_l6")
    weights = {k: v.astype(np.float64) for k, v in load_file(os.path.join(directory, "model.safetensors")).items()}
    preprocessor = Preprocessor(
        load_tokenizer(read_vocabulary(os.path.join(directory, "vocab.txt"))), 32, pad_to_multiple_of=0
    )
    arrays = {}
    for name, texts in (("single", (SINGLE,)), ("pair", PAIR)):
        features = {k: v.numpy() for k, v in preprocessor(*(tf.constant(t) for t in texts)).items()}
        longest = int(features["padding_mask"].sum(-1).max())
        features = {k: v[:, :longest] for k, v in features.items()}
        hidden = bert(
            weights, features["token_ids"], features["segment_ids"], features["padding_mask"].astype(np.float64)
        )
        arrays.update({f"{name}_{k}": v for k, v in features.items()})
        arrays[f"{name}_hidden"] = hidden.astype(np.float32)
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "minilm_reference.npz")
    np.savez_compressed(out, **arrays)
    print(out, {k: v.shape for k, v in arrays.items()})


if __name__ == "__main__":
    main()
