import math

import pytest
import torch
import univl_reference as ref
from torch.func import functional_call, jvp
from torch.nn.attention import SDPBackend, sdpa_kernel
from univl_tiny import TINY, VOCAB, collate, tiny_items

from meltr.backbones.univl import UniVL, UniVLLoss, UniVLMasking
from meltr.backbones.univl.losses import PRETRAINING_TASKS as TASKS

MARGIN = 0.1


def encode(model, batch, masked=False):
    ids = batch["mlm_ids"] if masked else batch["text_ids"]
    features = batch["masked_features"] if masked else batch["features"]
    text = model(mode="text", text_ids=ids, text_mask=batch["text_mask"])
    video = model(mode="video", features=features, feature_mask=batch["feature_mask"])
    return text, video


def loss_of(model, batch, task, **options):
    return UniVLLoss(tasks=(task,), **options)(model, batch)[task].item()


def log_softmax_at(values, index):
    values = [float(torch.as_tensor(v).detach()) for v in values]
    top = max(values)
    return values[index] - top - math.log(sum(math.exp(v - top) for v in values))


@pytest.mark.parametrize("task", ["joint", "m_joint"])
def test_joint_is_the_max_margin_loss_over_all_pairs(tiny_model, batch, task):
    text, video = encode(tiny_model, batch, masked=task == "m_joint")
    s = (text["text_feat"] @ video["video_feat"].T).tolist()
    B = len(s)
    total = sum(
        max(0.0, MARGIN + s[i][j] - s[i][i]) + max(0.0, MARGIN + s[i][j] - s[j][j])
        for i in range(B)
        for j in range(B)
    )
    assert loss_of(tiny_model, batch, task) == pytest.approx(total / B**2, rel=1e-10)


@pytest.mark.parametrize("task", ["align", "m_align"])
def test_align_is_the_cross_entropy_of_every_text_over_all_videos(tiny_model, batch, task):
    text, video = encode(tiny_model, batch, masked=task == "m_align")
    B = batch["text_ids"].shape[0]

    def pair_score(i, j):
        pair = tiny_model(
            mode="cross",
            text={k: v[i : i + 1] for k, v in text.items()},
            video={k: v[j : j + 1] for k, v in video.items()},
        )
        return tiny_model.similarity_dense(pair["pooled"]).item()

    scores = [[pair_score(i, j) for j in range(B)] for i in range(B)]
    expected = -sum(log_softmax_at(scores[i], i) for i in range(B)) / B
    assert loss_of(tiny_model, batch, task) == pytest.approx(expected, rel=1e-10)


def test_cmlm_is_cross_entropy_at_the_masked_tokens(tiny_model, batch):
    text, video = encode(tiny_model, batch, masked=True)
    cross = tiny_model(mode="cross", text=text, video=video)["cross_hidden"]
    labels = batch["mlm_labels"]
    terms = [
        -log_softmax_at(
            ref.token_head(tiny_model.state_dict(), "cls.predictions.", cross[b, t]), label
        )
        for b in range(labels.shape[0])
        for t in range(labels.shape[1])
        if (label := int(labels[b, t])) != -100
    ]
    assert len(terms) >= labels.shape[0]  # at least one per text
    assert loss_of(tiny_model, batch, "cmlm") == pytest.approx(sum(terms) / len(terms), rel=1e-10)


def test_cmfm_is_nce_over_every_real_frame_of_the_batch(tiny_model, batch):
    text, video = encode(tiny_model, batch, masked=True)
    cross = tiny_model(mode="cross", text=text, video=video)["cross_hidden"]
    sd = tiny_model.state_dict()
    targets = ref.normalize_video(sd, batch["features"])  # clean frames
    real = [(b, t) for b in range(4) for t in range(5) if batch["feature_mask"][b, t]]
    L = batch["text_ids"].shape[1]
    terms = []
    for b, t in real:
        if batch["frame_mask_labels"][b, t] == -100:
            continue
        prediction = ref.frame_head(sd, cross[b, L + t])
        logits = [prediction @ targets[c, f] for c, f in real]
        terms.append(-log_softmax_at(logits, real.index((b, t))))
    assert len(terms) >= 4
    assert loss_of(tiny_model, batch, "cmfm") == pytest.approx(sum(terms) / len(terms), rel=1e-10)


@pytest.mark.parametrize("task", ["decoder", "m_decoder"])
@pytest.mark.parametrize("count_padding", [True, False])
def test_decoder_is_teacher_forced_cross_entropy(tiny_model, batch, task, count_padding):
    text, video = encode(tiny_model, batch, masked=task == "m_decoder")
    cross = tiny_model(mode="cross", text=text, video=video)
    logits = ref.decoder_logits(
        tiny_model.state_dict(),
        cross["cross_hidden"],
        cross["cross_mask"],
        batch["decoder_ids"],
        batch["decoder_mask"],
        TINY["heads"],
    )
    targets, mask = batch["decoder_targets"], batch["decoder_mask"]
    terms = [
        -log_softmax_at(logits[b, t], int(targets[b, t]))
        for b in range(targets.shape[0])
        for t in range(targets.shape[1])
        if count_padding or mask[b, t]
    ]
    got = loss_of(tiny_model, batch, task, count_padding=count_padding)
    assert got == pytest.approx(sum(terms) / len(terms), rel=1e-10)


def test_the_release_decoder_targets(batch):
    """Input ``[CLS] w..`` (mask 1 there), target ``w.. [SEP]``, [PAD] after both."""
    for b in range(4):
        n = int(batch["text_mask"][b].sum())
        ids = batch["text_ids"][b]
        assert batch["decoder_ids"][b].tolist() == ids[: n - 1].tolist() + [VOCAB.pad_id] * (9 - n)
        assert batch["decoder_targets"][b].tolist() == ids[1:n].tolist() + [VOCAB.pad_id] * (9 - n)
        assert batch["decoder_mask"][b].tolist() == [1] * (n - 1) + [0] * (9 - n)


def test_all_tasks_in_any_order_share_passes_and_reach_every_used_parameter(tiny_model, batch):
    order = ("m_decoder", "cmfm", "joint", "align", "decoder", "cmlm", "m_align", "m_joint")
    source = UniVLLoss(tasks=order)
    losses = source(tiny_model, batch)
    assert source.tasks == order and list(losses) == list(order)
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    for task in order:
        assert losses[task].item() == pytest.approx(loss_of(tiny_model, batch, task), rel=1e-12)
    torch.stack(list(losses.values())).sum().backward()
    # similarity_dense.bias shifts every logit of an align row alike, which the softmax cancels:
    # its gradient is zero in exact arithmetic, and round-off decides whether exactly so.
    without = {
        n
        for n, p in tiny_model.named_parameters()
        if (p.grad is None or not p.grad.any()) and n != "similarity_dense.bias"
    }
    assert without == {
        f"{t}.pooler.dense.{w}" for t in ("bert", "visual") for w in ("weight", "bias")
    }


def test_transcript_text_input(tiny_model, batch):
    """The encoder reads the transcript (another length), the decoder targets the caption."""
    items = tiny_items(seed=4, text_lengths=(6, 4, 3, 5))
    transcripts = collate(
        [UniVLMasking(tokenizer=VOCAB)(item, torch.Generator()) for item in items]
    )
    batch = dict(
        batch,
        transcript_ids=transcripts["text_ids"][:, :6],
        transcript_mask=transcripts["text_mask"][:, :6],
    )
    source = UniVLLoss(tasks=("decoder", "align"), text_input="transcript")
    got = source(tiny_model, batch)
    swapped = dict(batch, text_ids=batch["transcript_ids"], text_mask=batch["transcript_mask"])
    text = tiny_model(mode="text", text_ids=swapped["text_ids"], text_mask=swapped["text_mask"])
    video = tiny_model(mode="video", features=batch["features"], feature_mask=batch["feature_mask"])
    cross = tiny_model(mode="cross", text=text, video=video)
    logits = tiny_model(
        mode="decode",
        cross=cross,
        decoder_ids=batch["decoder_ids"],
        decoder_mask=batch["decoder_mask"],
    )["logits"]
    expected = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), batch["decoder_targets"].flatten()
    )
    torch.testing.assert_close(got["decoder"], expected)
    assert got["align"].item() == pytest.approx(loss_of(tiny_model, swapped, "align"), rel=1e-12)
    with pytest.raises(ValueError, match="mlm_ids has shape"):
        UniVLLoss(tasks=("cmlm",), text_input="transcript")(tiny_model, batch)


def test_no_text_input_is_cls_sep(tiny_model, batch):
    got = UniVLLoss(tasks=("decoder", "m_joint"), text_input="none")(tiny_model, batch)
    empty = torch.tensor([[VOCAB.cls_id, VOCAB.sep_id]] * 4)
    plain = dict(batch, text_ids=empty, text_mask=torch.ones_like(empty), mlm_ids=empty)
    for task in ("decoder", "m_joint"):
        assert got[task].item() == pytest.approx(loss_of(tiny_model, plain, task), rel=1e-12)


def test_randomness_only_from_the_global_rng(batch):
    model = UniVL(**{**TINY, "dropout": 0.2}).double().train()
    source = UniVLLoss(tasks=TASKS)
    torch.manual_seed(7)
    first = source(model, batch)
    torch.manual_seed(7)
    second = source(model, batch)
    assert all(torch.equal(first[t], second[t]) for t in TASKS)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(tasks=()), "at least one"),
        (dict(tasks=("align", "itc")), r"unknown task\(s\) \['itc'\]"),
        (dict(tasks=("align", "joint", "align")), r"names \['align'\] more than once"),
        (dict(text_input="subtitles"), "text_input must be one of"),
        (dict(tasks=("decoder", "cmlm"), text_input="none"), "cmlm masks"),
    ],
)
def test_bad_configurations_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        UniVLLoss(**options)


def test_missing_batch_keys_are_named(tiny_model, batch):
    del batch["masked_features"]
    with pytest.raises(KeyError, match="masked_features"):
        UniVLLoss(tasks=("m_joint",))(tiny_model, batch)


def test_jvp_over_functional_call_agrees_with_finite_differences(tiny_model, batch):
    """The forward-mode products backend calls the source with a plain function as the model."""
    source = UniVLLoss(tasks=TASKS)
    params = {k: v.detach() for k, v in tiny_model.named_parameters()}
    generator = torch.Generator().manual_seed(7)
    direction = {
        k: torch.randn(v.shape, generator=generator, dtype=v.dtype) for k, v in params.items()
    }

    def losses(p):
        return torch.stack(
            list(source(lambda **kw: functional_call(tiny_model, p, (), kw), batch).values())
        )

    with sdpa_kernel(SDPBackend.MATH):
        _, tangent = jvp(losses, (params,), (direction,))
    eps = 1e-6
    with torch.no_grad():
        plus = losses({k: v + eps * direction[k] for k, v in params.items()})
        minus = losses({k: v - eps * direction[k] for k, v in params.items()})
    torch.testing.assert_close(tangent, (plus - minus) / (2 * eps), rtol=1e-5, atol=1e-7)
