"""oneDNN wherever TensorFlow leaves it off: x86 CPUs without AVX-512 VNNI / BF16, AVX-VNNI or AMX
(AVX2 laptops, CI runners, cloud VMs), where TensorFlow's default is Eigen and float32 matmuls
run at about half the speed (docs/performance.md). `import mtkd_tf` (and so `bin/run`) sets
`TF_ENABLE_ONEDNN_OPTS=1` there before TensorFlow is imported; a user's own setting always wins.
If TensorFlow was imported first it is too late: one warning says how to get the speed.
"""

from __future__ import annotations

import logging
import os
import platform
import sys

VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
# TensorFlow turns oneDNN on by default only where the CPU has one of these (cpuinfo names).
TF_DEFAULT_ON = ("avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")

logger = logging.getLogger("mtkd_tf")


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str] | None:
    """The CPU's feature flags (None where /proc/cpuinfo is not readable)."""
    try:
        with open(path, encoding="utf-8") as handle:
            line = next((line for line in handle if line.startswith("flags")), "")
    except OSError:
        return None
    return set(line.split(":", 1)[1].split()) if ":" in line else None


def tensorflow_leaves_it_off(flags: set[str] | None, machine: str) -> bool:
    """True on an x86 CPU where TensorFlow's default leaves oneDNN off (Eigen kernels instead)."""
    return machine.lower() in ("x86_64", "amd64") and flags is not None and not flags & set(TF_DEFAULT_ON)


def enable(
    environ=os.environ,
    flags: set[str] | None = None,
    machine: str | None = None,
    tensorflow_imported: bool | None = None,
) -> str:
    """Turns oneDNN on where it helps (see the module docstring); returns what was decided."""
    if VARIABLE in environ:
        return f"{VARIABLE}={environ[VARIABLE]} (the user's setting)"
    if not tensorflow_leaves_it_off(cpu_flags() if flags is None else flags, machine or platform.machine()):
        return "TensorFlow's default (on for this CPU, or not an x86 CPU)"
    if tensorflow_imported if tensorflow_imported is not None else "tensorflow" in sys.modules:
        logger.warning(
            "TensorFlow was imported before mtkd_tf, so its oneDNN optimisations stay off on this CPU "
            "(no AVX-512 VNNI/BF16 or AMX): set %s=1 before importing TensorFlow, or import mtkd_tf "
            "first, for 1.3-1.9x faster steps (docs/performance.md)",
            VARIABLE,
        )
        return "off: TensorFlow was imported before mtkd_tf"
    environ[VARIABLE] = "1"
    return f"{VARIABLE}=1 (set by mtkd_tf: TensorFlow leaves oneDNN off on this CPU)"


DECISION = enable()
