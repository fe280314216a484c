"""oneDNN on where TensorFlow leaves it off (x86 without AVX-512 VNNI/BF16, AVX-VNNI or AMX); the
user's TF_ENABLE_ONEDNN_OPTS always wins; report.json's environment says what ran."""

import logging
import os
import subprocess
import sys

from conftest import ROOT

from mtkd_tf.runtime import onednn

AVX2 = {"fpu", "sse4_2", "avx", "avx2", "fma"}  # the 2-core AMD EPYC of the speed issue
AMX = AVX2 | {"avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16"}


def _child_prints(code: str, env: dict[str, str]) -> str:
    """The last line `code` prints in a fresh Python process (this checkout importable)."""
    found = subprocess.run(
        [sys.executable, "-c", code], env={**env, "PYTHONPATH": ROOT}, capture_output=True, text=True, timeout=300
    )
    lines = found.stdout.strip().splitlines()
    assert lines, found.stderr[-2000:]
    return lines[-1]


def test_it_is_turned_on_only_where_tensorflow_leaves_it_off():
    assert onednn.tensorflow_leaves_it_off(AVX2, "x86_64")
    assert not onednn.tensorflow_leaves_it_off(AMX, "x86_64")
    assert not onednn.tensorflow_leaves_it_off(AVX2 | {"avx_vnni"}, "x86_64")
    assert not onednn.tensorflow_leaves_it_off(AVX2, "aarch64") and not onednn.tensorflow_leaves_it_off(None, "x86_64")
    environ = {}
    assert "set by mtkd_tf" in onednn.enable(environ, AVX2, "x86_64", tensorflow_imported=False)
    assert environ == {"TF_ENABLE_ONEDNN_OPTS": "1"}
    environ = {}
    assert "default" in onednn.enable(environ, AMX, "x86_64", tensorflow_imported=False) and environ == {}


def test_the_users_setting_wins_and_a_late_import_says_how_to_get_the_speed(caplog):
    environ = {"TF_ENABLE_ONEDNN_OPTS": "0"}
    assert "the user's setting" in onednn.enable(environ, AVX2, "x86_64", tensorflow_imported=False)
    assert environ == {"TF_ENABLE_ONEDNN_OPTS": "0"}
    environ = {}
    with caplog.at_level(logging.WARNING, logger="mtkd_tf"):
        decision = onednn.enable(environ, AVX2, "x86_64", tensorflow_imported=True)
    assert decision.startswith("off") and environ == {}
    assert "set TF_ENABLE_ONEDNN_OPTS=1 before importing TensorFlow" in caplog.text


def test_import_mtkd_tf_records_what_tensorflow_runs_in_the_environment():
    code = (
        "import os, mtkd_tf\nfrom mtkd_tf.runtime.environment import environment\n"
        "print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'), '|', environment('float32')['onednn'])"
    )
    for setting, expected in (
        ("0", "0 | off: TF_ENABLE_ONEDNN_OPTS=0 (the user's setting)"),
        ("1", "1 | on: TF_ENABLE_ONEDNN_OPTS=1 (the user's setting)"),
    ):
        assert _child_prints(code, {**os.environ, "TF_ENABLE_ONEDNN_OPTS": setting}) == expected


def test_bfloat16_counts_as_native_only_where_onednn_may_use_its_kernels():
    from mtkd_tf.training.distribute import onednn_allows_bfloat16

    assert onednn_allows_bfloat16({}) and onednn_allows_bfloat16({"TF_ENABLE_ONEDNN_OPTS": "1"})
    assert onednn_allows_bfloat16({"ONEDNN_MAX_CPU_ISA": "avx512_core_amx"})
    # The AVX2 emulation and oneDNN off: bfloat16 would be emulated, so `auto` must pick float32.
    assert not onednn_allows_bfloat16({"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert not onednn_allows_bfloat16({"DNNL_MAX_CPU_ISA": "AVX512_CORE"})
    assert not onednn_allows_bfloat16({"TF_ENABLE_ONEDNN_OPTS": "0"})


def test_import_mtkd_tf_on_an_avx2_cpu_turns_onednn_on_before_tensorflow_loads():
    """The whole path on a CPU whose /proc/cpuinfo shows AVX2 only (faked for the child process):
    `import mtkd_tf` sets the variable before TensorFlow is imported, and TensorFlow then runs oneDNN."""
    code = (
        "import builtins, io\n"
        "real_open = builtins.open\n"
        "def fake_open(path, *args, **kwargs):\n"
        "    if path == '/proc/cpuinfo':\n"
        "        return io.StringIO('processor : 0\\nflags : fpu sse4_2 avx avx2 fma\\n')\n"
        "    return real_open(path, *args, **kwargs)\n"
        "builtins.open = fake_open\n"
        "import mtkd_tf\n"
        "builtins.open = real_open\n"
        "import os\n"
        "from mtkd_tf.runtime.environment import environment\n"
        "print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'), '|', environment('float32')['onednn'])\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "TF_ENABLE_ONEDNN_OPTS"}
    assert _child_prints(code, env) == (
        "1 | on: TF_ENABLE_ONEDNN_OPTS=1 (set by mtkd_tf: TensorFlow leaves oneDNN off on this CPU)"
    )
