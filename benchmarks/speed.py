"""Three of the speed targets `benchmarks/run --figures=speed` checks (measured figures in
docs/performance.md, "The speed issue's targets, measured"; the peer comparison is
`benchmarks/peer.py`, the quickstart's wall time `benchmarks/time_quickstart`):

- The fraction of the machine's fp32 peak that our training and inference steps reach at widths
  32, 64 and 128 (MiniLM size, batch 32; FLOPs counted from the architecture), in float32 and
  in the precision `auto` picks; target >= 0.60. The peak is the best fp32 matmul of TensorFlow
  and, when it is installed, PyTorch on this machine.
- The full-size moviesuite pipeline's (configs/moviesuite_full.cfg) wall time, extrapolated from
  timed steady-state training steps on real moviesuite batches and timed inference; target < 2 h.
- Soft labels on real text: examples/s per pretrained MiniLM teacher, in float32 (the
  ensemble tokenises once; batches of short texts are bigger); target >= 150.
"""

from __future__ import annotations

import math
import statistics
import time

import keras
import numpy as np
import tensorflow as tf

from benchmarks import figures
from mtkd_tf.training import distribute
from mtkd_tf.training import train as training

WIDTHS = (32, 64, 128)
OPTIMIZER = "adamax_fused"  # what the quickstart and moviesuite_full.cfg train with (docs/performance.md)


def torch_peak(n: int = 4096, repeats: int = 5) -> float | None:
    """PyTorch's fp32 GFLOP/s of a warm n^3 matmul (None: torch is not installed)."""
    try:
        import torch
    except ImportError:
        return None
    import os

    torch.set_num_threads(os.cpu_count() or 1)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best / 1e9


def _step_times(setup: figures.Setup, policy: str, train: bool, rounds: int = 2) -> float:
    """Median seconds of a steady-state train step (or forward pass) at `setup.seq` tokens."""
    keras.mixed_precision.set_global_policy(policy)
    try:
        data = figures.splits(setup, batches_per_task=4)
        stream = training.training_data(data, figures.preprocessor(setup), figures.config(setup))
        model = figures.mtdnn(setup, 10_000, optimizer=OPTIMIZER)
        iterator = iter(stream.starting_at(0))
        if train:
            model.make_train_function()
            step = model.train_function
            run = lambda: float(np.asarray(step(iterator)["loss"]))  # noqa: E731
        else:
            forward = tf.function(
                lambda x: model({k: x[k] for k in ("token_ids", "segment_ids", "padding_mask")}, training=False),
                reduce_retracing=True,
            )
            run = lambda: [v.numpy() for v in forward(next(iterator)[0]).values()]  # noqa: E731
        for _ in range(3):
            run()
        times = []
        for _ in range(rounds * setup.steps):
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
        return statistics.median(times)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def step_efficiency(setup: figures.Setup) -> dict[str, float]:
    """Target 1: GFLOP/s and fraction of the fp32 peak, training and inference, per width and precision."""
    results = {"tf_peak_fp32": figures.matmul_peak()}
    peer = torch_peak()
    if peer is not None:
        results["torch_peak_fp32"] = peer
    peak = max(results["tf_peak_fp32"], peer or 0.0)
    results["machine_peak_fp32"] = peak
    auto = distribute.set_precision("auto")
    keras.mixed_precision.set_global_policy("float32")
    results["auto_is_bfloat16"] = float(auto == "mixed_bfloat16")
    policies = ["float32"] + (["mixed_bfloat16"] if auto == "mixed_bfloat16" else [])
    for width in WIDTHS:
        at = figures.Setup(setup.size, width, setup.batch, setup.steps, setup.rounds, setup.teachers)
        flops = figures.train_flops(at, figures.encoder(at).backbone)
        for policy in policies:
            for train in (True, False):
                seconds = _step_times(at, policy, train)
                work = flops if train else flops / 3  # forward: 2 of the 6 FLOPs per parameter and token
                kind = "train" if train else "infer"
                results[f"{kind}_{policy}_w{width}_s"] = seconds
                results[f"{kind}_{policy}_w{width}_gflops"] = work / seconds / 1e9
                results[f"{kind}_{policy}_w{width}_of_peak"] = work / seconds / 1e9 / peak
    return results


def soft_labels_real_text(setup: figures.Setup, teachers: int = 2, examples: int = 2048) -> dict[str, float]:
    """Target 5: ensemble targets of pretrained MiniLM teachers on real rt_polarity sentences, float32."""
    from benchmarks.peer import rt_polarity_sentences
    from mtkd_tf.data.moviesuite import TASKS
    from mtkd_tf.data.split import SplitData
    from mtkd_tf.distill import ensemble
    from mtkd_tf.models.encoder import load_encoder
    from mtkd_tf.models.mtdnn import MTDNN

    texts, labels = rt_polarity_sentences(examples)
    task = TASKS["rt_polarity"]
    data = SplitData(task, "train", [f"rt/{i}" for i in range(len(texts))], texts, None, labels)
    members = []
    for k in range(teachers):
        encoder = load_encoder("minilm_l6", seed=k)
        members.append(MTDNN(encoder.backbone, [task], preprocessor=training.encoder_preprocessor(encoder, 128)))
    ensemble.ensemble_targets(members, data.rows(0, 256), 1.0, 128)  # traces the shapes
    started = time.perf_counter()
    ensemble.ensemble_targets(members, data, 1.0, 128)
    seconds = time.perf_counter() - started
    return {"soft_labels_real_fp32_examples_per_s_per_teacher": examples * teachers / seconds}


def full_run_estimate(setup: figures.Setup, steps: int = 12) -> dict[str, float]:
    """Target 4: configs/moviesuite_full.cfg's wall time from timed real-text training steps and inference."""
    from mtkd_tf.config import ExperimentConfig
    from mtkd_tf.experiment import Experiment

    config = ExperimentConfig.from_flagfile("configs/moviesuite_full.cfg", model_dir="/tmp/mtkd-estimate")
    experiment = Experiment(config)
    train = experiment.data.train
    batch, epochs = config.training.batch_size, config.training.epochs
    per_epoch = sum(math.ceil(len(d) / batch) for d in train.values())
    models = config.teachers.num_teachers + 1 + int(config.distillation.train_baseline)
    total_steps = models * per_epoch * epochs
    # Timed: steady-state steps of the real MT-DNN on real batches, in the configured precision.
    policy = distribute.set_precision(config.runtime.mixed_precision)
    encoder = experiment.ctx.encoder(config.model.encoder, None, 0)
    preprocessor = training.encoder_preprocessor(encoder, config.model.max_seq_length)
    from mtkd_tf.models.mtdnn import MTDNN

    model = MTDNN(encoder.backbone, experiment.data.tasks, preprocessor=preprocessor)
    data = training.training_data([train[t.name] for t in model.tasks], preprocessor, config.training)
    model.compile(optimizer=training.make_optimizer(config.training, 10_000))
    iterator = iter(data.starting_at(0))
    model.make_train_function()
    step = model.train_function
    for _ in range(8):  # traces the common widths
        step(iterator)
    started = time.perf_counter()
    for _ in range(steps):
        logs = step(iterator)
    float(np.asarray(logs["loss"]))
    step_seconds = (time.perf_counter() - started) / steps
    keras.mixed_precision.set_global_policy("float32")
    # Inference: soft labels (teachers x teacher-task training examples) + evaluation of every model on dev.
    from mtkd_tf.models.inference import predict_outputs

    dev = experiment.data.dev
    sample = next(iter(next(iter(dev.values())).values()))
    started = time.perf_counter()
    predict_outputs(model, sample, config.runtime.eval_batch_size)
    per_example = (time.perf_counter() - started) / len(sample)
    labelled = sum(len(train[name]) for name in experiment.data.teacher_tasks) * config.teachers.num_teachers
    evaluated = sum(len(d) for splits in dev.values() for d in splits.values()) * (models + 1)
    inference = per_example * (labelled + evaluated)
    return {
        "full_run_steps": float(total_steps),
        "full_run_step_s": step_seconds,
        "full_run_training_s": total_steps * step_seconds,
        "full_run_inference_s": inference,
        "full_run_estimate_s": total_steps * step_seconds + inference,
        "full_run_bfloat16": float(policy == "mixed_bfloat16"),
    }


def speed(setup: figures.Setup) -> dict[str, float]:
    results = step_efficiency(setup)
    results.update(soft_labels_real_text(setup))
    results.update(full_run_estimate(setup))
    return results
