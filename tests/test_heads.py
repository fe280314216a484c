"""The paper's task-specific layers: the SAN answer module and the pairwise ranking head."""

import dataclasses
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from mtkd_tf.config import TrainingConfig
from mtkd_tf.data import ranking, readers
from mtkd_tf.data.preprocessing import Preprocessor, load_tokenizer
from mtkd_tf.data.suites import write_ranking_sample
from mtkd_tf.data.tasks import GLUE_TASKS, TaskError, load_task_file, with_answer_modules
from mtkd_tf.models.evaluation import evaluate
from mtkd_tf.models.losses import hard_loss, ranking_loss, soft_loss
from mtkd_tf.models.mtdnn import MTDNN
from mtkd_tf.models.san import SANAnswerModule
from mtkd_tf.training.train import make_optimizer, training_data

# --- SAN ------------------------------------------------------------------------------


def _memories(batch=6, length=12, hidden=16, seed=0):
    """Random token vectors with premise (segment 0), hypothesis (segment 1) and padding."""
    rng = np.random.default_rng(seed)
    segments = np.zeros((batch, length), np.int32)
    padding = np.zeros((batch, length), np.int32)
    for row in range(batch):
        premise, hypothesis = 2 + row % 4, 2 + row % 3
        segments[row, premise : premise + hypothesis] = 1
        padding[row, : premise + hypothesis] = 1
    return {
        "sequence_output": rng.normal(size=(batch, length, hidden)).astype(np.float32),
        "segment_ids": segments,
        "padding_mask": padding,
    }


def _san(**kwargs):
    keras.utils.set_random_seed(0)
    layer = SANAnswerModule(3, 16, **kwargs)
    layer(_memories())
    return layer


def test_san_outputs_log_probabilities_per_example():
    out = _san()(_memories()).numpy()
    assert out.shape == (6, 3)
    np.testing.assert_allclose(np.exp(out).sum(-1), 1.0, atol=1e-5)


def test_san_inference_is_deterministic_and_averages_the_steps():
    layer = _san(num_steps=5, dropout=0.3)
    inputs = _memories()
    first, second = layer(inputs, training=False).numpy(), layer(inputs, training=False).numpy()
    np.testing.assert_array_equal(first, second)
    steps = layer.step_log_probs(inputs, training=False).numpy()
    assert steps.shape == (6, 5, 3)
    np.testing.assert_allclose(np.exp(first), np.exp(steps).mean(axis=1), atol=1e-6)
    # The steps really differ: the answer is not just one step's prediction.
    assert np.abs(np.exp(steps[:, 0]) - np.exp(steps[:, -1])).max() > 1e-4


def test_step_dropout_keeps_at_least_one_step_per_example():
    layer = _san(num_steps=5, step_dropout=0.1)
    masks = np.concatenate([layer.step_mask(256, training=True).numpy() for _ in range(40)])
    assert (masks.sum(axis=1) < 5).mean() > 0.2  # many rows drop a step ...
    assert masks.sum(axis=1).min() >= 1.0  # ... but never all of them
    assert 0.85 < masks.mean() < 0.95  # about 1 - 0.1 kept, plus the forced step
    harsh = _san(num_steps=5, step_dropout=0.95)
    masks = np.concatenate([harsh.step_mask(256, training=True).numpy() for _ in range(40)])
    assert masks.sum(axis=1).min() == 1.0 and (masks.sum(axis=1) == 1.0).mean() > 0.7
    assert np.all(harsh.step_mask(8, training=False).numpy() == 1.0)


def test_training_output_averages_only_kept_steps():
    layer = _san(num_steps=5, step_dropout=0.5, dropout=0.0)
    inputs = _memories()
    steps = np.exp(layer.step_log_probs(inputs, training=True).numpy())
    outputs = [np.exp(layer(inputs, training=True).numpy()) for _ in range(20)]
    for out in outputs:
        np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)
    # Each output is the mean of a non-empty subset of the steps; dropping varies it.
    assert max(np.abs(o - outputs[0]).max() for o in outputs) > 1e-4
    subsets = [np.array([(m >> k) & 1 for k in range(5)], bool) for m in range(1, 32)]
    for out in outputs[:5]:
        for row in range(6):
            assert min(np.abs(steps[row, s].mean(0) - out[row]).max() for s in subsets) < 1e-5


def test_san_ignores_padding():
    layer = _san()
    inputs = _memories()
    changed = {k: v.copy() for k, v in inputs.items()}
    pad = inputs["padding_mask"] == 0
    changed["sequence_output"][pad] = 100.0
    changed["segment_ids"][pad] = 1
    np.testing.assert_array_equal(layer(inputs).numpy(), layer(changed).numpy())


def test_san_config_round_trip():
    layer = _san(num_steps=3, step_dropout=0.2)
    clone = SANAnswerModule.from_config(layer.get_config())
    clone(_memories())
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(clone(_memories()).numpy(), layer(_memories()).numpy())
    assert clone.num_steps == 3 and clone.step_dropout == 0.2


def test_answer_module_defaults_and_flag():
    assert [GLUE_TASKS[n].answer_module for n in ("mnli", "rte", "wnli", "qqp", "mrpc")] == ["san"] * 5
    assert GLUE_TASKS["sst2"].answer_module == "linear" and GLUE_TASKS["qnli"].answer_module == "linear"
    tasks = [GLUE_TASKS[n] for n in ("rte", "sst2", "qnli")]
    assert [t.answer_module for t in with_answer_modules(tasks, "linear")] == ["linear"] * 3
    assert [t.answer_module for t in with_answer_modules(tasks, ["qnli=san"])] == ["san", "linear", "san"]
    with pytest.raises(TaskError, match="not one of"):
        with_answer_modules(tasks, "lstm")
    with pytest.raises(TaskError, match="not a pair-classification task"):
        with_answer_modules(tasks, ["sst2=san"])
    with pytest.raises(TaskError, match="no task 'cola'"):
        with_answer_modules(tasks, ["cola=san"])


def test_model_with_san_ignores_padded_tokens(tiny_encoder_factory):
    encoder = tiny_encoder_factory(seed=0)
    model = MTDNN(encoder.backbone, [GLUE_TASKS["rte"]])
    pre = Preprocessor(load_tokenizer(encoder.vocabulary), 32, pad_to_multiple_of=32)
    x = pre(tf.constant(["the old film shows a dog", "a story"]), tf.constant(["a dog", "the long story tells"]))
    changed = dict(x)
    changed["token_ids"] = tf.where(x["padding_mask"] == 0, 7, x["token_ids"])
    np.testing.assert_allclose(model(x)["rte"].numpy(), model(changed)["rte"].numpy(), atol=1e-6)


# --- ranking --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rank_task_file(tmp_path_factory):
    return write_ranking_sample(str(tmp_path_factory.mktemp("rank")), questions=48, candidates=4, seed=0)


@pytest.fixture(scope="module")
def rank_task(rank_task_file):
    return load_task_file(rank_task_file)["qa_rank"]


def test_ranking_loss_matches_hand_value(rank_task):
    scores = np.array([2.0, 1.0, 0.0, -1.0, 0.5, 0.0, 3.0, 1.0], np.float32)
    labels = np.array([1, 0, 1, 1, 1, 1, 1, 0], np.int32)  # class 0 = "answer" (positive_label)
    loss = hard_loss(rank_task, tf.constant(scores), tf.constant(labels)).numpy()
    first = -(1.0 - math.log(math.exp(2) + math.exp(1) + 1 + math.exp(-1)))
    second = -(1.0 - math.log(math.exp(0.5) + 1 + math.exp(3) + math.exp(1)))
    np.testing.assert_allclose(loss, [first] * 4 + [second] * 4, rtol=1e-5)
    # gamma scales the relevance scores.
    gamma = ranking_loss(tf.constant(scores), tf.constant(labels == 0), 4, gamma=2.0).numpy()
    np.testing.assert_allclose(gamma[0], -(2.0 - math.log(math.exp(4) + math.exp(2) + 1 + math.exp(-2))), rtol=1e-5)


def test_ranking_soft_loss_is_cross_entropy_over_candidates(rank_task):
    scores = tf.constant([0.0, 1.0, 2.0, 3.0])
    teacher = tf.constant([0.25, 0.25, 0.25, 0.25])  # the teachers' group probabilities
    loss = soft_loss(rank_task, scores, teacher).numpy()
    expected = -np.mean(np.log(np.exp([0, 1, 2, 3]) / np.exp([0, 1, 2, 3]).sum()))
    np.testing.assert_allclose(loss, [expected] * 4, rtol=1e-5)


def test_ranking_reader_groups_candidates(rank_task_file, rank_task):
    data_dir = os.path.dirname(rank_task_file)
    train = readers.load_split(rank_task, "train", data_dir=data_dir)
    assert len(train) == 48 * 4 and len(set(train.ids)) == len(train)
    groups = train.labels.reshape(-1, 4)
    assert np.all(groups[:, 0] == rank_task.positive_index) and np.all(groups[:, 1:] != rank_task.positive_index)
    assert all(len(set(train.text_a[i : i + 4])) == 1 for i in range(0, len(train), 4))
    assert len(train.take(10)) == 12  # never cuts a group
    dev = readers.load_split(rank_task, "dev", data_dir=data_dir)
    assert dev.groups is not None and dev.groups.max() + 1 == 12
    assert len(dev) > 12 * 4 - 1  # the file's rows, uneven groups kept


def test_ranking_reader_skips_questions_without_answer(tmp_path):
    (tmp_path / "qa").mkdir()
    (tmp_path / "qa" / "train.tsv").write_text(
        "q\tc\tl\nwho\ta\thit\nwho\tb\tmiss\nwho\tc\tmiss\nwhy\td\tmiss\nwhy\te\tmiss\nwhat\tf\thit\n"
    )
    (tmp_path / "t.yaml").write_text(
        "tasks:\n- {name: qa, type: ranking, text_columns: [q, c], label_column: l, labels: [hit, miss], "
        "positive_label: hit, group_size: 3, files: {train: train.tsv}}\n"
    )
    task = load_task_file(str(tmp_path / "t.yaml"))["qa"]
    train = readers.load_split(task, "train", data_dir=str(tmp_path))
    assert train.text_b == ["a", "b", "c"]  # 'why' has no answer, 'what' no other candidate
    (tmp_path / "qa" / "train.tsv").write_text("q\tc\tl\nwhy\td\tmiss\n")
    with pytest.raises(readers.DataError, match="no question with both"):
        readers.load_split(task, "train", data_dir=str(tmp_path))


def test_ranking_task_definition_is_checked(tmp_path):
    (tmp_path / "t.yaml").write_text(
        "tasks:\n- {name: qa, type: ranking, text_columns: [q, c], labels: [hit, miss], group_size: 3}\n"
    )
    with pytest.raises(TaskError, match="positive_label"):
        load_task_file(str(tmp_path / "t.yaml"))


def test_ranking_predictions_map_back_to_pairs(rank_task):
    scores = np.array([0.1, 0.9, 0.3, 2.0, -1.0, 0.5, 0.5])
    groups = np.array([0, 0, 0, 1, 1, 2, 2])
    answer, other = rank_task.positive_index, 1 - rank_task.positive_index
    assert ranking.top_candidates(rank_task, scores, groups).tolist() == [
        other,
        answer,
        other,
        answer,
        other,
        answer,
        other,
    ]


def test_ranking_batches_keep_groups_whole(rank_task_file, rank_task, tiny_encoder_factory):
    train = readers.load_split(rank_task, "train", data_dir=os.path.dirname(rank_task_file))
    encoder = tiny_encoder_factory()
    pre = Preprocessor(load_tokenizer(encoder.vocabulary), 32)
    data = training_data([train], pre, TrainingConfig(batch_size=8, epochs=1))
    for _x, y in data.dataset.take(data.steps_per_epoch):
        labels = y["label"].numpy().reshape(-1, 4)
        assert np.all((labels == rank_task.positive_index).sum(axis=1) == 1)
    with pytest.raises(ValueError, match="multiple of 4"):
        training_data([train], pre, TrainingConfig(batch_size=6, epochs=1))


# --- both heads in one multi-task model ------------------------------------------------


@pytest.fixture(scope="module")
def san_and_ranking(rank_task_file, rank_task, glue_dir, tiny_encoder_factory):
    rte = dataclasses.replace(GLUE_TASKS["rte"], dropout=0.0)
    splits = [
        readers.load_split(rte, "train", data_dir=glue_dir),
        readers.load_split(rank_task, "train", data_dir=os.path.dirname(rank_task_file)),
    ]
    encoder = tiny_encoder_factory(seed=0)
    keras.utils.set_random_seed(0)
    model = MTDNN(encoder.backbone, [rte, rank_task])
    pre = Preprocessor(load_tokenizer(encoder.vocabulary), 48)
    return model, pre, splits


def test_san_and_ranking_tasks_train_together(san_and_ranking, tmp_path):
    model, pre, splits = san_and_ranking
    config = TrainingConfig(batch_size=16, epochs=10, learning_rate=5e-3, seed=0)
    data = training_data(splits, pre, config)
    model.compile(optimizer=make_optimizer(config, data.steps_per_epoch * config.epochs))
    history = model.fit(
        data.starting_at(0), epochs=config.epochs, steps_per_epoch=data.steps_per_epoch, verbose=0
    ).history
    for task in ("rte", "qa_rank"):
        losses = history[f"{task}_loss"]
        assert np.mean(losses[-2:]) < 0.85 * losses[0], (task, losses)
    # Dev metrics: ranking predictions are per pair, SAN's are classes.
    data_dir = os.path.dirname(os.path.dirname(splits[1].source))
    dev = {"qa_rank": {"dev": readers.load_split(splits[1].task, "dev", data_dir=data_dir)}}
    model.preprocessor = pre
    results = evaluate(model, dev)
    # computed here from the raw scores: each question's top-scoring candidate is "answer"
    split = dev["qa_rank"]["dev"]
    scores = np.asarray(model.predict_texts("qa_rank", split.text_a, split.text_b)["score"]).reshape(-1)
    positive = split.task.labels.index(split.task.positive_label)
    predicted = np.full(len(split), 1 - positive)
    for question in np.unique(split.groups):
        rows = np.flatnonzero(split.groups == question)
        predicted[rows[np.argmax(scores[rows])]] = positive
    assert results["qa_rank"]["accuracy"] == pytest.approx(np.mean(predicted == split.labels))
    # Saved and reloaded (get_config), the model predicts the same.
    path = str(tmp_path / "model.keras")
    model.save(path)
    clone = keras.saving.load_model(path, compile=False)
    x, _ = next(iter(data.dataset))
    features = {k: x[k] for k in ("token_ids", "segment_ids", "padding_mask")}
    for task in ("rte", "qa_rank"):
        np.testing.assert_allclose(clone(features)[task].numpy(), model(features)[task].numpy(), atol=1e-6)


@pytest.mark.slow  # XLA compiles the per-task switch of the train step: ~80 s on 2 CPU cores
def test_san_and_ranking_under_xla_and_export(san_and_ranking, tmp_path):
    model, pre, splits = san_and_ranking
    config = TrainingConfig(batch_size=8, epochs=1, learning_rate=1e-3)
    static = Preprocessor(pre.tokenizer, 48, pad_to_multiple_of=48)  # one shape: one XLA compile
    data = training_data(splits, static, config)
    model.compile(optimizer=make_optimizer(config, 4), jit_compile=True)
    history = model.fit(data.starting_at(0), epochs=1, steps_per_epoch=3, verbose=0).history
    assert np.isfinite(history["loss"][0])
    x, _ = next(iter(data.dataset))
    features = {k: x[k] for k in ("token_ids", "segment_ids", "padding_mask")}
    path = str(tmp_path / "saved")
    model.export(path, verbose=False)
    loaded = tf.saved_model.load(path)
    served = loaded.serve(features)
    for task in ("rte", "qa_rank"):
        np.testing.assert_allclose(served[task].numpy(), model(features)[task].numpy(), atol=1e-5)


def test_san_and_ranking_heads_in_mixed_precision(rank_task, tiny_encoder_factory, glue_dir):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        encoder = tiny_encoder_factory(seed=0)
        model = MTDNN(encoder.backbone, [GLUE_TASKS["rte"], rank_task])
        pre = Preprocessor(load_tokenizer(encoder.vocabulary), 32)
        x = pre(tf.constant(["which old film", "which dog"] * 2), tf.constant(["the old film shows", "a cat"] * 2))
        outputs = model(x, training=True)
        assert outputs["rte"].dtype == tf.float32 and outputs["qa_rank"].dtype == tf.float32
        np.testing.assert_allclose(np.exp(outputs["rte"].numpy()).sum(-1), 1.0, atol=1e-5)
    finally:
        keras.config.set_dtype_policy(previous)
