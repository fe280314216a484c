"""The Distiller's loss terms (`distill.terms`): each term against numpy, the registry, a new
term summed by the Distiller, and the Distiller's config round trip with its terms."""

import io
import types

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from mtkd_tf.config import DistillationConfig
from mtkd_tf.data.tasks import GLUE_TASKS
from mtkd_tf.distill import terms
from mtkd_tf.distill.distiller import Distiller
from mtkd_tf.distill.terms import Batch, HardLoss, HiddenStateLoss, LossTerm, SoftLoss
from mtkd_tf.errors import ConfigError
from mtkd_tf.models.mtdnn import MTDNN
from mtkd_tf.training import checkpointing

TASKS = [GLUE_TASKS["rte"], GLUE_TASKS["stsb"]]  # 2-class classification, regression

LOG_P = np.log(np.array([[0.7, 0.3], [0.2, 0.8], [0.5, 0.5], [0.9, 0.1]], np.float32))
SCORES = np.array([1.0, 3.5, 2.0, 4.0], np.float32)
LABELS = {0: np.array([0, 1, 1, 0], np.float32), 1: np.array([1.5, 2.5, 2.0, 5.0], np.float32)}
SOFT = np.array([[0.6, 0.4], [0.1, 0.9], [0.3, 0.7], [0.8, 0.2]], np.float32)  # cached teacher targets
LABEL_MASK = np.array([1, 1, 0, 1], np.float32)  # row 2 is unlabelled text
SOFT_MASK = np.array([1, 1, 1, 0], np.float32)  # row 3 has no teacher target


class _Stub:
    """What the terms read from a Distiller, without the models: tasks, masks, the soft term's mix."""

    def __init__(self, soft=None, teacher_tasks=("rte", "stsb")):
        self.student = types.SimpleNamespace(tasks=TASKS)
        self.teachers = []
        self.width = 2
        self.has_teacher = tf.constant([float(t.name in teacher_tasks) for t in TASKS])
        self.soft = soft
        if soft is not None:
            soft.bind(self)

    def mix_weights(self, batch):
        return self.soft.mix_weights(batch)


def _batch(distiller, task_id, soft=SOFT):
    y = {
        "label": tf.constant(LABELS[task_id]),
        "soft": tf.constant(soft if task_id == 0 else np.stack([[2.0, 3.0, 1.0, 4.5], np.zeros(4)], 1), tf.float32),
        "soft_mask": tf.constant(SOFT_MASK),
        "label_mask": tf.constant(LABEL_MASK),
    }
    outputs = {"rte": tf.constant(LOG_P), "stsb": tf.constant(SCORES)}
    return Batch(distiller, {}, tf.constant(task_id), y, False, outputs)


def _weights(alpha):
    """Hand-written mix: labelled with a target (1 - a, a), without (1, 0), unlabelled (0, 1)."""
    hard = np.where(LABEL_MASK > 0, np.where(SOFT_MASK > 0, 1 - alpha, 1.0), 0.0)
    soft = np.where(SOFT_MASK > 0, np.where(LABEL_MASK > 0, alpha, 1.0), 0.0)
    return hard, soft


@pytest.mark.parametrize("task_id", [0, 1])
def test_hard_loss_is_the_task_loss_at_the_hard_weight(task_id):
    soft = SoftLoss(alpha=0.3)
    batch = _batch(_Stub(soft), task_id)
    expected = -LOG_P[np.arange(4), LABELS[0].astype(int)] if task_id == 0 else (SCORES - LABELS[1]) ** 2
    np.testing.assert_allclose(HardLoss()(batch).numpy(), _weights(0.3)[0] * expected, rtol=1e-6)


@pytest.mark.parametrize("kind", ["ce", "kl", "mse"])
def test_soft_loss_matches_numpy_at_temperature(kind):
    T, alpha = 2.0, 0.4
    soft = SoftLoss(alpha=alpha, temperature=T, kind=kind)
    p_t = np.exp(LOG_P / T) / np.exp(LOG_P / T).sum(1, keepdims=True)
    per_row = {
        "ce": -(SOFT * np.log(p_t)).sum(1),
        "kl": (SOFT * (np.log(SOFT) - np.log(p_t))).sum(1),
        "mse": ((np.log(p_t) - np.log(SOFT)) ** 2).mean(1),
    }[kind] * T**2
    np.testing.assert_allclose(soft(_batch(_Stub(soft), 0)).numpy(), _weights(alpha)[1] * per_row, rtol=1e-5, atol=1e-6)
    regression = (SCORES - np.array([2.0, 3.0, 1.0, 4.5])) ** 2  # squared error to the teachers' mean score
    np.testing.assert_allclose(soft(_batch(_Stub(soft), 1)).numpy(), _weights(alpha)[1] * regression, rtol=1e-6)


def test_soft_loss_task_alpha_and_tasks_without_a_teacher():
    soft = SoftLoss(alpha=0.5, task_alpha={"stsb": 0.2})
    stub = _Stub(soft, teacher_tasks=("stsb",))
    hard_weight, soft_weight = _batch(stub, 0).mix()  # rte has no teacher: hard labels only
    np.testing.assert_array_equal(hard_weight.numpy(), LABEL_MASK)
    np.testing.assert_array_equal(soft_weight.numpy(), np.zeros(4))
    hard_weight, soft_weight = _batch(stub, 1).mix()
    np.testing.assert_allclose(hard_weight.numpy(), _weights(0.2)[0], rtol=1e-6)
    np.testing.assert_allclose(soft_weight.numpy(), _weights(0.2)[1], rtol=1e-6)


def test_hidden_state_loss_is_weighted_mse_of_the_projected_cls_vector():
    rng = np.random.default_rng(0)
    term = HiddenStateLoss(weight=0.25)
    stub = types.SimpleNamespace(
        teachers=[types.SimpleNamespace(encoder=types.SimpleNamespace(hidden_dim=4))],
        student=types.SimpleNamespace(encoder=types.SimpleNamespace(hidden_dim=3)),
    )
    term.bind(stub)
    assert term.projection.kernel.shape == (3, 4) and set(term.layers()) == {"projection"}
    student = rng.normal(size=(5, 3)).astype(np.float32)
    teachers = [rng.normal(size=(5, 4)).astype(np.float32) for _ in range(2)]
    batch = Batch(stub, {}, tf.constant(0), {}, True, {"pooled_output": tf.constant(student)})
    batch.teacher_outputs = [{"pooled_output": tf.constant(t)} for t in teachers]
    kernel, bias = term.projection.kernel.numpy(), term.projection.bias.numpy()
    expected = 0.25 * ((student @ kernel + bias - (teachers[0] + teachers[1]) / 2) ** 2).mean(1)
    np.testing.assert_allclose(term(batch).numpy(), expected, rtol=1e-5)


def test_terms_check_their_own_settings_once_for_the_config_and_the_distiller():
    with pytest.raises(ConfigError, match=r"alpha must be in \[0, 1\], got 1.5"):
        SoftLoss(alpha=1.5)
    with pytest.raises(ConfigError, match="soft_loss 'hinge' is not one of ce, kl, mse"):
        SoftLoss(kind="hinge")
    with pytest.raises(ConfigError, match="hidden_loss_weight must be >= 0"):
        HiddenStateLoss(-1.0)
    with pytest.raises(ConfigError, match="temperature must be > 0"):  # the config validates through the terms
        DistillationConfig(temperature=0.0).validate()
    with pytest.raises(ConfigError, match="hidden-state loss needs online teachers"):
        HiddenStateLoss(1.0).bind(types.SimpleNamespace(teachers=[]))
    mapped = terms.loss_terms(DistillationConfig(alpha=0.2, soft_loss="kl", hidden_loss_weight=0.5), total_steps=7)
    assert [type(t) for t in mapped] == [HardLoss, SoftLoss, HiddenStateLoss]
    assert mapped[1].get_config() == {
        "alpha": 0.2,
        "task_alpha": {},
        "temperature": 1.0,
        "kind": "kl",
        "alpha_schedule": "constant",
        "total_steps": 7,
    }
    assert [type(t) for t in terms.loss_terms(DistillationConfig())] == [HardLoss, SoftLoss]


def test_the_registry_names_every_term_and_rejects_unknown_names(monkeypatch):
    assert terms.get_loss_term("hard") is HardLoss and terms.get_loss_term("hidden") is HiddenStateLoss
    with pytest.raises(ConfigError, match=r"unknown loss term 'attention_kl'; registered: hard, hidden, soft"):
        terms.get_loss_term("attention_kl")
    with pytest.raises(ConfigError, match="unknown loss term 'nope'"):
        terms.deserialize_loss_term({"name": "nope", "config": {}})
    monkeypatch.setattr(terms, "_REGISTRY", dict(terms._REGISTRY))
    with pytest.raises(ValueError, match="'soft' is already registered as SoftLoss"):
        terms.register_loss_term("soft")(type("OtherSoft", (LossTerm,), {}))
    with pytest.raises(TypeError, match="is not a LossTerm subclass"):
        terms.register_loss_term("plain")(object)
    round_trip = terms.deserialize_loss_term(terms.serialize_loss_term(SoftLoss(0.1, {"rte": 0.9}, 2.0, "mse")))
    assert (
        isinstance(round_trip, SoftLoss)
        and round_trip.get_config() == SoftLoss(0.1, {"rte": 0.9}, 2.0, "mse").get_config()
    )
    # keras-serializable too
    assert (
        keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(HiddenStateLoss(0.5))).weight == 0.5
    )


# --- with a real Distiller ----------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tiny_encoder_factory):
    def make(seed):
        keras.utils.set_random_seed(seed)
        return MTDNN(tiny_encoder_factory(seed=seed).backbone, TASKS)

    return make(0), make(1)


def _real_batch():
    rng = np.random.default_rng(0)
    x = {
        "token_ids": tf.constant(rng.integers(5, 100, size=(4, 12)), tf.int32),
        "segment_ids": tf.zeros((4, 12), tf.int32),
        "padding_mask": tf.ones((4, 12), tf.bool),
        "task_id": tf.zeros(4, tf.int32),
    }
    y = {
        "label": tf.constant(LABELS[0]),
        "soft": tf.constant(SOFT),
        "soft_mask": tf.constant(SOFT_MASK),
        "label_mask": tf.constant(LABEL_MASK),
    }
    return x, y


def test_a_new_registered_term_is_summed_and_logged_by_the_distiller(models, monkeypatch):
    monkeypatch.setattr(terms, "_REGISTRY", dict(terms._REGISTRY))

    @terms.register_loss_term("test_constant")
    class ConstantLoss(LossTerm):
        """`weight` for every example: a term that only the test knows."""

        def __init__(self, weight: float = 1.0):
            self.weight = weight

        def __call__(self, batch):
            return tf.fill(tf.shape(batch.y["label"]), self.weight)

        def get_config(self):
            return {"weight": self.weight}

    student, _ = models
    distiller = Distiller(student, [HardLoss(), SoftLoss(alpha=0.3), ConstantLoss(0.125)])
    losses, _ = distiller.compute_losses(*_real_batch(), training=False)
    assert list(losses) == ["loss", "hard", "soft", "test_constant"]
    np.testing.assert_array_equal(losses["test_constant"].numpy(), np.full(4, 0.125, np.float32))
    expected = (losses["hard"] + losses["soft"]) + losses["test_constant"]  # the terms' order
    np.testing.assert_array_equal(losses["loss"].numpy(), expected.numpy())
    reference, _ = Distiller(student, alpha=0.3).compute_losses(*_real_batch(), training=False)
    np.testing.assert_array_equal(losses["hard"].numpy(), reference["hard"].numpy())
    assert "test_constant_loss" in {m.name for m in distiller.metrics}
    restored = Distiller.from_config(distiller.get_config())
    assert isinstance(restored.terms[2], ConstantLoss) and restored.terms[2].weight == 0.125


def test_distiller_config_round_trips_its_terms_and_keeps_the_checkpoint_layout(models):
    student, teacher = models
    settings = DistillationConfig(
        alpha=0.2, task_alpha={"stsb": 0.7}, temperature=2.0, soft_loss="kl", online_teachers=True,
        hidden_loss_weight=0.5,
    )  # fmt: skip
    distiller = Distiller.from_settings(settings, student, teachers=[teacher], teacher_tasks=["rte"], total_steps=9)
    config = distiller.get_config()
    assert [t["name"] for t in config["terms"]] == ["hard", "soft", "hidden"]
    restored = Distiller.from_config(config)
    assert [type(t) for t in restored.terms] == [HardLoss, SoftLoss, HiddenStateLoss]
    assert [t.get_config() for t in restored.terms] == [t.get_config() for t in distiller.terms]
    assert restored.teacher_tasks == ("rte",) and restored.get_config()["terms"] == config["terms"]
    # the variables are tracked as before terms existed: student, teacher, features models, then
    # the projection as the Distiller's own Dense layer, so older training checkpoints restore
    assert [type(layer).__name__ for layer in distiller.layers] == [
        "MTDNN",
        "MTDNN",
        "Functional",
        "Functional",
        "Dense",
    ]
    assert distiller.projection is distiller.terms[2].projection
    assert [v.path for v in distiller.trainable_variables][-2:] == [
        "hidden_projection/kernel",
        "hidden_projection/bias",
    ]
    with h5py.File(io.BytesIO(checkpointing._weights_file(distiller)), "r") as stored:
        assert stored["layers/dense/vars/0"].shape == (64, 64)
    with pytest.raises(ConfigError, match="terms or settings, not both"):
        Distiller(student, [HardLoss()], alpha=0.3)
    with pytest.raises(ConfigError, match=r"distinct names, got \['hard', 'hard'\]"):  # each is a logged part
        Distiller(student, [HardLoss(), HardLoss()])
    with pytest.raises(ConfigError, match="distinct names, got"):
        Distiller(student, [])
