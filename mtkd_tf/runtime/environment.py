"""Where a result was computed: the CPU, accelerators, training precision, oneDNN and versions, as
report.json's `environment` and the benchmarks print them."""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    """The CPU's model name (`/proc/cpuinfo`; elsewhere the platform's processor string)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            found = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
    except OSError:
        found = ""
    return found or platform.processor() or "unknown"


def environment(precision: str) -> dict[str, str]:
    """CPU model, cores, GPUs, training precision and the TensorFlow and Keras versions."""
    import keras
    import tensorflow as tf

    from mtkd_tf.runtime import onednn

    found = {
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "gpus": str(len(tf.config.list_physical_devices("GPU"))),
        "training_precision": precision,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "onednn": f"{'on' if onednn_enabled() else 'off'}: {onednn.DECISION}",
    }
    if os.environ.get("ONEDNN_MAX_CPU_ISA"):
        found["onednn_max_cpu_isa"] = os.environ["ONEDNN_MAX_CPU_ISA"]
    return found


def onednn_enabled() -> bool:
    """Whether this TensorFlow process runs oneDNN kernels (TensorFlow's own answer)."""
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())
