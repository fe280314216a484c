"""One factory for the `tf.distribute` strategy every mode runs under (`--strategy`).

`--batch_size` is always the global batch: Keras splits each batch across replicas and
the train steps scale losses by the global batch size.
"""

from __future__ import annotations

import tensorflow as tf

STRATEGIES = ("auto", "default", "one_device", "mirrored")


def set_logical_cpus(count: int) -> None:
    """Splits the CPU into `count` logical devices (to test MirroredStrategy without GPUs).

    Must run before TensorFlow initialises its devices.
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)


def get_strategy(name: str = "auto", num_gpus: int | None = None) -> tf.distribute.Strategy:
    """The strategy named by `name`; `auto` mirrors over several GPUs, else the default."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
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
