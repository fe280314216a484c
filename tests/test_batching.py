import collections

import numpy as np
import pytest

from mtkd_tf.data import batching
from mtkd_tf.data.preprocessing import Preprocessor, load_tokenizer
from mtkd_tf.data.readers import SplitData
from mtkd_tf.data.tasks import GLUE_TASKS

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(50)]


def _split(name, size):
    task = GLUE_TASKS[name]
    rng = np.random.default_rng(len(name))
    texts = [" ".join(f"w{j}" for j in rng.integers(0, 50, rng.integers(2, 9))) for _ in range(size)]
    labels = (
        rng.integers(0, task.num_classes, size).astype(np.int32)
        if task.labels
        else rng.uniform(0, 5, size).astype(np.float32)
    )
    return SplitData(
        task, "train", [f"{name}/train/{i}" for i in range(size)], texts, texts if task.is_pair else None, labels
    )


def test_schedule_proportional_sees_every_batch_once_per_epoch():
    schedule = batching.batch_schedule([5, 2, 3], epochs=4, seed=1)
    assert len(schedule) == 40
    for epoch in schedule.reshape(4, 10):
        assert collections.Counter(epoch.tolist()) == {0: 5, 1: 2, 2: 3}
    assert not np.array_equal(schedule[:10], schedule[10:20])  # reshuffled every epoch


def test_schedule_temperature_and_uniform_proportions():
    counts = [90, 10]
    hot = batching.batch_schedule(counts, epochs=50, sampling="temperature", temperature=0.5, seed=0)
    share = np.mean(hot == 1)
    expected = 10**0.5 / (90**0.5 + 10**0.5)
    assert abs(share - expected) < 0.02
    uniform = batching.batch_schedule(counts, epochs=50, sampling="uniform", seed=0)
    assert abs(np.mean(uniform == 1) - 0.5) < 0.02
    with pytest.raises(ValueError, match="task sampling 'random'"):
        batching.batch_schedule(counts, 1, sampling="random")


def test_multitask_batches_are_homogeneous_and_cover_each_task_once_per_epoch():
    pre = Preprocessor(load_tokenizer(VOCAB), 32)
    splits = [_split("sst2", 37), _split("rte", 20), _split("stsb", 9)]
    batch_size = 8
    datasets = [batching.task_dataset(d, i, pre, batch_size, seed=i) for i, d in enumerate(splits)]
    counts = [batching.num_batches(len(d), batch_size) for d in splits]
    assert counts == [5, 3, 2]
    schedule = batching.batch_schedule(counts, epochs=2, seed=3)
    dataset = batching.multitask_dataset(datasets, schedule)
    seen = collections.defaultdict(list)
    for step, (x, _y) in enumerate(dataset.take(len(schedule))):
        task_ids = x["task_id"].numpy()
        assert len(set(task_ids)) == 1 and task_ids[0] == schedule[step]
        assert x["token_ids"].shape == x["segment_ids"].shape == x["padding_mask"].shape
        assert x["token_ids"].shape[1] % pre.pad_to_multiple_of == 0
        seen[(step // 10, int(task_ids[0]))].append(len(task_ids))
        if task_ids[0] == 1:
            assert x["segment_ids"].numpy().max() == 1  # pairs
    for epoch in range(2):
        for task_id, split in enumerate(splits):
            assert sum(seen[(epoch, task_id)]) == len(split)  # every example once per epoch


def test_targets_join_y_and_inference_keeps_order():
    pre = Preprocessor(load_tokenizer(VOCAB), 32, pad_to_multiple_of=0)
    split = _split("rte", 10)
    soft = np.tile([[0.25, 0.75]], (10, 1))
    x, y = next(iter(batching.task_dataset(split, 0, pre, 4, targets={"soft": soft}, shuffle=False)))
    assert y["soft"].shape == (4, 2) and np.allclose(y["soft"].numpy(), 0.25 * np.array([1, 3]))
    assert np.array_equal(y["label"].numpy(), split.labels[:4].astype(np.float32))
    with pytest.raises(ValueError, match="soft: 3 rows for 10 examples"):
        batching.task_dataset(split, 0, pre, 4, targets={"soft": soft[:3]})
    rows = np.concatenate([batch["token_ids"].numpy() for batch in batching.inference_dataset(split, pre, 3)])
    expected = pre.pack(*pre.tokenize(np.array(split.text_a), np.array(split.text_b)))["token_ids"].numpy()
    assert np.array_equal(rows, expected)


def test_length_bucketing_keeps_each_pass_a_permutation_and_batches_similar_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 120, 203)
    orders = batching.pass_orders(203, 3, seed=5)
    bucketed = batching.bucket_by_length(orders, lengths, per_batch=8, window_batches=50, seed=5)
    for before, after in zip(orders, bucketed, strict=True):
        assert sorted(after.tolist()) == list(range(203))  # every example once per pass
        assert np.array_equal(after[200:], before[200:])  # the partial batch stays last
    spread = lambda order: np.mean([np.ptp(lengths[b]) for b in order[:200].reshape(-1, 8)])  # noqa: E731
    assert spread(bucketed[0]) < 0.2 * spread(orders[0])
    assert not np.array_equal(bucketed[0], bucketed[1])  # batches differ between passes
    assert np.array_equal(bucketed, batching.bucket_by_length(orders, lengths, 8, 50, seed=5))  # seeded


def test_length_bucketing_pads_less_and_covers_every_example():
    pre = Preprocessor(load_tokenizer(VOCAB), 64, pad_to_multiple_of=4)
    rng = np.random.default_rng(1)
    texts = [" ".join(f"w{j}" for j in rng.integers(0, 50, n)) for n in rng.integers(1, 60, 96)]
    split = SplitData(
        GLUE_TASKS["sst2"],
        "train",
        [f"sst2/train/{i}" for i in range(96)],
        texts,
        None,
        rng.integers(0, 2, 96).astype(np.int32),
    )

    def padded_tokens(bucketing):
        batches = list(batching.task_dataset(split, 0, pre, 8, seed=2, length_bucketing=bucketing).take(12))
        labels = sorted(np.concatenate([y["label"].numpy() for _, y in batches]).tolist())
        return sum(int(np.prod(x["token_ids"].shape)) for x, _ in batches), labels

    plain, labels_plain = padded_tokens(False)
    bucketed, labels_bucketed = padded_tokens(True)
    assert labels_plain == labels_bucketed  # the same examples, differently batched
    assert bucketed < 0.7 * plain


def test_inference_in_length_order_pads_less_and_covers_every_example():
    pre = Preprocessor(load_tokenizer(VOCAB), 32, pad_to_multiple_of=1)
    split = _split("sst2", 40)
    tokens = batching.tokenize_all(split, pre)
    order = batching.length_order(tokens)
    lengths = batching.token_lengths(tokens)
    assert np.all(np.diff(lengths[order]) >= 0) and sorted(order) == list(range(40))

    def padded_and_rows(dataset):
        batches = [batch["token_ids"].numpy() for batch in dataset]
        return sum(b.size for b in batches), [row[row != 0].tolist() for b in batches for row in b]

    sorted_cells, sorted_rows = padded_and_rows(batching.inference_dataset(split, pre, 8, order, tokens))
    plain_cells, plain_rows = padded_and_rows(batching.inference_dataset(split, pre, 8))
    assert sorted_rows == [plain_rows[i] for i in order]  # the same examples, in `order`
    assert sorted_cells < 0.8 * plain_cells


def test_token_budget_batches_grow_for_short_texts_and_respect_the_budget():
    from mtkd_tf.data.batching import budget_batches

    class Pre:  # what budget_batches reads of a Preprocessor
        sequence_length, pad_to_multiple_of = 128, 16

    lengths = np.array([5] * 300 + [60] * 40 + [200] * 10)  # sorted by length, as inference orders them
    sizes = budget_batches(lengths, 32, 32 * 128, Pre())
    assert sizes.sum() == len(lengths) and (sizes >= 1).all()
    assert sizes[0] > 32  # short texts: more than batch_size per batch (16-wide -> up to 256)
    start = 0
    for size in sizes:
        width = -(-min(int(lengths[start : start + size].max()) + 3, 128) // 16) * 16
        assert size <= 32 or size * width <= 32 * 128  # beyond batch_size only within the budget
        start += size
    assert sizes[-1] <= 32  # the batch with full-length examples: at most batch_size
