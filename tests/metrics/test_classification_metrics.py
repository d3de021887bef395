"""topk_accuracy and answer_accuracy against values computed by hand."""

import pytest
import torch

from meltr.metrics.classification import answer_accuracy, topk_accuracy

# Rank of each row's label among its 6 scores (by hand): 1, 6, 5, 2.
LOGITS = torch.tensor(
    [
        [0.1, 0.5, 0.9, 0.2, 0.3, 0.0],
        [0.1, 0.9, 0.8, 0.7, 0.6, 0.5],
        [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],
        [0.0, 3.0, 2.0, 4.0, 1.0, -1.0],
    ]
)
LABELS = torch.tensor([2, 0, 4, 1])


def test_topk_accuracy_by_hand():
    assert topk_accuracy(LOGITS, LABELS) == {"top1": 25.0, "top5": 75.0}
    assert topk_accuracy(LOGITS, LABELS, ks=(2, 6, 1)) == {
        "top2": 50.0,
        "top6": 100.0,
        "top1": 25.0,
    }
    # Probabilities rank like their logits.
    assert topk_accuracy(LOGITS.double().softmax(dim=1), LABELS) == {"top1": 25.0, "top5": 75.0}


def test_topk_ties_inside_the_top_k_always_count():
    tied = torch.tensor([[1.0, 1.0, 1.0, 0.0], [2.0, 1.0, 1.0, 1.0]])
    # Row 0: label 2 ties with classes 0 and 1 for the top; all three are in the top 3.
    # Row 1: label 0 is alone on top; the tie behind it does not matter.
    assert topk_accuracy(tied, torch.tensor([2, 0]), ks=(3, 1)) == {"top3": 100.0, "top1": 50.0}


def test_topk_tie_at_the_kth_score_follows_torch_topk():
    # Label 1 ties with class 0 for the single top place: it counts iff torch.topk picks it.
    tied = torch.tensor([[1.0, 1.0, 0.0]])
    picked = torch.topk(tied, 1).indices.item()
    assert topk_accuracy(tied, torch.tensor([1]), ks=(1,)) == {"top1": 100.0 * (picked == 1)}


@pytest.mark.parametrize(
    ("logits", "labels", "ks", "message"),
    [
        (torch.zeros(4), torch.zeros(4, dtype=torch.long), (1,), r"\[N, C\] matrix.*\(4,\)"),
        (torch.zeros(4, 3, dtype=torch.long), LABELS, (1,), r"floating \[N, C\].*torch.int64"),
        (torch.zeros(4, 6), LABELS[:3], (1,), r"labels must have shape \[4\] to match logits"),
        (torch.zeros(4, 6), LABELS.float(), (1,), "labels must hold integer indices"),
        (torch.zeros(4, 6), torch.tensor([0, 6, 1, 2]), (1,), r"outside \[0, 6\): \[6\]"),
        (torch.zeros(4, 6), LABELS, (1, 7), r"ks must be integers in \[1, C=6\], got \(1, 7\)"),
        (torch.zeros(4, 6), LABELS, (), r"ks must be integers"),
        (torch.full((4, 6), float("nan")), LABELS, (1,), "NaN"),
    ],
)
def test_topk_bad_input(logits, labels, ks, message):
    with pytest.raises(ValueError, match=message):
        topk_accuracy(logits, labels, ks=ks)


def test_answer_accuracy_counts_out_of_vocabulary_answers_as_wrong():
    predicted = torch.tensor([3, 0, 5, 2, 7])
    answers = torch.tensor(
        [3, 1, -1, 2, -1]
    )  # 2 right out of 5; two answers outside the vocabulary
    assert answer_accuracy(predicted, answers) == {"accuracy": 40.0, "num_out_of_vocabulary": 2}
    all_known = answer_accuracy(torch.tensor([1, 1]), torch.tensor([1, 0]))
    assert all_known == {"accuracy": 50.0, "num_out_of_vocabulary": 0}


@pytest.mark.parametrize(
    ("predicted", "answers", "message"),
    [
        (
            [1, 2, 3],
            [1, 2],
            r"answer_index must have shape \[3\] to match predicted \(3,\), got \(2,\)",
        ),
        ([[1, 2]], [1, 2], r"predicted must have shape \[N\], got \(1, 2\)"),
        ([1, 2], [1, -2], r"answer_index must be >= 0, or -1.*\[-2\]"),
        ([-1, 2], [1, 2], r"negative answer indices: \[-1\]"),
        ([0.0, 2.0], [1, 2], "predicted must hold integer indices, got torch.float32"),
        (torch.zeros(0, dtype=torch.long), [], "predicted is empty"),
    ],
)
def test_answer_accuracy_bad_input(predicted, answers, message):
    with pytest.raises(ValueError, match=message):
        answer_accuracy(torch.as_tensor(predicted), torch.as_tensor(answers, dtype=torch.long))
