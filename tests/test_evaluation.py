import numpy as np
import pytest
from scipy import stats

from mtkd_tf.data.tasks import GLUE_TASKS
from mtkd_tf.export import submission
from mtkd_tf.models import evaluation
from mtkd_tf.models.inference import predict_outputs


def test_metrics_against_hand_computed_values():
    labels = np.array([1, 1, 0, 0, 1, 0])
    predictions = np.array([1, 0, 0, 1, 1, 0])
    assert evaluation.accuracy(labels, predictions) == pytest.approx(4 / 6)
    # tp=2 fp=1 fn=1 -> precision = recall = 2/3
    assert evaluation.f1(labels, predictions) == pytest.approx(2 / 3)
    # tp=2 tn=2 fp=1 fn=1 -> (4 - 1) / sqrt(3 * 3 * 3 * 3)
    assert evaluation.matthews_corr(labels, predictions) == pytest.approx(3 / 9)
    assert evaluation.matthews_corr(labels, np.zeros(6)) == 0.0
    scores, gold = np.array([0.1, 0.5, 0.2, 0.9]), np.array([0.0, 2.0, 1.0, 5.0])
    assert evaluation.pearson(gold, scores) == pytest.approx(stats.pearsonr(gold, scores)[0])
    assert evaluation.spearman(gold, scores) == pytest.approx(1.0)
    assert evaluation.pearson(gold, np.ones(4)) == 0.0


def test_task_metrics_names_and_suffixes():
    mrpc = GLUE_TASKS["mrpc"]
    log_probs = np.log(np.array([[0.9, 0.1], [0.2, 0.8]]))
    assert set(evaluation.task_metrics(mrpc, np.array([0, 1]), log_probs)) == {"f1", "accuracy"}
    assert evaluation.split_suffix(GLUE_TASKS["mnli"], "dev_mismatched") == "mismatched"
    assert evaluation.split_suffix(GLUE_TASKS["sst2"], "dev") == ""
    assert submission.submission_file_name(GLUE_TASKS["mnli"], "test_matched") == "MNLI-m.tsv"
    assert submission.submission_file_name(GLUE_TASKS["mnli"], "test_mismatched") == "MNLI-mm.tsv"
    assert submission.submission_file_name(GLUE_TASKS["ax"], "test") == "AX.tsv"
    assert submission.submission_file_name(GLUE_TASKS["stsb"], "test") == "STS-B.tsv"


def test_predictions_in_length_order_come_back_in_data_order(tiny_encoder_factory, glue_dir):
    from mtkd_tf.data import readers
    from mtkd_tf.models.mtdnn import MTDNN
    from mtkd_tf.training.train import encoder_preprocessor

    encoder = tiny_encoder_factory(seed=3)
    model = MTDNN(encoder.backbone, [GLUE_TASKS["rte"], GLUE_TASKS["stsb"]])
    pre = encoder_preprocessor(encoder, 64)
    for name in ("rte", "stsb"):
        data = readers.load_split(GLUE_TASKS[name], "dev", data_dir=glue_dir)
        model.preprocessor = pre
        sorted_outputs = predict_outputs(model, data, batch_size=8)
        plain = predict_outputs(model, data, batch_size=8, by_length=False)
        one_by_one = np.concatenate([predict_outputs(model, data.rows(i, i + 1), 1) for i in range(5)])
        assert sorted_outputs.shape == plain.shape and len(plain) == len(data)
        np.testing.assert_allclose(sorted_outputs, plain, atol=1e-5)
        np.testing.assert_allclose(sorted_outputs[:5], one_by_one, atol=1e-5)


def test_inference_traces_once_per_model_and_outputs_do_not_depend_on_earlier_calls(tiny_encoder_factory, glue_dir):
    """Evaluation and soft labelling call `predict_outputs` once per split: one graph for all
    of them (no trace per call or per width), and a split's bits are the same whatever ran
    before it (what a resumed run relies on)."""
    from mtkd_tf.data import readers
    from mtkd_tf.models import inference
    from mtkd_tf.models.mtdnn import MTDNN
    from mtkd_tf.training.train import encoder_preprocessor

    def fresh_model():
        encoder = tiny_encoder_factory(seed=5)
        model = MTDNN(encoder.backbone, [GLUE_TASKS["rte"], GLUE_TASKS["stsb"]])
        model.preprocessor = encoder_preprocessor(encoder, 64)
        return model

    rte = readers.load_split(GLUE_TASKS["rte"], "dev", data_dir=glue_dir)
    stsb = readers.load_split(GLUE_TASKS["stsb"], "dev", data_dir=glue_dir)
    model = fresh_model()
    predict_outputs(model, rte.rows(0, 3), batch_size=2)  # other shapes first
    predict_outputs(model, rte, batch_size=8)
    after_others = predict_outputs(model, stsb, batch_size=4)
    alone = predict_outputs(fresh_model(), stsb, batch_size=4)
    np.testing.assert_array_equal(after_others, alone)
    assert inference._predict_step(model, {}).experimental_get_tracing_count() == 1
