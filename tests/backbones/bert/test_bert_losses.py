"""The BERT loss source against the losses' definitions written out here."""

import math

import pytest
import torch
from bert_tiny import VOCAB, write_tiny_bert

from meltr.backbones.bert import (
    TextClassificationLoss,
    bert_text_model,
    bert_tokenizer,
    bert_vocab,
    load_bert_checkpoint,
    simcse_loss,
)
from meltr.data.text import MaskTokens

TEXTS = ["a man is eating food .", "the movie was good", "bad story", "very dull film", "fun"]


def test_simcse_is_the_infonce_of_the_second_views_at_temperature():
    generator = torch.Generator().manual_seed(0)
    first, second = torch.randn(4, 6, generator=generator), torch.randn(4, 6, generator=generator)
    temperature = 0.05
    expected = 0.0
    for i in range(4):
        cosines = [
            float(first[i] @ second[j] / (first[i].norm() * second[j].norm())) for j in range(4)
        ]
        denominator = sum(math.exp(c / temperature) for c in cosines)
        expected -= math.log(math.exp(cosines[i] / temperature) / denominator) / 4
    assert simcse_loss(first, second, temperature).item() == pytest.approx(expected, rel=1e-5)


@pytest.fixture
def setup(tmp_path):
    folder = write_tiny_bert(tmp_path / "bert")
    torch.manual_seed(0)
    model = bert_text_model(str(folder), vocab_size=len(VOCAB))
    load_bert_checkpoint(model, folder)
    tokenizer = bert_tokenizer(bert_vocab(folder), 10)
    ids, mask = tokenizer.encode(TEXTS)
    masking, generator = MaskTokens(tokenizer, probability=0.3), torch.Generator().manual_seed(3)
    items = [
        masking({"text_ids": i, "text_mask": m}, generator) for i, m in zip(ids, mask, strict=True)
    ]
    batch = {
        "text_ids": ids,
        "text_mask": mask,
        "label": torch.tensor([0, 1, 1, 0, 1]),
        "mlm_ids": torch.stack([item["mlm_ids"] for item in items]),
        "mlm_labels": torch.stack([item["mlm_labels"] for item in items]),
    }
    assert (batch["mlm_labels"] != -100).sum() >= 3
    return model, batch


def test_each_loss_is_its_definition_on_the_model_outputs(setup):
    model, batch = setup
    source = TextClassificationLoss(("cls", "mlm", "simcse"), temperature=0.1)
    torch.manual_seed(5)
    rng = torch.get_rng_state()
    losses = source(model, batch)
    assert list(losses) == ["cls", "mlm", "simcse"]

    # Replay the three passes with the same RNG state, in the same order, outside the source.
    torch.set_rng_state(rng)
    inputs = {"text_ids": batch["text_ids"], "text_mask": batch["text_mask"]}
    first = model(mode="classify", **inputs)
    selected = batch["mlm_labels"] != -100
    hidden = model(mode="hidden", text_ids=batch["mlm_ids"], text_mask=batch["text_mask"])
    second = model(mode="embed", **inputs)["sentence"]

    log_probs = first["logits"].log_softmax(-1)
    cls = -log_probs[torch.arange(5), batch["label"]].mean()
    head = model.cls.predictions
    vocabulary = head.transform(hidden["hidden"]) @ model.embeddings.word_embeddings.weight.T
    token_log_probs = (vocabulary + head.bias).log_softmax(-1)[selected]
    mlm = -token_log_probs[torch.arange(len(token_log_probs)), batch["mlm_labels"][selected]].mean()
    a = first["sentence"] / first["sentence"].norm(dim=1, keepdim=True)
    b = second / second.norm(dim=1, keepdim=True)
    simcse = -((a @ b.T / 0.1).log_softmax(1).diagonal()).mean()
    torch.testing.assert_close(losses["cls"], cls)
    torch.testing.assert_close(losses["mlm"], mlm)
    torch.testing.assert_close(losses["simcse"], simcse)


def test_the_two_simcse_views_differ_only_by_dropout(setup):
    model, batch = setup
    source = TextClassificationLoss(("cls", "simcse"), temperature=0.05)
    with torch.no_grad():
        training = source(model, batch)["simcse"]
        model.eval()
        identical_views = source(model, batch)["simcse"]
    sentence = model(mode="embed", text_ids=batch["text_ids"], text_mask=batch["text_mask"])
    z = torch.nn.functional.normalize(sentence["sentence"], dim=1)
    expected = -((z @ z.T / 0.05).log_softmax(1).diagonal()).mean()
    torch.testing.assert_close(identical_views, expected)
    assert training > identical_views


def test_the_losses_are_a_function_of_the_global_rng_state(setup):
    model, batch = setup
    source = TextClassificationLoss()
    torch.manual_seed(11)
    once = source(model, batch)
    torch.manual_seed(11)
    again = source(model, batch)
    assert all(torch.equal(once[task], again[task]) for task in source.tasks)
    assert not torch.equal(source(model, batch)["simcse"], once["simcse"])


def test_tasks_are_checked_and_chance_levels_named():
    with pytest.raises(ValueError, match="primary"):
        TextClassificationLoss(("mlm", "cls"))
    with pytest.raises(ValueError, match="unknown auxiliary"):
        TextClassificationLoss(("cls", "rtd"))
    with pytest.raises(ValueError, match="temperature"):
        TextClassificationLoss(temperature=0)
    levels = TextClassificationLoss(num_classes=3).chance_levels(16)
    assert levels == pytest.approx({"cls": math.log(3), "simcse": math.log(16)})
    assert TextClassificationLoss(("cls", "mlm")).chance_levels(16) == {}
