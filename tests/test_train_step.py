"""The shared train step's gradient clipping (Keras's global-norm rule, without densifying) and
the optimizer it applies (Adamax with the reference's decoupled weight decay)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mtkd_tf.models import train_step


def _gradients():
    rng = np.random.default_rng(0)
    dense = tf.constant(rng.normal(size=(4, 3)), tf.float32)
    rows = tf.constant(rng.normal(size=(5, 3)), tf.float32)
    sparse = tf.IndexedSlices(rows, tf.constant([7, 2, 7, 0, 2]), tf.constant([10, 3]))  # rows repeat
    return [dense, None, sparse]


def test_clip_matches_keras_on_the_merged_gradient_and_keeps_rows_sparse():
    gradients = _gradients()
    optimizer = keras.optimizers.SGD(0.1, global_clipnorm=0.5)
    clipped = train_step.clip_across_replicas(gradients, optimizer)
    assert clipped[1] is None
    assert isinstance(clipped[2], tf.IndexedSlices)  # the embedding gradient is never expanded
    assert len(np.unique(clipped[2].indices.numpy())) == len(clipped[2].indices)  # duplicates merged
    dense = [tf.convert_to_tensor(g) for g in (gradients[0], gradients[2])]
    expected = keras.src.optimizers.base_optimizer.clip_by_global_norm(dense, 0.5)
    np.testing.assert_allclose(clipped[0].numpy(), expected[0].numpy(), rtol=1e-6)
    np.testing.assert_allclose(tf.convert_to_tensor(clipped[2]).numpy(), expected[1].numpy(), rtol=1e-6, atol=1e-7)
    norm = np.sqrt(sum(np.sum(tf.convert_to_tensor(g).numpy() ** 2) for g in clipped if g is not None))
    assert abs(norm - 0.5) < 1e-5


def test_clip_below_the_threshold_changes_nothing_and_nan_propagates():
    gradients = _gradients()
    clipped = train_step.clip_by_global_norm(gradients, 1e6)
    np.testing.assert_allclose(clipped[0].numpy(), gradients[0].numpy(), rtol=1e-6)
    broken = [tf.constant([np.inf, 1.0])]
    assert np.isnan(train_step.clip_by_global_norm(broken, 1.0)[0].numpy()).all()  # as Keras: a bad step is visible


def test_the_optimizer_does_not_clip_again_and_keeps_its_setting():
    optimizer = keras.optimizers.SGD(1.0, global_clipnorm=1.0)
    variable = keras.Variable(np.zeros(2, np.float32))
    optimizer.build([variable])
    with train_step.optimizer_clipping_off(optimizer):
        optimizer.apply_gradients([(tf.constant([30.0, 40.0]), variable)])  # norm 50, already "clipped" upstream
    np.testing.assert_allclose(variable.numpy(), [-30.0, -40.0])
    assert optimizer.global_clipnorm == 1.0


@pytest.mark.parametrize("name", ["adamax", "adamax_fused"])
def test_adamax_weight_decay_is_decoupled_as_in_the_reference(name):
    from mtkd_tf.training import train as training

    config = training.TrainingConfig(
        optimizer=name, learning_rate=0.1, warmup_fraction=0.0, weight_decay=0.01, clipnorm=0.0
    )
    optimizer = training.make_optimizer(config, total_steps=1000)
    w0, g = np.array([2.0, -3.0], np.float32), np.array([0.5, -4.0], np.float32)
    variable = keras.Variable(w0)
    optimizer.build([variable])
    optimizer.apply_gradients([(tf.constant(g), variable)])
    lr = 0.1  # step 0 of a linear decay over 1000 steps without warm-up
    m, u = 0.1 * g, np.abs(g)  # (1 - b1) g, max(b2 * 0, |g|)
    expected = w0 - lr * 0.01 * w0 - lr * m / ((1 - 0.9) * (u + 1e-7))
    np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-6)
