import pytest
import torch

from meltr.metrics import retrieval_metrics


def test_three_by_three_by_hand():
    similarity = torch.tensor(
        [
            [0.9, 0.1, 0.3],  # text 0 -> video 0: rank 1
            [0.8, 0.5, 0.2],  # text 1 -> video 1: 0.8 beats it, rank 2
            [0.1, 0.2, 0.05],  # text 2 -> video 2: both beat it, rank 3
        ]
    )
    m = retrieval_metrics(similarity, torch.tensor([0, 1, 2]))
    # columns: video 0 -> text 0 rank 1; video 1 -> text 1 rank 1; video 2 -> text 2 rank 3
    assert m == pytest.approx(
        {
            "t2v_R@1": 100 / 3,
            "t2v_R@5": 100.0,
            "t2v_R@10": 100.0,
            "t2v_MedR": 2.0,
            "t2v_MnR": 2.0,
            "v2t_R@1": 200 / 3,
            "v2t_R@5": 100.0,
            "v2t_R@10": 100.0,
            "v2t_MedR": 1.0,
            "v2t_MnR": 5 / 3,
        }
    )


def test_recall_cutoffs_on_twelve_videos():
    scores = torch.arange(12, dtype=torch.float32)
    similarity = torch.stack([scores, scores.flip(0)])
    similarity[0, 0] = 5.5  # text 0: videos 6..11 score higher -> rank 7
    m = retrieval_metrics(similarity, torch.tensor([0, 0]))  # text 1: its video scores 11 -> rank 1
    assert (m["t2v_R@1"], m["t2v_R@5"], m["t2v_R@10"]) == (50.0, 50.0, 100.0)
    assert m["t2v_MedR"] == 4.0  # (1 + 7) / 2
    assert m["t2v_MnR"] == 4.0


def test_ties_are_pessimistic():
    similarity = torch.tensor([[0.5, 0.5, 0.1], [0.3, 0.3, 0.3]])
    m = retrieval_metrics(similarity, torch.tensor([0, 2]))
    # text 0: one wrong video ties -> rank 2; text 1: two wrong videos tie -> rank 3
    assert m["t2v_MnR"] == 2.5
    assert m["t2v_R@1"] == 0.0


def test_several_texts_per_video_use_the_best_ranked_text():
    # columns are videos; texts 0,1 belong to video 0, texts 2,3 to video 1; video 2 has none
    similarity = torch.tensor(
        [
            [0.2, 0.8, 0.0],
            [0.7, 0.3, 0.0],
            [0.9, 0.4, 0.0],
            [0.1, 0.6, 0.0],
        ]
    )
    m = retrieval_metrics(similarity, torch.tensor([0, 0, 1, 1]))
    # video 0: best own text scores 0.7, wrong text 2 has 0.9 -> rank 2
    # video 1: best own text scores 0.6, wrong texts 0 (0.8) -> rank 2; video 2 skipped
    assert m["v2t_MnR"] == 2.0 and m["v2t_R@1"] == 0.0 and m["v2t_R@5"] == 100.0
    # t2v: text0 rank 2 (0.8 > 0.2), text1 rank 1, text2 rank 2 (0.9 > 0.4), text3 rank 1
    assert m["t2v_MnR"] == 1.5 and m["t2v_R@1"] == 50.0 and m["t2v_MedR"] == 1.5


@pytest.mark.parametrize(
    "similarity, text_to_video, match",
    [
        (torch.zeros(3), torch.tensor([0, 1, 2]), "similarity"),
        (torch.zeros(2, 3), torch.tensor([0, 1, 2]), "text_to_video"),
        (torch.zeros(2, 3), torch.tensor([0, 3]), "outside"),
        (torch.zeros(2, 3), torch.tensor([0.0, 1.0]), "integer"),
        (torch.tensor([[float("nan"), 0.0]]), torch.tensor([0]), "NaN"),
    ],
)
def test_bad_input_is_refused(similarity, text_to_video, match):
    with pytest.raises(ValueError, match=match):
        retrieval_metrics(similarity, text_to_video)
