"""The measurements behind `benchmarks/run`: each function returns plain numbers.

Models are MiniLM-L6-sized (6 layers, hidden 384, 12 heads, intermediate 1536, vocabulary
30,522) with random weights: speed depends on shapes, not values. Text is synthetic words
that tokenise one token each, so a sequence length is exact; figure 3 uses real text.
Timings are medians of per-step times, interleaved between the compared variants, so the
ratios come from one run on one (noisy) machine.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import statistics
import tempfile
import time
from typing import Callable

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from mtkd_tf.config import TrainingConfig
from mtkd_tf.data import batching
from mtkd_tf.data.preprocessing import Preprocessor, load_tokenizer
from mtkd_tf.data.split import SplitData
from mtkd_tf.data.tasks import GLUE_TASKS
from mtkd_tf.distill import ensemble
from mtkd_tf.distill.distiller import Distiller, distillation_targets, soft_width
from mtkd_tf.models import model_dir as model_dir_lib
from mtkd_tf.models.encoder import Encoder
from mtkd_tf.models.mtdnn import MTDNN
from mtkd_tf.training import train as training

SIZES = {
    "minilm": dict(num_layers=6, hidden_dim=384, num_heads=12, intermediate_dim=1536),
    "tiny": dict(num_layers=2, hidden_dim=64, num_heads=2, intermediate_dim=256),
}
VOCABULARY = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(30522 - 5)]
TASKS = [GLUE_TASKS["sst2"], GLUE_TASKS["qnli"]]  # a single-sentence and a pair task, linear heads


@dataclasses.dataclass
class Setup:
    size: str = "minilm"
    seq: int = 128
    batch: int = 32
    steps: int = 5  # timed steps per variant and round
    rounds: int = 2
    teachers: int = 2


# --- building blocks ----------------------------------------------------------------------


def encoder(setup: Setup, seed: int = 0) -> Encoder:
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(VOCABULARY), max_sequence_length=512, **SIZES[setup.size]
    )
    return Encoder(backbone, VOCABULARY, lowercase=True, spec=f"random:{setup.size}")


def preprocessor(setup: Setup, fixed: bool = False) -> Preprocessor:
    return Preprocessor(load_tokenizer(VOCABULARY), setup.seq, setup.seq if fixed else 16)


def synthetic_split(task, examples: int, tokens: int, seed: int = 0) -> SplitData:
    """Examples of exactly `tokens` word pieces after packing (pairs: split in two)."""
    rng = np.random.default_rng(seed)
    words = lambda n: [" ".join(f"w{i}" for i in rng.integers(0, 30000, n)) for _ in range(examples)]  # noqa: E731
    content = tokens - (3 if task.is_pair else 2)
    first = words(content // 2 if task.is_pair else content)
    second = words(content - content // 2) if task.is_pair else None
    labels = rng.integers(0, task.num_classes, examples).astype(np.int32)
    return SplitData(task, "train", [f"{task.name}/train/{i}" for i in range(examples)], first, second, labels)


def splits(setup: Setup, batches_per_task: int = 4) -> list[SplitData]:
    return [synthetic_split(task, setup.batch * batches_per_task, setup.seq, seed=i) for i, task in enumerate(TASKS)]


def config(setup: Setup, **changes) -> TrainingConfig:
    return TrainingConfig(batch_size=setup.batch, epochs=1000, learning_rate=1e-4, verbose=0, **changes)


class StepTimes(keras.callbacks.Callback):
    """Wall time of every train step (the loss is fetched, so each step has finished)."""

    def __init__(self):
        super().__init__()
        self.times: list[float] = []

    def on_train_batch_begin(self, batch, logs=None):
        self.started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        np.asarray(logs["loss"])
        self.times.append(time.perf_counter() - self.started)


def interleaved_fit(variants: dict[str, tuple[keras.Model, tf.data.Dataset]], setup: Setup) -> dict[str, float]:
    """Median seconds per train step of each variant, alternating variants round by round."""
    timers = {name: StepTimes() for name in variants}
    for round_ in range(setup.rounds + 1):  # round 0 traces and warms up
        for name, (model, dataset) in variants.items():
            timer = timers[name]
            before = len(timer.times)
            model.fit(dataset, epochs=1, steps_per_epoch=setup.steps if round_ else 3, callbacks=[timer], verbose=0)
            if round_ == 0:
                del timer.times[before:]
    return {name: statistics.median(timer.times) for name, timer in timers.items()}


def bare_keras_hub(setup: Setup, steps_total: int) -> keras.Model:
    """(a) What a keras-hub user writes: BertBackbone + Dense on the pooled [CLS] vector."""
    backbone = encoder(setup).backbone
    inputs = backbone.input
    logits = keras.layers.Dense(2)(backbone(inputs)["pooled_output"])
    model = keras.Model(inputs, logits)
    model.compile(
        optimizer=training.make_optimizer(config(setup), steps_total),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def mtdnn(
    setup: Setup, steps_total: int, tasks=TASKS, seed: int = 0, jit_compile: bool = False, optimizer: str = "adamax"
) -> MTDNN:
    model = MTDNN(encoder(setup, seed).backbone, tasks)
    model.compile(
        optimizer=training.make_optimizer(config(setup, optimizer=optimizer), steps_total), jit_compile=jit_compile
    )
    return model


def cached_targets(data: list[SplitData]) -> dict[str, dict[str, np.ndarray]]:
    width = soft_width(TASKS)
    rng = np.random.default_rng(0)
    return {
        d.task.name: distillation_targets(d.task, len(d), width, rng.dirichlet(np.ones(d.task.num_classes), len(d)))
        for d in data
    }


# --- figure 0: the machine ------------------------------------------------------------------


def matmul_peak(n: int = 4096, repeats: int = 5) -> float:
    """fp32 GFLOP/s of a warm n^3 matmul: the practical peak of this machine."""
    a = tf.random.normal([n, n])
    b = tf.random.normal([n, n])
    step = tf.function(lambda: tf.reduce_sum(tf.linalg.matmul(a, b)))
    step()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step().numpy()
        times.append(time.perf_counter() - started)
    return 2 * n**3 / min(times) / 1e9


def train_flops(setup: Setup, backbone) -> float:
    """FLOPs of one training step from the architecture: 6 x non-embedding parameters x tokens
    (forward 2, backward 4) + attention scores and mixing (QK^T, AV: 2 x 2 x seq^2 x hidden
    per layer and sequence, times 3 for training)."""
    embedding = sum(int(np.prod(w.shape)) for w in backbone.weights if "embedding" in w.path)
    non_embedding = backbone.count_params() - embedding
    tokens = setup.batch * setup.seq
    config = SIZES[setup.size]
    attention = 3 * 4 * setup.batch * setup.seq**2 * config["hidden_dim"] * config["num_layers"]
    return 6 * non_embedding * tokens + attention


# --- figure 1 and 2: overhead, efficiency, precision, XLA ------------------------------------


def overhead(setup: Setup) -> dict[str, float]:
    """(a) bare keras-hub fit, (b) MT-DNN, (c) Distiller with cached targets, (d) with K online
    teachers; and one teacher's forward pass, which (d) adds K times."""
    data = splits(setup)
    pre = preprocessor(setup)
    plain = training.training_data(data, pre, config(setup))
    distill = training.training_data(data, pre, config(setup), targets=cached_targets(data))
    total = 10_000
    bare_data = plain.starting_at(0).map(
        lambda x, y: ({k: x[k] for k in ("token_ids", "segment_ids", "padding_mask")}, y["label"])
    )
    student_c = mtdnn(setup, total)
    distiller_c = Distiller(MTDNN(encoder(setup, 1).backbone, TASKS))
    distiller_c.compile(optimizer=training.make_optimizer(config(setup), total))
    teachers = [mtdnn(setup, total, seed=10 + k) for k in range(setup.teachers)]
    distiller_d = Distiller(MTDNN(encoder(setup, 2).backbone, TASKS), teachers=teachers)
    distiller_d.compile(optimizer=training.make_optimizer(config(setup), total))
    times = interleaved_fit(
        {
            "a_bare_keras_hub": (bare_keras_hub(setup, total), bare_data),
            "b_mtdnn": (student_c, plain.starting_at(0)),
            "c_distiller_cached": (distiller_c, distill.starting_at(0)),
            "d_distiller_online": (distiller_d, distill.starting_at(0)),
        },
        setup,
    )
    x, _ = next(iter(plain.starting_at(0)))
    features = {k: x[k] for k in ("token_ids", "segment_ids", "padding_mask")}
    forward = tf.function(lambda f: teachers[0](f, training=False))
    forward(features)
    samples = []
    for _ in range(setup.steps * setup.rounds):
        started = time.perf_counter()
        tf.nest.map_structure(lambda t: t.numpy(), forward(features))
        samples.append(time.perf_counter() - started)
    times["teacher_forward"] = statistics.median(samples)
    times["flops_per_step"] = train_flops(setup, student_c.encoder)
    return times


def precision_and_xla(setup: Setup) -> dict[str, float]:
    """Train step and inference of one MT-DNN task in fp32, mixed_bfloat16 and with XLA.

    One task: XLA compiles a multi-task step's `switch_case` for minutes on CPU
    (docs/distributed.md), which says nothing about the step's speed once compiled.
    """
    from mtkd_tf.training.distribute import set_precision

    data = splits(setup)[:1]
    results = {}
    variants = {}
    for name, policy, jit in (
        ("fp32", "float32", False),
        ("bf16", "mixed_bfloat16", False),
        ("fp32_xla", "float32", True),
    ):
        set_precision(policy)
        static = preprocessor(setup, fixed=True)
        stream = training.training_data(data, static, config(setup), drop_remainder=True)
        variants[name] = (mtdnn(setup, 10_000, TASKS[:1], jit_compile=jit), stream.starting_at(0))
    set_precision("float32")
    train = interleaved_fit(variants, setup)
    for name, seconds in train.items():
        results[f"train_{name}"] = seconds
    batch = next(iter(variants["fp32"][1]))[0]
    features = {k: batch[k] for k in ("token_ids", "segment_ids", "padding_mask")}
    for name, (model, _) in variants.items():
        call = tf.function(lambda f, m=model: m(f, training=False), jit_compile=name.endswith("xla"))
        call(features)
        samples = []
        for _ in range(setup.steps * setup.rounds):
            started = time.perf_counter()
            tf.nest.map_structure(lambda t: t.numpy(), call(features))
            samples.append(time.perf_counter() - started)
        results[f"infer_{name}"] = statistics.median(samples)
    return results


# --- figure 3: padding on real text ---------------------------------------------------------


def pretrained(setup: Setup) -> Encoder:
    """Pretrained MiniLM-L6 (from PyPI, cached) at MiniLM size, so dev metrics mean something."""
    from mtkd_tf.models.encoder import load_encoder

    return load_encoder("minilm_l6", seed=0) if setup.size == "minilm" else encoder(setup)


def real_text_epochs(setup: Setup, examples_per_task: int = 512) -> dict[str, float]:
    """The second training epoch on moviesuite's short real sentences, padded to max_seq_length
    vs padded per batch vs per batch with length bucketing; dev accuracy after each; then
    inference over the same text in data order vs sorted by length."""
    from mtkd_tf.data import readers, suites
    from mtkd_tf.data.tasks import registry, resolve_tasks
    from mtkd_tf.models import evaluation
    from mtkd_tf.models.inference import predict_outputs

    root = suites.suite_dir("moviesuite")
    tasks = resolve_tasks(["rt_polarity", "trec"], registry(extra=suites.suite_tasks()))
    train = [readers.load_split(t, "train", data_dir=root).take(examples_per_task) for t in tasks]
    dev = {t.name: {"dev": readers.load_split(t, "dev", data_dir=root).take(400)} for t in tasks}
    vocabulary = pretrained(setup).vocabulary
    lengths = np.concatenate(
        [
            batching.token_lengths(batching.tokenize_all(d, Preprocessor(load_tokenizer(vocabulary), setup.seq)))
            for d in train
        ]
    )
    results = {"real_tokens_mean": float(np.mean(np.minimum(lengths + 3, setup.seq)))}
    for name, fixed, bucketing in (("fixed", True, False), ("dynamic", False, False), ("bucketed", False, True)):
        shared = pretrained(setup)
        pre = Preprocessor(load_tokenizer(shared.vocabulary), setup.seq, setup.seq if fixed else 16)
        stream = training.training_data(train, pre, config(setup, length_bucketing=bucketing))
        model = MTDNN(shared.backbone, tasks, preprocessor=pre)
        steps = stream.steps_per_epoch
        model.compile(optimizer=training.make_optimizer(config(setup), 2 * steps))
        # Epoch 1 traces the train step for the shapes it meets (with varying shapes Keras
        # retraces once more, for a general shape, at a moment that depends on the batch
        # order); epoch 2, timed, is the steady state of a long run.
        model.fit(stream.starting_at(0), epochs=1, steps_per_epoch=steps, verbose=0)
        started = time.perf_counter()
        model.fit(stream.starting_at(steps), epochs=1, steps_per_epoch=steps, verbose=0)
        results[f"epoch_{name}"] = time.perf_counter() - started
        scores = evaluation.evaluate(model, dev, 128)
        results[f"dev_{name}"] = float(np.mean([m["accuracy"] for m in scores.values()]))
    # Inference on the same real text (what soft labelling and evaluation do): examples in data
    # order vs sorted by length, each padded per batch; the first pass of each traces its shapes.
    outputs = {}
    for name, by_length in (("data_order", False), ("length_order", True)):
        for timed in (False, True):
            started = time.perf_counter()
            outputs[name] = [predict_outputs(model, d, 128, by_length=by_length) for d in train]
            if timed:
                results[f"infer_real_{name}_s"] = time.perf_counter() - started
    pairs = zip(outputs["length_order"], outputs["data_order"], strict=True)  # one per split
    results["infer_real_max_abs_diff"] = float(max(np.max(np.abs(a - b)) for a, b in pairs))
    results["infer_real_examples"] = float(sum(len(d) for d in train))
    return results


# --- figure 4: input pipeline ---------------------------------------------------------------


def input_pipeline(setup: Setup, examples_per_task: int = 2048) -> dict[str, float]:
    """Tokenise + pack + multi-task batching in tf.data alone: setup time and batches/s."""
    data = [synthetic_split(task, examples_per_task, setup.seq, seed=i) for i, task in enumerate(TASKS)]
    started = time.perf_counter()
    stream = training.training_data(data, preprocessor(setup), config(setup))
    setup_seconds = time.perf_counter() - started
    iterator = iter(stream.starting_at(0))
    next(iterator)
    count = stream.steps_per_epoch
    started = time.perf_counter()
    for _ in range(count):
        next(iterator)
    seconds = time.perf_counter() - started
    return {
        "pipeline_setup_s": setup_seconds,
        "pipeline_examples": float(len(data) * examples_per_task),
        "pipeline_batches_per_s": count / seconds,
    }


# --- figure 5: soft labels ------------------------------------------------------------------


def soft_label_inference(setup: Setup, examples: int = 512, batch_size: int = 128) -> dict[str, float]:
    """Ensemble targets of K teachers over `examples` full-length examples (batched predict), in
    float32 and in the precision `--soft_labels_precision=auto` picks on this machine."""
    from mtkd_tf.models.mtdnn import in_precision
    from mtkd_tf.training.distribute import inference_policy

    pre = preprocessor(setup)
    data = synthetic_split(TASKS[1], examples, setup.seq)
    results = {}
    fp32 = [mtdnn(setup, 1, seed=20 + k) for k in range(setup.teachers)]
    for k, member in enumerate(fp32):
        member.preprocessor, member.directory = pre, f"member_{k}"
    auto = inference_policy("auto")
    for name, policy in (("float32", "float32"), ("auto", auto)):
        members = [in_precision(m, policy) for m in fp32]
        ensemble.ensemble_targets(members, data.rows(0, batch_size), 1.0, batch_size)  # trace
        started = time.perf_counter()
        ensemble.ensemble_targets(members, data, 1.0, batch_size)
        results[f"soft_labels_{name}_examples_per_s_per_teacher"] = (
            examples * setup.teachers / (time.perf_counter() - started)
        )
    results["soft_labels_auto_is_bfloat16"] = float(auto == "mixed_bfloat16")
    return results


# --- figure 6: serving ----------------------------------------------------------------------


def serving(setup: Setup, calls: int = 30) -> dict[str, float]:
    """Latency of the exported SavedModel (raw strings in) vs the model on tokenised input."""
    from mtkd_tf.export import saved_model as export

    pre = preprocessor(setup)
    model = mtdnn(setup, 1)
    results = {}
    with tempfile.TemporaryDirectory() as directory:
        model_dir_lib.save(os.path.join(directory, "model"), model, VOCABULARY, True, setup.seq)
        path = export.export(os.path.join(directory, "model"), os.path.join(directory, "export"))
        loaded = tf.saved_model.load(path)
        serve = loaded.signatures["sst2"]
        texts = synthetic_split(TASKS[0], 32, setup.seq).text_a
        forward = tf.function(lambda f: model(f, training=False)["sst2"])
        for batch in (1, 32):
            strings = tf.constant(texts[:batch])
            features = pre(strings)
            for name, call in (
                ("export", lambda strings=strings: serve(sentence1=strings)["probabilities"]),
                ("raw", lambda features=features: forward(features)),
            ):
                call()
                samples = []
                for _ in range(calls):
                    started = time.perf_counter()
                    call().numpy()
                    samples.append(time.perf_counter() - started)
                results[f"serving_{name}_b{batch}_p50_ms"] = 1000 * float(np.percentile(samples, 50))
                results[f"serving_{name}_b{batch}_p99_ms"] = 1000 * float(np.percentile(samples, 99))
    return results


# --- figure 7: memory (run in a child process each) -------------------------------------------


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; getrusage's maxrss would include the memory of
    the parent this process was forked from)."""
    with open("/proc/self/status", encoding="utf-8") as handle:
        for row in handle:
            if row.startswith("VmHWM:"):
                return int(row.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(setup: Setup, online_teachers: bool) -> dict[str, float]:
    """Peak resident memory of a few training steps: MT-DNN, or distillation with K online teachers."""
    data = splits(setup, batches_per_task=2)
    pre = preprocessor(setup)
    if online_teachers:
        stream = training.training_data(data, pre, config(setup), targets=cached_targets(data))
        teachers = [mtdnn(setup, 10, seed=10 + k) for k in range(setup.teachers)]
        model = Distiller(MTDNN(encoder(setup, 2).backbone, TASKS), teachers=teachers)
        model.compile(optimizer=training.make_optimizer(config(setup), 10))
    else:
        stream = training.training_data(data, pre, config(setup))
        model = mtdnn(setup, 10)
    model.fit(stream.starting_at(0), epochs=1, steps_per_epoch=4, verbose=0)
    return {"peak_rss_mb": peak_rss_mb()}


# The figures measured here; `benchmarks/run` puts `speed` (benchmarks/speed.py, which imports
# this module) and `peer` (benchmarks/peer.py) before them.
FIGURES: dict[str, Callable[[Setup], dict[str, float]]] = {
    "overhead": overhead,
    "precision_xla": precision_and_xla,
    "real_text": real_text_epochs,
    "input_pipeline": input_pipeline,
    "soft_labels": soft_label_inference,
    "serving": serving,
}
