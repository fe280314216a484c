"""One factory for the `tf.distribute` strategy every mode runs under (`--strategy`), and the
multi-worker rules that go with it.

`--batch_size` is always the global batch: `training.training_data` cuts each global batch
into per-replica slices and the train steps scale losses by the global batch size, so one
CPU, several GPUs, several workers and a TPU all train on the same batches.

Multi-worker (`MultiWorkerMirroredStrategy`, configured by the standard `TF_CONFIG`): every
worker runs the same program; only the chief writes models, soft labels, reports and
exports, the others write to a temporary directory that is removed (`output_dir`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil

import tensorflow as tf

from mtkd_tf.errors import MtkdError

STRATEGIES = ("auto", "default", "one_device", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")

_TPU_ENVIRONMENT = ("TPU_NAME", "COLAB_TPU_ADDR", "TPU_WORKER_HOSTNAMES")


class StrategyError(MtkdError, ValueError):
    """A strategy cannot be created here; the message says what is missing."""


def set_logical_cpus(count: int) -> None:
    """Splits the CPU into `count` logical devices (to test MirroredStrategy without GPUs).

    Must run before TensorFlow initialises its devices.
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)


# TensorFlow's coordination service declares a worker dead after 10 s without a heartbeat. Two
# workers sharing 2 busy cores (CI) missed that once, and the whole run aborted; a minute still
# finds a dead worker, and a SIGTERM is handled at once (preemption.py), not by heartbeats.
HEARTBEAT_TIMEOUT_S = 60


def configure_coordination_service(heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S) -> None:
    """TensorFlow's own multi-worker coordination set-up (as `MultiWorkerMirroredStrategy` makes it
    from `TF_CONFIG`), with a longer heartbeat timeout; the strategy keeps a service configured first."""
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.eager import context

    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    cluster = resolver.cluster_spec()
    if resolver.task_type not in ("chief", "worker") or context.context().coordination_service is not None:
        return
    jobs = [
        coordination_config_pb2.CoordinatedJob(name=job, num_tasks=cluster.num_tasks(job))
        for job in ("chief", "worker")
        if job in cluster.jobs
    ]
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=multi_worker_util.coordination_leader(cluster),
        coordinated_jobs=jobs,
        heartbeat_timeout_in_ms=heartbeat_timeout_s * 1000,
    )


def tpu_strategy(address: str | None = None) -> tf.distribute.TPUStrategy:
    """TensorFlow's recipe: resolve the TPU, connect, initialise it, then build the strategy."""
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError) as error:
        raise StrategyError(f"no TPU found{f' at {address}' if address else ''}: {error}") from None
    return tf.distribute.TPUStrategy(resolver)


def get_strategy(name: str = "auto", num_gpus: int | None = None, tpu: str | None = None) -> tf.distribute.Strategy:
    """The strategy named by `name`.

    `auto`: a TPU when one is configured (`--tpu` or the TPU environment of Colab/Cloud),
    MirroredStrategy over several GPUs, else the default (one device). `num_gpus` limits
    the GPUs used; `multi_worker` reads the cluster from `TF_CONFIG`.
    """
    if name not in STRATEGIES:
        raise StrategyError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    # Before anything lists devices: both strategies must configure the runtime first.
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise StrategyError(
                "strategy multi_worker needs the cluster in the TF_CONFIG environment variable", "strategy"
            )
        configure_coordination_service()
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu" or (name == "auto" and (tpu or any(os.environ.get(key) for key in _TPU_ENVIRONMENT))):
        return tpu_strategy(tpu)
    gpus = tf.config.list_logical_devices("GPU")
    if num_gpus is not None:
        gpus = gpus[:num_gpus]
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    devices = [gpu.name for gpu in gpus] or [cpu.name for cpu in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices)


def set_precision(policy: str) -> str:
    """Global Keras dtype policy; heads and losses stay float32 (see `models.heads`).

    `auto` is mixed_bfloat16 where bfloat16 is native *and* measured faster here
    (`bfloat16_speedup`), float32 elsewhere (AVX2-only CPUs, older GPUs). Returns the policy set.
    """
    import keras

    if policy not in PRECISIONS:
        raise StrategyError(f"unknown precision {policy!r}; choose one of {', '.join(PRECISIONS)}", "mixed_precision")
    if policy == "auto":
        speedup = bfloat16_speedup() if fast_bfloat16() else None
        policy = "mixed_bfloat16" if speedup is not None and speedup >= AUTO_BFLOAT16_SPEEDUP else "float32"
        logging.getLogger("mtkd_tf").info(
            "mixed_precision auto -> %s (%s)",
            policy,
            "bfloat16 is not native here" if speedup is None else f"bfloat16 matmuls {speedup:.1f}x float32's here",
        )
    keras.mixed_precision.set_global_policy(policy)
    return policy


AUTO_BFLOAT16_SPEEDUP = 1.3  # `auto` picks bfloat16 only when its matmuls are at least this much faster


@functools.lru_cache(maxsize=1)
def bfloat16_speedup(tokens: int = 2048, hidden: int = 384, repeats: int = 5) -> float:
    """float32 / bfloat16 time of an encoder-sized matmul (`[tokens, hidden] x [hidden, 4 hidden]`),
    best of `repeats`: whether bfloat16 pays on this device (measured once per process, ~1 s)."""
    import time

    a = tf.random.normal([tokens, hidden])
    b = tf.random.normal([hidden, 4 * hidden])
    best = {}
    for dtype in (tf.float32, tf.bfloat16):
        x, y = tf.cast(a, dtype), tf.cast(b, dtype)
        step = tf.function(lambda: tf.reduce_sum(tf.cast(tf.linalg.matmul(x, y), tf.float32)))  # noqa: B023 (used in this iteration only)
        step()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            for _ in range(8):
                value = step()
            value.numpy()
            times.append(time.perf_counter() - started)
        best[dtype.name] = min(times)
    return best["float32"] / best["bfloat16"]


INFERENCE_PRECISIONS = ("auto", "float32", "bfloat16")


def fast_bfloat16() -> bool:
    """Whether bfloat16 matmuls are native here: a GPU of compute capability >= 8, or a CPU
    with AVX512-BF16 or AMX (oneDNN uses them; elsewhere bfloat16 is emulated and slower)."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return tuple(tf.config.experimental.get_device_details(gpus[0]).get("compute_capability", (0, 0))) >= (8, 0)
    if not onednn_allows_bfloat16(os.environ):
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = handle.read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


# oneDNN's ONEDNN_MAX_CPU_ISA values with native bfloat16 dot products (oneDNN's docs, "CPU ISA hints").
BFLOAT16_ISAS = (
    "AVX512_CORE_BF16",
    "AVX512_CORE_FP16",
    "AVX10_1_512",
    "AVX512_CORE_AMX",
    "AVX10_1_512_AMX",
    "AVX512_CORE_AMX_FP16",
    "AVX10_1_512_AMX_FP16",
    "AVX10_2_512",
    "AVX10_2_512_AMX_2",
    "ALL",
    "DEFAULT",
)


def onednn_allows_bfloat16(environ) -> bool:
    """False where oneDNN is off (Eigen emulates bfloat16) or `ONEDNN_MAX_CPU_ISA` caps it below
    bfloat16 kernels (the AVX2 emulation of docs/performance.md), so `auto` picks float32 there."""
    if environ.get("TF_ENABLE_ONEDNN_OPTS", "").strip().lower() in ("0", "false", "off", "no"):
        return False
    isa = environ.get("ONEDNN_MAX_CPU_ISA", environ.get("DNNL_MAX_CPU_ISA", "")).strip().upper()
    return not isa or isa in BFLOAT16_ISAS


def inference_policy(precision: str) -> str:
    """The Keras dtype policy for batch inference: `auto` is mixed_bfloat16 where it is fast."""
    if precision not in INFERENCE_PRECISIONS:
        raise StrategyError(
            f"unknown inference precision {precision!r}; choose one of {', '.join(INFERENCE_PRECISIONS)}"
        )
    if precision == "auto":
        precision = "bfloat16" if fast_bfloat16() else "float32"
    return "mixed_bfloat16" if precision == "bfloat16" else "float32"


def is_tpu(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, (tf.distribute.TPUStrategy, tf.distribute.experimental.TPUStrategy))


def is_chief(strategy: tf.distribute.Strategy | None = None) -> bool:
    """Whether this process writes outputs: always, except on non-chief multi-worker tasks."""
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    cluster = resolver.cluster_spec().as_dict()
    return task_type in (None, "chief") or (task_type == "worker" and task_id == 0 and "chief" not in cluster)


def worker_label() -> str:
    """`worker_<id>` of this process from TF_CONFIG ('' outside a cluster)."""
    task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {})
    return f"{task.get('type', 'worker')}_{task.get('index', 0)}" if task else ""


def worker_dir(directory: str, strategy: tf.distribute.Strategy | None = None) -> str:
    """Where this process writes what belongs in `directory`.

    The chief writes `directory` itself. Other workers, which run every step too, write
    to `<directory>/.workers/<task>_<id>` (TensorFlow's multi-worker recipe): the path is
    fixed, so a restarted worker resumes from its own checkpoints, and
    `remove_worker_dir` deletes it when the run ends.
    """
    if is_chief(strategy):
        return directory
    return os.path.join(directory, ".workers", worker_label() or "worker")


def remove_worker_dir(directory: str, strategy: tf.distribute.Strategy | None = None) -> None:
    """Deletes a non-chief worker's scratch outputs after a finished run."""
    if not is_chief(strategy):
        scratch = worker_dir(directory, strategy)
        shutil.rmtree(scratch, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(scratch))  # `.workers`, once the last worker is done


def is_multi_worker(strategy: tf.distribute.Strategy | None = None) -> bool:
    strategy = strategy or tf.distribute.get_strategy()
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and strategy.extended._in_multi_worker_mode()


class MultiWorkerFit:
    """Mixin for the project's `keras.Model`s: `fit` under MultiWorkerMirroredStrategy.

    keras-team/keras#20585 (Keras 3.15): `fit` fails twice under MultiWorkerMirroredStrategy.
    (1) Before the first step `_maybe_symbolic_build` peeks a batch and `strategy.reduce`s
    the nested, integer batch across workers; our models are built at construction, so
    we skip the peek (the optimizer builds at its first step, as without a strategy). (2) After
    each step Keras reduces the logged metrics with `strategy.reduce("MEAN", value, axis=0)`, which fails on 0-d
    values: the train steps pass their logs through `cross_worker_logs` (see there).
    Single-worker strategies are untouched.
    """

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if not self.built:
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)


def cross_worker_logs(logs: dict[str, tf.Tensor], strategy: tf.distribute.Strategy) -> dict[str, tf.Tensor]:
    """A train/test step's logs shaped for Keras's cross-replica reduction (keras-team/keras#20585):
    shape [1] under multi-worker, so the reduction returns the cross-worker mean as a scalar."""
    if is_multi_worker(strategy):
        return {name: tf.reshape(value, [1]) for name, value in logs.items()}
    return logs


def weights_digest(model) -> str:
    """A short hash of a model's weights (workers of one run must agree)."""
    import hashlib

    digest = hashlib.sha256()
    for value in model.get_weights():
        digest.update(value.tobytes())
    return digest.hexdigest()[:16]
