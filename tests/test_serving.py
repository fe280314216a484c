"""The exported model under concurrent use (issue 31, item 6): one SavedModel, loaded once as TF
Serving would, called from 8 threads with mixed tasks and lengths, answers exactly as sequential
calls do; malformed requests get clear errors and leave it serving."""

import base64
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tensorflow as tf

from mtkd_tf.export import saved_model as export

THREADS = 8
WORDS = ["the", "film", "dog", "great", "bad", "story", "acting", "dull", "plot", "ça", "🎬", "Ünïcödé", "日本語", "a"]
PAIRS = {"sst2": False, "serving_default": False, "rte": True, "stsb": True}  # serving_default: sst2


def mixed_requests(count: int = 64, seed: int = 0) -> list[tuple[str, dict[str, list[str]]]]:
    """Requests over every signature, of 1-4 texts each, from empty to far beyond max_seq_length."""
    rng = np.random.default_rng(seed)

    def text():
        return " ".join(rng.choice(WORDS, int(rng.choice([0, 1, 3, 10, 40, 300]))))

    requests = []
    for number in range(count):
        name = sorted(PAIRS)[number % len(PAIRS)]
        rows = int(rng.integers(1, 5))
        inputs = {"sentence1": [text() for _ in range(rows)]}
        if PAIRS[name]:
            inputs["sentence2"] = [text() for _ in range(rows)]
        requests.append((name, inputs))
    return requests


def call(served, name: str, inputs: dict) -> dict[str, np.ndarray]:
    outputs = served.signatures[name](**{key: tf.constant(values) for key, values in inputs.items()})
    return {key: value.numpy() for key, value in outputs.items()}


MALFORMED = [  # (signature, inputs, the error's message): refused inside the graph, whoever calls it
    ("sst2", {"sentence1": [b"fine", b"caf\xc3"]}, r"sentence1 holds bytes that are not UTF-8 in row\(s\)\] \[1\]"),
    ("rte", {"sentence1": ["a", "b"], "sentence2": ["c"]}, r"sentence1 and sentence2 must have as many rows"),
    ("sst2", {"sentence1": [["a", "b"], ["c", "d"]]}, r"sentence1 must be a list of strings, one per example"),
    ("rte", {"sentence1": [["a"], ["b"]], "sentence2": ["c", "d"]}, r"sentence1 must be a list of strings, one per"),
    ("stsb", {"sentence1": "a", "sentence2": "b"}, r"must be a list of strings, one per example"),
    ("sst2", {"sentence1": [1.5]}, r"expected to be a string tensor but is a float tensor"),
]


def test_eight_threads_answer_exactly_as_sequential_calls(served):
    requests = mixed_requests()
    sequential = [call(served, name, inputs) for name, inputs in requests]
    rows = {
        (name, *texts): float(answer["probabilities"][row, 0] if "probabilities" in answer else answer["score"][row])
        for (name, inputs), answer in zip(requests, sequential, strict=True)
        for row, texts in enumerate(zip(*inputs.values(), strict=True))
    }
    assert len(set(rows.values())) > 0.9 * len(rows)  # other texts, other answers: a mix-up would show

    # Each thread sends its share of the requests and of the malformed ones, all starting together.
    work = [("good", i) for i in np.random.default_rng(1).permutation(len(requests))]
    work += [("bad", i) for i in range(len(MALFORMED))] * 2
    shares = [work[k::THREADS] for k in range(THREADS)]
    start, spans, answers, refusals = threading.Barrier(THREADS), [], {}, []

    def serve(share):
        start.wait()
        for kind, i in share:
            began = time.perf_counter()
            if kind == "good":
                answers[i] = call(served, *requests[i])
            else:
                name, inputs, message = MALFORMED[i]
                with pytest.raises(tf.errors.InvalidArgumentError, match=message):
                    call(served, name, inputs)
                refusals.append(i)
            spans.append((began, time.perf_counter()))

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(serve, shares))  # re-raises a thread's failure

    assert sorted(answers) == list(range(len(requests))) and len(refusals) == 2 * len(MALFORMED)
    for i, expected in enumerate(sequential):
        assert answers[i].keys() == expected.keys()
        for key in expected:  # bit for bit, not within a tolerance
            np.testing.assert_array_equal(
                answers[i][key], expected[key], err_msg=f"request {i} ({requests[i][0]}) {key}"
            )
    # the calls did overlap (TensorFlow releases the GIL while it runs a signature)
    events = sorted([(began, 1) for began, _ in spans] + [(ended, -1) for _, ended in spans])
    assert max(np.cumsum([step for _, step in events])) >= 2


def test_malformed_requests_get_clear_errors_and_leave_the_model_serving(served):
    normal = {"signature_name": "rte", "instances": [{"sentence1": "the film was great", "sentence2": "a dog"}]}
    reference = export.answer(served, normal)

    def still_serving():
        assert export.answer(served, normal) == reference

    # an unknown task
    with pytest.raises(
        export.ExportError, match=r"no signature 'nope'; the export has rte, serving_default, sst2, stsb"
    ):
        export.answer(served, {"signature_name": "nope", "instances": ["a film"]})
    assert "nope" not in served.signatures
    still_serving()

    # an empty string: a valid text, predicted from [CLS] [SEP] alone
    empty = export.answer(served, {"signature_name": "sst2", "instances": ["", "a film"]})["predictions"]
    assert len(empty) == 2 and abs(sum(empty[0]["probabilities"]) - 1) < 1e-5 and empty[0]["label"] in ("0", "1")
    pair = export.answer(served, {"signature_name": "stsb", "inputs": {"sentence1": [""], "sentence2": [""]}})
    assert np.isfinite(pair["outputs"]["score"]).all()
    assert export.answer(served, {"signature_name": "sst2", "instances": []}) == {"predictions": []}
    still_serving()

    # a 100,000-character string: truncated to max_seq_length tokens, so answered as its beginning is
    long_text = "the film was great but " * 4348  # 100,004 characters
    began = time.perf_counter()
    long_answer = export.answer(served, {"signature_name": "sst2", "instances": [long_text[:100_000]]})
    assert time.perf_counter() - began < 30
    assert long_answer == export.answer(served, {"signature_name": "sst2", "instances": [long_text[:2000]]})
    assert (
        len(
            export.answer(
                served,
                {"signature_name": "rte", "instances": [{"sentence1": "x" * 100_000, "sentence2": "日" * 100_000}]},
            )["predictions"]
        )
        == 1
    )
    still_serving()

    # bytes that are not UTF-8: refused in the graph (TF Serving's {"b64": ...} carries them in JSON)
    bad = base64.b64encode(b"caf\xc3").decode()
    with pytest.raises(
        export.ExportError, match=r"refused the request: sentence1 holds bytes that are not UTF-8 in row\(s\) \[1\]"
    ):
        export.answer(served, {"signature_name": "sst2", "instances": ["fine", {"b64": bad}]})
    with pytest.raises(export.ExportError, match=r"instances\[0\].sentence2 is not valid Unicode text"):
        export.answer(served, {"signature_name": "rte", "instances": [{"sentence1": "a", "sentence2": "\ud800"}]})
    fine = base64.b64encode("café".encode()).decode()
    assert export.answer(served, {"signature_name": "sst2", "instances": [{"b64": fine}]}) == export.answer(
        served, {"signature_name": "sst2", "instances": ["café"]}
    )
    still_serving()

    # a wrong type: a number or a nested list instead of a string, rows of other lengths
    with pytest.raises(export.ExportError, match=r"instances\[0\].sentence1 must be a string .*got a number"):
        export.answer(served, {"signature_name": "sst2", "instances": [3]})
    with pytest.raises(export.ExportError, match=r"instances\[1\].sentence1 must be a string .*got a list"):
        export.answer(served, {"signature_name": "sst2", "instances": ["a", ["b", "c"]]})
    with pytest.raises(export.ExportError, match=r"inputs: sentence1 has 2 rows and sentence2 has 1 rows"):
        export.answer(served, {"signature_name": "rte", "inputs": {"sentence1": ["a", "b"], "sentence2": ["c"]}})
    with pytest.raises(export.ExportError, match=r"the request body must be a JSON object, got a list"):
        export.answer(served, [{"sentence1": "a"}])
    still_serving()

    # the same requests straight to the signatures, as TF Serving passes them on
    for name, inputs, message in MALFORMED:
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            call(served, name, inputs)
        still_serving()
