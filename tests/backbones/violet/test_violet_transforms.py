"""MTM text masking and blockwise MVM video masking against their specification."""

import pytest
import torch

from meltr.backbones.violet.transforms import (
    BlockwiseVideoMask,
    MaskTextTokens,
    blockwise_mask,
)
from meltr.data.text import WordPieceTokenizer
from meltr.data.transforms import IMAGENET_MEAN, IMAGENET_STD

WORDS = ["a", "red", "box", "moves", "left", "fast", "on", "the", "blue", "grass"]


@pytest.fixture
def tokenizer(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return WordPieceTokenizer(vocab, max_length=12)


def encoded(tokenizer, text):
    ids, mask = tokenizer.encode([text])
    return {"text_ids": ids[0], "text_mask": mask[0], "caption": text}


def test_mtm_masks_only_real_words_always_with_mask_and_keeps_the_labels(tokenizer):
    item = encoded(tokenizer, "a red box moves fast on the blue grass zzz")  # zzz -> [UNK]
    before = {k: v.clone() for k, v in item.items() if torch.is_tensor(v)}
    transform = MaskTextTokens(tokenizer)
    maskable = item["text_mask"].bool() & ~torch.isin(
        item["text_ids"], torch.tensor(sorted(tokenizer.special_ids))
    )
    counts = torch.zeros(12)
    draws = 2000
    for seed in range(draws):
        out = transform(item, torch.Generator().manual_seed(seed))
        selected = out["mtm_labels"] != -100
        assert selected.any()
        assert not (selected & ~maskable).any()
        assert (out["mtm_ids"][selected] == tokenizer.mask_id).all()
        assert torch.equal(out["mtm_ids"][~selected], item["text_ids"][~selected])
        assert torch.equal(out["mtm_labels"][selected], item["text_ids"][selected])
        counts += selected.float()
    for key, value in before.items():
        assert torch.equal(item[key], value)  # the input is not mutated
    # Each of the 9 maskable tokens is chosen with P(x_i | at least one) = p / (1 - (1-p)^9).
    expected = 0.15 / (1 - 0.85**9)
    rate = counts[maskable] / draws
    assert (rate - expected).abs().max() < 4 * (expected * (1 - expected) / draws) ** 0.5 + 0.01
    assert counts[~maskable].sum() == 0


def test_mtm_guarantees_one_masked_token_and_is_deterministic(tokenizer):
    transform = MaskTextTokens(tokenizer)
    single = encoded(tokenizer, "box")
    out = transform(single, torch.Generator().manual_seed(0))
    assert out["mtm_ids"].tolist()[:3] == [tokenizer.cls_id, tokenizer.mask_id, tokenizer.sep_id]
    empty = transform(encoded(tokenizer, ""), torch.Generator().manual_seed(0))
    assert (empty["mtm_labels"] == -100).all()
    item = encoded(tokenizer, "a red box moves fast")
    first = transform(item, torch.Generator().manual_seed(5))
    second = transform(item, torch.Generator().manual_seed(5))
    assert torch.equal(first["mtm_ids"], second["mtm_ids"])


def test_mtm_on_several_texts_masks_each_row(tokenizer):
    ids, mask = tokenizer.encode(["a red box", "fast", "on the blue grass"])
    out = MaskTextTokens(tokenizer, probability=0.05)(
        {"text_ids": ids, "text_mask": mask}, torch.Generator().manual_seed(0)
    )
    assert ((out["mtm_labels"] != -100).sum(-1) >= 1).all()


def replayed_blocks(frames, rows, cols, generator):
    """The blocks blockwise_mask is specified to draw, from the same generator: per block
    t in [1, frames-1], h in [1, rows*2//3 - 1], w in [1, cols*2//3 - 1], then the offsets."""

    def uniform(low, high):
        return int(torch.randint(low, high + 1, (), generator=generator))

    blocks = []
    for _ in range(frames):
        t = uniform(1, frames - 1)
        h, w = uniform(1, rows * 2 // 3 - 1), uniform(1, cols * 2 // 3 - 1)
        blocks.append((t, h, w, uniform(0, frames - t), uniform(0, rows - h), uniform(0, cols - w)))
    return blocks


def test_blockwise_mask_is_the_union_of_frames_blocks_of_the_release_sizes():
    frames, rows, cols = 5, 7, 7
    sizes = set()
    for seed in range(300):
        mask = blockwise_mask(frames, rows, cols, torch.Generator().manual_seed(seed))
        blocks = replayed_blocks(frames, rows, cols, torch.Generator().manual_seed(seed))
        expected = torch.zeros(frames, rows, cols, dtype=torch.bool)
        for t, h, w, t0, h0, w0 in blocks:
            assert 1 <= t <= 4 and 1 <= h <= 3 and 1 <= w <= 3
            assert t0 + t <= frames and h0 + h <= rows and w0 + w <= cols
            for i in range(t0, t0 + t):
                for j in range(h0, h0 + h):
                    for k in range(w0, w0 + w):
                        expected[i, j, k] = True
            sizes.add((t, h, w))
        assert torch.equal(mask, expected), seed
    assert len(sizes) == 4 * 3 * 3  # every block shape occurs


def test_blockwise_mask_single_frame_and_small_grids():
    mask = blockwise_mask(1, 2, 2, torch.Generator().manual_seed(0))
    assert mask.shape == (1, 2, 2) and mask.sum() == 1  # one 1x1 block


def test_video_mask_fills_exactly_the_pixels_of_the_masked_cells():
    generator = torch.Generator().manual_seed(0)
    video = torch.randn(5, 3, 224, 224, generator=generator)
    item = {"video": video, "video_id": "v"}
    out = BlockwiseVideoMask()(item, torch.Generator().manual_seed(3))
    cells, masked = out["mvm_mask"], out["masked_video"]
    assert cells.shape == (5, 7, 7) and cells.dtype == torch.bool and cells.any()
    assert torch.equal(cells, blockwise_mask(5, 7, 7, torch.Generator().manual_seed(3)))
    black = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)])
    for t in range(5):
        for i in range(7):
            for j in range(7):
                patch = masked[t, :, 32 * i : 32 * i + 32, 32 * j : 32 * j + 32]
                if cells[t, i, j]:
                    assert torch.equal(patch, black[:, None, None].expand_as(patch))
                else:
                    assert torch.equal(
                        patch, video[t, :, 32 * i : 32 * i + 32, 32 * j : 32 * j + 32]
                    )
    assert out["video"] is video and item.keys() == {"video", "video_id"}


def test_video_mask_zero_fill_and_bad_sizes():
    video = torch.randn(3, 3, 64, 64)
    out = BlockwiseVideoMask(cell_size=16, fill="zero")(
        {"video": video}, torch.Generator().manual_seed(1)
    )
    pixels = out["mvm_mask"].repeat_interleave(16, 1).repeat_interleave(16, 2)
    assert (out["masked_video"].transpose(0, 1)[:, pixels] == 0).all()
    with pytest.raises(ValueError, match="not a multiple of cell_size=32"):
        BlockwiseVideoMask()({"video": video[:, :, :48, :48]}, torch.Generator())
    with pytest.raises(ValueError, match="fill must be one of"):
        BlockwiseVideoMask(fill="grey")
