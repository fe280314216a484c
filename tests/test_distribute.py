"""tf.distribute beyond one device: multi-worker on loopback, mixed precision, the strategy factory."""

import json
import os
import re
import signal
import socket
import subprocess
import sys

import pytest
from conftest import ROOT, run_cli

from mtkd_tf.training import distribute

TINY_PIPELINE = [
    "--flagfile=configs/tiny.cfg",
    "--mode=pipeline",
    "--tasks=sst2,stsb",
    "--num_teachers=1",
    "--epochs=1",
    "--max_train_examples=48",
    "--max_eval_examples=16",
    "--batch_size=8",
    "--train_baseline=false",
    "--verbose=0",
]


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def test_strategy_factory_names_and_errors(monkeypatch):
    assert distribute.STRATEGIES == ("auto", "default", "one_device", "mirrored", "multi_worker", "tpu")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(distribute.StrategyError, match="TF_CONFIG"):
        distribute.get_strategy("multi_worker")
    with pytest.raises(distribute.StrategyError, match="unknown strategy 'nccl'"):
        distribute.get_strategy("nccl")
    for name in ("TPU_NAME", "COLAB_TPU_ADDR", "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(name, raising=False)
    assert distribute.is_chief(distribute.get_strategy("auto"))  # no TPU, no GPUs here: the default
    # The TPU path (resolver -> connect -> initialize -> TPUStrategy) needs a TPU: not run here.
    assert distribute.worker_dir("/runs/x") == "/runs/x"


def test_multi_worker_coordination_tolerates_a_minute_without_heartbeats():
    """A worker starved of CPU for 10 s (TensorFlow's default) must not abort the cluster."""
    code = (
        "from mtkd_tf.training import distribute\nfrom tensorflow.python.eager import context\n"
        "distribute.configure_coordination_service()\nconfig = context.context().coordination_service\n"
        "print(config.heartbeat_timeout_in_ms, config.service_leader, config.service_type,"
        " [(job.name, job.num_tasks) for job in config.coordinated_job_list])"
    )
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    env = dict(
        os.environ,
        PYTHONPATH=ROOT,
        TF_CPP_MIN_LOG_LEVEL="2",
        TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}),
    )
    found = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert found.stdout.strip().splitlines()[-1] == ("60000 /job:worker/replica:0/task:0 standalone [('worker', 2)]"), (
        found.stderr[-2000:]
    )


@pytest.mark.slow
def test_two_worker_pipeline_on_loopback(tmp_path):
    """MultiWorkerMirroredStrategy over two processes: same weights on both, only the chief writes."""
    from mtkd_tf.data import suites

    suites.suite_dir("glue_sample", 200, seed=0)  # written once, before the workers start
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    model_dir = tmp_path / "mw"
    processes = []
    for index in range(2):
        env = dict(
            os.environ,
            TF_CPP_MIN_LOG_LEVEL="2",
            TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
        )
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    os.path.join(ROOT, "bin", "run"),
                    *TINY_PIPELINE,
                    "--strategy=multi_worker",
                    f"--model_dir={model_dir}",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                cwd=ROOT,
            )
        )
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=480))
    finally:
        for process in processes:
            process.kill()
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err[-3000:]
    digests = [re.findall(r"worker_\d: weights digest (\w+)", err) for _, err in outputs]
    assert len(digests[0]) == 2, outputs[0][1][-2000:]  # the teacher, then the student
    assert digests[0] == digests[1]
    assert (model_dir / "report.json").is_file() and (model_dir / "student" / "model.keras").is_file()
    assert not (model_dir / ".workers").exists()  # worker 1's scratch outputs are gone
    report = json.loads((model_dir / "report.json").read_text())
    assert set(report["results"]) == {"sst2", "stsb"} and "student" in report["rows"]
    # The multi-worker evaluation equals a single-process one of the same student.
    single = run_cli(*TINY_PIPELINE, "--mode=evaluate", "--strategy=default", f"--model_dir={model_dir / 'student'}")
    assert single.returncode == 0, single.stderr[-2000:]
    results = json.loads((model_dir / "student" / "eval_results.json").read_text())
    for task, metrics in results.items():
        for metric, value in metrics.items():
            assert report["results"][task][metric]["student"] == pytest.approx(value, abs=1e-3)  # float noise only


@pytest.mark.slow
def test_mixed_bfloat16_pipeline_on_cpu(tmp_path):
    result = run_cli(*TINY_PIPELINE, "--mixed_precision=mixed_bfloat16", f"--model_dir={tmp_path / 'bf16'}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "bf16" / "report.json").read_text())
    import keras

    # the report's scores are the float32 evaluation of the bfloat16-trained student
    single = run_cli(*TINY_PIPELINE, "--mode=evaluate", f"--model_dir={tmp_path / 'bf16' / 'student'}")
    assert single.returncode == 0, single.stderr[-2000:]
    results = json.loads((tmp_path / "bf16" / "student" / "eval_results.json").read_text())
    assert {(t, m) for t in results for m in results[t]} == {
        ("sst2", "accuracy"),
        ("stsb", "pearson"),
        ("stsb", "spearman"),
    }
    for task, metrics in results.items():
        for metric, value in metrics.items():
            assert report["results"][task][metric]["student"] == pytest.approx(value, abs=1e-6)
    student = keras.saving.load_model(str(tmp_path / "bf16" / "student" / "model.keras"), compile=False)
    assert student.encoder.dtype_policy.name == "mixed_bfloat16"
    assert all(head.dtype_policy.name == "float32" for head in student.heads.values())
    import mtkd_tf as mt

    loaded = mt.load_model(str(tmp_path / "bf16" / "student"))  # evaluation and serving compute in float32
    assert loaded.encoder.dtype_policy.name == "float32" and loaded.preprocessor is not None


def test_static_shapes_for_xla_and_tpu(glue_dir, tiny_encoder_factory):
    """--jit_compile (and TPUs): full batches, every one padded to the full sequence length."""
    from mtkd_tf.config import TrainingConfig
    from mtkd_tf.data import readers
    from mtkd_tf.data.tasks import GLUE_TASKS
    from mtkd_tf.training.train import encoder_preprocessor, static_shapes, training_data

    config = TrainingConfig(batch_size=8, epochs=1, jit_compile=True)
    assert static_shapes(config, None) and not static_shapes(TrainingConfig(), None)
    splits = [readers.load_split(GLUE_TASKS[n], "train", data_dir=glue_dir).take(20) for n in ("sst2", "stsb")]
    pre = encoder_preprocessor(tiny_encoder_factory(), 48, static=True)
    data = training_data(splits, pre, config, drop_remainder=True)
    shapes = {tuple(x["token_ids"].shape) for x, _ in data.dataset.take(data.steps_per_epoch)}
    assert shapes == {(8, 48)}


def test_mixed_float16_scales_the_loss_and_trains(glue_dir, tiny_encoder_factory):
    import keras
    import numpy as np

    from mtkd_tf.config import TrainingConfig
    from mtkd_tf.data import readers
    from mtkd_tf.data.tasks import GLUE_TASKS
    from mtkd_tf.models.mtdnn import MTDNN
    from mtkd_tf.training.train import encoder_preprocessor, make_optimizer, training_data

    previous = keras.config.dtype_policy()
    distribute.set_precision("mixed_float16")
    try:
        encoder = tiny_encoder_factory(seed=0)
        model = MTDNN(encoder.backbone, [GLUE_TASKS["sst2"], GLUE_TASKS["stsb"]])
        splits = [readers.load_split(model.tasks[i], "train", data_dir=glue_dir).take(32) for i in range(2)]
        config = TrainingConfig(batch_size=8, epochs=1, learning_rate=1e-3)
        data = training_data(splits, encoder_preprocessor(encoder, 48), config)
        model.compile(optimizer=make_optimizer(config, data.steps_per_epoch))
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        before = [w.copy() for w in model.get_weights()]
        history = model.fit(data.starting_at(0), epochs=1, steps_per_epoch=data.steps_per_epoch, verbose=0).history
        assert np.isfinite(history["loss"][0])
        assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))
        assert model.encoder.compute_dtype == "float16" and model.heads["sst2"].compute_dtype == "float32"
    finally:
        keras.config.set_dtype_policy(previous)


TINY_TRAIN = [
    "--flagfile=configs/tiny.cfg",
    "--tasks=sst2,stsb",
    "--epochs=2",
    "--max_train_examples=48",
    "--max_eval_examples=16",
    "--batch_size=8",
    "--verbose=0",
    "--checkpoint_every_steps=100",
    "--strategy=multi_worker",
    "--deterministic",
    "--progress_seconds=0.001",
]


def _workers(model_dir):
    """Two `bin/run` workers of one MultiWorkerMirroredStrategy cluster on loopback."""
    from child_runs import Child

    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    return [
        Child(
            [*TINY_TRAIN, f"--model_dir={model_dir}"],
            {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})},
        )
        for index in range(2)
    ]


@pytest.mark.slow
def test_sigterm_to_one_worker_stops_every_worker_at_the_same_step_and_all_resume_from_it(tmp_path):
    """Pre-empting one worker: the workers agree after every step, so both checkpoint the same step
    and exit 143; restarted with the same command, both resume from it and end with equal weights."""
    from mtkd_tf.data import suites

    suites.suite_dir("glue_sample", 200, seed=0)  # written once, before the workers start
    model_dir = tmp_path / "mw"
    chief, worker = _workers(model_dir)
    try:
        worker.wait_for(lambda: worker.logged("MT-DNN: step 4/24"))
        worker.send(signal.SIGTERM)
        statuses = [worker.finish(), chief.finish()]
    finally:
        for child in (chief, worker):
            child.process.kill()
    assert statuses == [143, 143], chief.stderr[-2000:] + worker.stderr[-2000:]
    here = re.search(r"stopped by SIGTERM at global step (\d+) of MT-DNN", worker.stderr)
    there = re.search(
        r"stopped by SIGTERM sent to another worker of this run, at global step (\d+) of MT-DNN", chief.stderr
    )
    assert here and there, chief.stderr[-2000:] + worker.stderr[-2000:]
    step = int(here.group(1))
    assert int(there.group(1)) == step and 4 < step < 24
    backups = [model_dir / "backup", model_dir / ".workers" / "worker_1" / "backup"]
    assert all((backup / f"ckpt-{step}").is_dir() for backup in backups)
    resumed = _workers(model_dir)
    statuses = [child.finish() for child in resumed]
    assert statuses == [0, 0], resumed[0].stderr[-2000:] + resumed[1].stderr[-2000:]
    for child, backup in zip(resumed, backups, strict=True):
        assert f"resuming from {backup}/ckpt-{step}" in child.stderr
    digests = [re.findall(r"worker_\d: weights digest (\w+)", child.stderr) for child in resumed]
    assert len(digests[0]) == 1 and digests[0] == digests[1]
    assert (model_dir / "model.keras").is_file() and not (model_dir / ".workers").exists()
