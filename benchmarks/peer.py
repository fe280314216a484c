"""Our MT-DNN training vs Hugging Face transformers + PyTorch, fine-tuning the same pretrained
MiniLM on the same real rt_polarity training sentences, with the same batch size and sequence
limit, timed interleaved (rounds of steps, ours then the peer's) in one process
(`benchmarks/run --figures=peer`; target: ours / peer examples/s >= 1.0; measured figures in
docs/performance.md).

Each side gets its best CPU settings. Ours: dynamic padding, length bucketing, the fused Adamax
(`adamax_fused`, as the quickstart), the training precision `auto` picks (mixed_bfloat16 where
bfloat16 is native and faster, else float32). The peer: `DataCollatorWithPadding`,
`group_by_length` (transformers' `LengthGroupedSampler`), AdamW with global-norm clipping 1.0,
`torch.set_num_threads(<cores>)`, and bfloat16 autocast where bfloat16 is native (the peer's
equivalent of our `auto`), eager and also under `torch.compile` (inductor, `dynamic=True`: one
graph for every padded length). Every side reports examples/s of steady-state steps (after
warm-up steps that trace / compile / allocate).
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np


def peer_available() -> str | None:
    """None when torch and transformers import, else why not."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as error:
        return f"{error.name} is not installed (pip install -r benchmarks/requirements-peer.txt)"
    return None


def rt_polarity_sentences(count: int) -> tuple[list[str], np.ndarray]:
    from mtkd_tf.data import readers, suites
    from mtkd_tf.data.moviesuite import TASKS

    data = readers.load_split(TASKS["rt_polarity"], "train", data_dir=suites.suite_dir("moviesuite"))
    return data.text_a[:count], np.asarray(data.labels[:count])


class Ours:
    """Our MT-DNN (MiniLM, one rt_polarity head) trained with `model.fit` on `training_data`."""

    def __init__(self, texts, labels, batch: int, seq: int, precision: str):
        import keras

        from mtkd_tf.data.moviesuite import TASKS
        from mtkd_tf.data.split import SplitData
        from mtkd_tf.models.encoder import load_encoder
        from mtkd_tf.models.mtdnn import MTDNN
        from mtkd_tf.training import distribute
        from mtkd_tf.training import train as training

        self.policy = distribute.set_precision(precision)
        task = TASKS["rt_polarity"]
        data = SplitData(task, "train", [f"rt/{i}" for i in range(len(texts))], list(texts), None, labels)
        encoder = load_encoder("minilm_l6", seed=0)
        config = training.TrainingConfig(
            batch_size=batch, epochs=1000, learning_rate=5e-5, verbose=0, optimizer="adamax_fused"
        )
        preprocessor = training.encoder_preprocessor(encoder, seq)
        self.model = MTDNN(encoder.backbone, [task], preprocessor=preprocessor)
        stream = training.training_data([data], preprocessor, config)
        self.model.compile(optimizer=training.make_optimizer(config, 100_000))
        self.iterator = iter(stream.starting_at(0))
        self.model.make_train_function()
        self.step_fn = self.model.train_function
        self.batch = batch
        keras.mixed_precision.set_global_policy("float32")

    def steps(self, count: int) -> float:
        """Seconds for `count` steps (the loss is fetched, so they have finished)."""
        started = time.perf_counter()
        for _ in range(count):
            logs = self.step_fn(self.iterator)
        float(np.asarray(logs["loss"]))
        return time.perf_counter() - started


class Peer:
    """transformers' BertForSequenceClassification on the same checkpoint and sentences."""

    def __init__(self, texts, labels, batch: int, seq: int, bfloat16: bool, seed: int = 0, compiled: bool = False):
        os.environ.setdefault("USE_TF", "0")
        import torch
        from transformers import BertForSequenceClassification, BertTokenizerFast, DataCollatorWithPadding
        from transformers.trainer_pt_utils import LengthGroupedSampler

        from mtkd_tf.runtime import assets

        torch.manual_seed(seed)
        torch.set_num_threads(os.cpu_count() or 1)
        path = assets.fetch_encoder("minilm_l6")
        self.tokenizer = BertTokenizerFast.from_pretrained(path)
        self.model = BertForSequenceClassification.from_pretrained(path, num_labels=2)
        self.model.train()
        self.forward = torch.compile(self.model, dynamic=True) if compiled else self.model
        encoded = self.tokenizer(list(texts), truncation=True, max_length=seq)
        self.features = [
            {"input_ids": ids, "token_type_ids": types, "attention_mask": mask, "labels": int(label)}
            for ids, types, mask, label in zip(
                encoded["input_ids"], encoded["token_type_ids"], encoded["attention_mask"], labels, strict=True
            )
        ]
        lengths = [len(f["input_ids"]) for f in self.features]
        generator = torch.Generator().manual_seed(seed)
        self.sampler = LengthGroupedSampler(batch, lengths=lengths, generator=generator)
        self.collate = DataCollatorWithPadding(self.tokenizer, padding="longest")
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=5e-5)
        self.bfloat16 = bfloat16
        self.batch = batch
        self.torch = torch
        self.order = iter(())

    def _next_batch(self):
        indices = []
        while len(indices) < self.batch:
            try:
                indices.append(next(self.order))
            except StopIteration:
                self.order = iter(list(self.sampler))
        return self.collate([self.features[i] for i in indices])

    def steps(self, count: int) -> float:
        torch = self.torch
        started = time.perf_counter()
        for _ in range(count):
            batch = self._next_batch()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bfloat16):
                loss = self.forward(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
            self.optimizer.zero_grad()
        float(loss.detach())
        return time.perf_counter() - started


def peer_ratio(
    batch: int = 32, seq: int = 128, steps: int = 8, rounds: int = 3, warmup: int = 4, examples: int = 2048
) -> dict[str, float]:
    """Our examples/s and the peer's on the same sentences, interleaved; the ratio is ours / peer's."""
    why = peer_available()
    if why:
        return {"peer_missing": why}
    from mtkd_tf.training import distribute

    texts, labels = rt_polarity_sentences(examples)
    ours = Ours(texts, labels, batch, seq, "auto")
    bfloat16 = ours.policy == "mixed_bfloat16"
    sides = {"ours": ours, "peer": Peer(texts, labels, batch, seq, bfloat16=bfloat16)}
    found = {}
    try:
        compiled = Peer(texts, labels, batch, seq, bfloat16=bfloat16, compiled=True)
        compiled.steps(warmup)
        sides["peer_compiled"] = compiled
    except Exception as error:  # inductor needs a C++ compiler; say why the figure is missing
        found["peer_compiled_missing"] = f"torch.compile failed: {type(error).__name__}: {str(error)[:200]}"
    for side in sides.values():
        side.steps(warmup)
    times = {name: [] for name in sides}
    for _ in range(rounds):
        for name, side in sides.items():
            times[name].append(side.steps(steps) / steps)
    rates = {name: batch / statistics.median(values) for name, values in times.items()}
    found |= {
        "ours_examples_per_s": rates["ours"],
        "peer_examples_per_s": rates["peer"],
        "peer_ratio": rates["ours"] / rates["peer"],
        "ours_bfloat16": float(bfloat16),
        "fast_bfloat16": float(distribute.fast_bfloat16()),
    }
    if "peer_compiled" in rates:
        found |= {
            "peer_compiled_examples_per_s": rates["peer_compiled"],
            "peer_compiled_ratio": rates["ours"] / rates["peer_compiled"],
        }
    return found
