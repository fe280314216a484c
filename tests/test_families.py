"""Every supported keras-hub encoder family: its own tokenizer and packing, MT-DNN heads (SAN
included) on its outputs, and a model directory that saves and reloads it exactly."""

import numpy as np
import pytest
import tensorflow as tf

from mtkd_tf.data.preprocessing import DOUBLE_SEPARATOR, Preprocessor, double_separator
from mtkd_tf.data.tasks import GLUE_TASKS, with_answer_modules
from mtkd_tf.models import encoder as encoder_lib
from mtkd_tf.models import model_dir
from mtkd_tf.models.encoder import EncoderError
from mtkd_tf.models.families import BPE_SPECIAL, FAMILIES, family_of, learn_tokenizer, tokenizer_family
from mtkd_tf.models.mtdnn import MTDNN

TEXTS = [f"the film number {i} was {'good' if i % 3 else 'dull'} and rather long" for i in range(120)] + [
    "A gripping story, told well.",
    "Who directed it?",
] * 5


def _encoder(family, seed=0):
    return encoder_lib.load_encoder(f"tiny_{family}", training_texts=TEXTS, vocabulary_size=400, seed=seed)


def test_the_preprocessing_layer_knows_how_every_family_packs_pairs():
    # data/ does not import models/: the packing table lives in preprocessing, the families read it.
    assert set(DOUBLE_SEPARATOR) == {family.tokenizer for family in FAMILIES.values()}
    assert [name for name, family in FAMILIES.items() if family.double_separator] == ["roberta", "xlm_roberta"]
    with pytest.raises(ValueError, match="not the tokenizer of a supported encoder family"):
        double_separator(object())


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_packs_one_and_two_segments_its_own_way(family):
    tokenizer, _ = learn_tokenizer(FAMILIES[family], TEXTS, 400)
    assert tokenizer_family(tokenizer).name == family
    assert double_separator(tokenizer) == FAMILIES[family].double_separator
    pre = Preprocessor(tokenizer, 24, pad_to_multiple_of=0)
    features = {
        k: v.numpy()[0] for k, v in pre(tf.constant(["a gripping story"]), tf.constant(["who directed it"])).items()
    }
    ids, segments = features["token_ids"], features["segment_ids"]
    length = int(features["padding_mask"].sum())
    start, end = tokenizer.start_token_id, tokenizer.end_token_id
    assert ids[0] == start and ids[length - 1] == end and (ids[length:] == tokenizer.pad_token_id).all()
    separators = np.flatnonzero(ids[:length] == end)
    double = FAMILIES[family].double_separator  # <s> A </s></s> B </s>  vs  [CLS] A [SEP] B [SEP]
    assert len(separators) == (3 if double else 2)
    if double:
        assert separators[1] == separators[0] + 1
    assert segments[separators[-1]] == 1 and segments[1] == 0  # the SAN head reads the segments


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_trains_mtdnn_heads_then_saves_and_reloads_exactly(family, tmp_path, glue_dir):
    from mtkd_tf.config import ExperimentConfig
    from mtkd_tf.data import readers
    from mtkd_tf.training.train import train_model

    tasks = with_answer_modules([GLUE_TASKS["sst2"], GLUE_TASKS["rte"]], [])
    assert tasks[1].answer_module == "san"  # pair classification through the SAN answer module
    train = {task.name: readers.load_split(task, "train", data_dir=glue_dir) for task in tasks}
    texts = [text for data in train.values() for text in data.text_a + (data.text_b or [])]
    encoder = encoder_lib.load_encoder(f"tiny_{family}", training_texts=texts, vocabulary_size=400, seed=0)
    assert family_of(encoder.backbone).name == family
    initial = encoder.backbone.get_weights()
    config = ExperimentConfig().replace(
        epochs=1, batch_size=16, learning_rate=1e-3, verbose=0, checkpoint_every_steps=0, max_seq_length=32
    )
    model = train_model(config, str(tmp_path), train, tasks=tasks, encoder=encoder)  # 8 steps, both tasks
    assert not all(np.array_equal(a, b) for a, b in zip(initial, model.encoder.get_weights(), strict=True))
    before = model.predict_texts("rte", ["a gripping story"], ["who directed it"])["probabilities"]
    assert before.shape == (1, 2) and np.allclose(before.sum(), 1, atol=1e-5)
    loaded = model_dir.load(str(tmp_path))
    assert type(loaded.preprocessor.tokenizer) is type(encoder.tokenizer)
    np.testing.assert_allclose(
        loaded.predict_texts("rte", ["a gripping story"], ["who directed it"])["probabilities"], before, atol=1e-6
    )
    np.testing.assert_allclose(
        loaded.predict_texts("sst2", ["a gripping story"])["probabilities"],
        model.predict_texts("sst2", ["a gripping story"])["probabilities"],
        atol=1e-6,
    )


def test_bad_family_specs_name_the_problem(tmp_path):
    with pytest.raises(EncoderError, match="unknown family 'gpt2'"):
        encoder_lib.load_encoder("random:family=gpt2,layers=2", training_texts=TEXTS)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nfilm\n")
    with pytest.raises(EncoderError, match="roberta uses bpe"):
        encoder_lib.load_encoder("tiny_roberta", vocab_file=str(vocab))
    hf = tmp_path / "electra"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "electra"}')
    with pytest.raises(EncoderError, match="keras-hub 0.32 cannot convert Hugging Face electra"):
        encoder_lib.check_spec(str(hf))


@pytest.mark.slow
def test_a_mixed_family_ensemble_teaches_a_bert_student_through_cached_soft_labels(tmp_path, monkeypatch):
    """Teachers with their own vocabularies (byte-level BPE RoBERTa, SentencePiece DeBERTa-v3):
    each tokenises the text itself; the student (BERT WordPiece) reads the averaged probabilities
    by example id. Online teachers, which would read the student's ids, are refused."""
    import os

    from conftest import ROOT

    import mtkd_tf as mt
    from mtkd_tf.distill import ensemble, soft_labels

    monkeypatch.setenv("MTKD_CACHE", str(tmp_path / "cache"))
    config = mt.ExperimentConfig.from_flagfile(
        os.path.join(ROOT, "configs/tiny.cfg"),
        model_dir=str(tmp_path / "kd"),
        tasks=["sst2", "rte"],
        num_teachers=2,
        teacher_encoders=["tiny_roberta", "tiny_deberta_v3"],
        epochs=1,
        verbose=0,
        max_train_examples=24,
        soft_labels_precision="float32",
    )
    experiment = mt.Experiment(config)
    experiment.teachers(), experiment.soft_labels(), experiment.student()
    members = [model_dir.load(d) for d in experiment.ctx.teachers.dirs()]
    assert [type(m.preprocessor.tokenizer).__name__ for m in members] == ["RobertaTokenizer", "DebertaV3Tokenizer"]
    train = experiment.data.train["rte"]
    expected = np.mean([ensemble.member_targets(member, train) for member in members], axis=0)
    stored = soft_labels.read(soft_labels.path_for(str(tmp_path / "kd" / "soft_labels"), "rte"))
    np.testing.assert_allclose(soft_labels.align(stored, train.task, train), expected, atol=1e-5)
    student = model_dir.load(str(tmp_path / "kd" / "student"))
    assert type(student.preprocessor.tokenizer).__name__ == "BertTokenizer"
    with pytest.raises(mt.ConfigError, match="tokenises differently from the student .RobertaTokenizer"):
        mt.Experiment(config.replace(online_teachers=True, student_dir=str(tmp_path / "online"))).student()


@pytest.mark.parametrize("family", ["bert", "roberta", "deberta_v3"])
def test_a_smaller_student_keeps_chosen_layers_of_a_keras_hub_preset(family, tmp_path):
    """`<preset dir>:layers=0,2`: the student has the teacher's embeddings and its layers 0 and 2."""
    spec = f"random:family={family},layers=3,hidden=32,heads=2,intermediate=64"
    teacher = encoder_lib.load_encoder(spec, training_texts=TEXTS, vocabulary_size=400, seed=0)
    preset = tmp_path / "preset"
    teacher.backbone.save_to_preset(str(preset))
    teacher.tokenizer.save_to_preset(str(preset))
    student = encoder_lib.load_encoder(f"{preset}:layers=0,2")
    assert student.backbone.num_layers == 2 and family_of(student.backbone).name == family
    assert student.tokenizer.get_vocabulary() == teacher.tokenizer.get_vocabulary()
    kept = {layer.name: layer for layer in student.backbone.layers}
    for layer in teacher.backbone.layers:
        name = layer.name
        if name[-1].isdigit() and "_layer_" in name:  # transformer layer i -> student layer [0, 2].index(i)
            index = int(name.rsplit("_", 1)[1])
            if index not in (0, 2):
                continue
            name = f"{name.rsplit('_', 1)[0]}_{[0, 2].index(index)}"
        for a, b in zip(layer.get_weights(), kept[name].get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(EncoderError, match=r"layer\(s\) 3 out of range; the encoder has 3"):
        encoder_lib.load_encoder(f"{preset}:layers=0,3")


def test_saving_another_family_into_a_model_directory_replaces_its_tokenizer(tmp_path):
    tasks = with_answer_modules([GLUE_TASKS["sst2"]], [])
    for family in ("bert", "roberta", "bert"):
        encoder = _encoder(family)
        model = MTDNN(encoder.backbone, tasks, preprocessor=Preprocessor(encoder.tokenizer, 32))
        model_dir.save(str(tmp_path), model, encoder.tokenizer, encoder.lowercase, 32, encoder=encoder.spec)
        assert type(model_dir.load(str(tmp_path)).preprocessor.tokenizer) is type(encoder.tokenizer)


def _hugging_face_roberta(directory: str) -> dict[str, np.ndarray]:
    """A Hugging Face RoBERTa checkpoint directory as transformers writes one (RobertaForMaskedLM's
    tensor names, position embeddings offset by 2, zero token-type embeddings as in the real ones,
    vocab.json + merges.txt), with random weights, written without transformers."""
    import json
    import os

    from safetensors.numpy import save_file
    from tokenizers import ByteLevelBPETokenizer

    os.makedirs(directory)
    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator(TEXTS, vocab_size=400, special_tokens=BPE_SPECIAL, show_progress=False)
    trainer.save_model(directory)
    vocabulary = len(json.load(open(os.path.join(directory, "vocab.json"))))
    hidden, intermediate, positions = 32, 64, 66
    rng = np.random.default_rng(0)

    def weight(*shape):
        return rng.normal(0.0, 0.2, shape).astype("float32")

    tensors = {
        "roberta.embeddings.word_embeddings.weight": weight(vocabulary, hidden),
        "roberta.embeddings.position_embeddings.weight": weight(positions, hidden),
        "roberta.embeddings.token_type_embeddings.weight": np.zeros((1, hidden), "float32"),
    }
    norms = ["roberta.embeddings.LayerNorm"]
    for layer in range(2):
        prefix = f"roberta.encoder.layer.{layer}"
        for name, shape in {
            "attention.self.query": (hidden, hidden),
            "attention.self.key": (hidden, hidden),
            "attention.self.value": (hidden, hidden),
            "attention.output.dense": (hidden, hidden),
            "intermediate.dense": (intermediate, hidden),
            "output.dense": (hidden, intermediate),
        }.items():
            tensors[f"{prefix}.{name}.weight"], tensors[f"{prefix}.{name}.bias"] = weight(*shape), weight(shape[0])
        norms += [f"{prefix}.attention.output.LayerNorm", f"{prefix}.output.LayerNorm"]
    for norm in norms:
        tensors[f"{norm}.weight"], tensors[f"{norm}.bias"] = 1.0 + weight(hidden), weight(hidden)
    save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architectures": ["RobertaForMaskedLM"],
        "model_type": "roberta",
        "vocab_size": vocabulary,
        "hidden_size": hidden,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": intermediate,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": positions,
        "type_vocab_size": 1,
        "layer_norm_eps": 1e-5,
        "pad_token_id": 1,
        "bos_token_id": 0,
        "eos_token_id": 2,
    }
    with open(os.path.join(directory, "config.json"), "w") as handle:
        json.dump(config, handle)
    return tensors


def test_a_hugging_face_roberta_directory_loads_with_its_own_tokenizer_and_weights(tmp_path):
    from tokenizers import ByteLevelBPETokenizer

    directory = str(tmp_path / "roberta")
    tensors = _hugging_face_roberta(directory)
    encoder = encoder_lib.load_encoder(directory)
    assert family_of(encoder.backbone).name == "roberta" and not encoder.lowercase
    reference = ByteLevelBPETokenizer(f"{directory}/vocab.json", f"{directory}/merges.txt")
    for text in ["a gripping story, told well", "Who directed the film?"]:
        assert list(encoder.tokenizer([text])[0]) == reference.encode(text).ids
    backbone = encoder.backbone
    np.testing.assert_array_equal(
        backbone.token_embedding.embeddings.numpy(), tensors["roberta.embeddings.word_embeddings.weight"]
    )
    np.testing.assert_array_equal(
        backbone.embeddings.position_embedding.position_embeddings.numpy(),
        tensors["roberta.embeddings.position_embeddings.weight"][2:],
    )
    # MT-DNN heads (SAN included) read it and predict from raw text, pairs packed RoBERTa's way
    model = MTDNN(
        backbone, with_answer_modules([GLUE_TASKS["rte"]], []), preprocessor=Preprocessor(encoder.tokenizer, 32)
    )
    assert model.predict_texts("rte", ["a gripping story"], ["who directed it"])["probabilities"].shape == (1, 2)


def test_a_hugging_face_roberta_directory_computes_what_transformers_computes(tmp_path):
    """Parity with Hugging Face's own model (transformers and torch: benchmarks/requirements-peer.txt,
    which CI installs; there a missing peer fails this test instead of skipping it, tests/conftest.py)."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    directory = str(tmp_path / "roberta")
    _hugging_face_roberta(directory)
    encoder = encoder_lib.load_encoder(directory)
    ids = [[0, *encoder.tokenizer(["a gripping story, told well"])[0], 2]]
    reference = transformers.RobertaModel.from_pretrained(directory, add_pooling_layer=False).eval()
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor(ids)).last_hidden_state.numpy()
    token_ids = tf.constant(ids)
    found = encoder.backbone({"token_ids": token_ids, "padding_mask": tf.ones_like(token_ids)})
    np.testing.assert_allclose(found.numpy(), expected, atol=1e-5)
