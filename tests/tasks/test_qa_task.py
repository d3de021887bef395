"""QuestionAnswering against accuracies counted by hand from a fake model's known logits."""

import pytest
import torch
from torch import nn

from meltr.tasks.qa import QuestionAnswering

MC_KEYS = ("video", "option_ids", "option_mask")


class TableModel(nn.Module):
    """Open-ended: ``logits = table[view][text_ids[:, 0]]``. Multiple choice: the logit of option
    ``k`` is ``option_ids[:, k, 0]`` (plus ``10 * view``, which changes no argmax). The view is
    ``video[:, 0]``."""

    def __init__(self, table):
        super().__init__()
        self.table = table
        self.modes = []

    def forward(self, *, mode, video, text_ids=None, option_ids=None, **rest):
        rest.pop("text_mask" if text_ids is not None else "option_mask")
        assert not rest and not self.training
        self.modes.append(mode)
        view = video[:, 0].long()
        if option_ids is not None:
            return {"logits": option_ids[:, :, 0].float() + 10.0 * view[:, None]}
        return {"logits": self.table[view, text_ids[:, 0]]}


def open_ended_batches(questions, answers, view=0, batch_size=3):
    for start in range(0, len(questions), batch_size):
        rows = range(start, min(start + batch_size, len(questions)))
        yield {
            "video": torch.full((len(rows), 1), float(view)),
            "text_ids": torch.tensor([[questions[i], 0] for i in rows]),
            "text_mask": torch.ones(len(rows), 2, dtype=torch.long),
            "answer_index": torch.tensor([answers[i] for i in rows]),
            "num_corrupt": 1 if start == 0 else 0,
        }


def test_open_ended_accuracy_counts_out_of_vocabulary_answers_as_wrong():
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(1, 8, 5, generator=generator)  # 8 questions, 5 answers
    questions = [0, 1, 2, 3, 4, 5, 6, 7, 3]
    predicted = [int(table[0, q].argmax()) for q in questions]
    # right, right, wrong, outside the vocabulary (the prediction cannot match), right, ...
    answers = [predicted[0], predicted[1], (predicted[2] + 1) % 5, -1, predicted[4], -1]
    answers += [(predicted[6] + 2) % 5, predicted[7], predicted[8]]
    correct = sum(a == p for a, p in zip(answers, predicted, strict=True))
    model = TableModel(table).train()

    metrics = QuestionAnswering().evaluate(
        model, lambda view: open_ended_batches(questions, answers), torch.device("cpu"), "val"
    )

    assert metrics["val/accuracy"] == pytest.approx(100.0 * correct / len(questions))
    assert correct == 5 and metrics["val/num_out_of_vocabulary"] == 2.0
    assert metrics["val/num_items"] == 9.0 and metrics["val/num_corrupt"] == 1.0
    assert model.training and set(model.modes) == {"qa"}


def test_multiple_choice_accuracy_picks_the_highest_option_logit():
    option_scores = [[3, 1, 4, 1, 5], [9, 2, 6, 5, 3], [5, 8, 9, 7, 9.5], [2, 3, 8, 4, 6]]
    answers = [4, 0, 3, 2]  # right, right, wrong (4 is best), right
    batch = {
        "video": torch.zeros(4, 1),
        "option_ids": torch.tensor(option_scores)[:, :, None].expand(4, 5, 3).clone(),
        "option_mask": torch.ones(4, 5, 3, dtype=torch.long),
        "answer_index": torch.tensor(answers),
        "text_ids": torch.zeros(4, 2, dtype=torch.long),  # not fed: only input_keys are
    }
    best = [max(range(5), key=lambda k, row=row: row[k]) for row in option_scores]
    expected = 100.0 * sum(b == a for b, a in zip(best, answers, strict=True)) / 4

    task = QuestionAnswering(input_keys=MC_KEYS)
    metrics = task.evaluate(TableModel(None), lambda view: [batch], torch.device("cpu"), "test")

    assert metrics["test/accuracy"] == pytest.approx(expected) == 75.0
    assert metrics["test/num_out_of_vocabulary"] == 0.0


def test_views_average_the_softmax_probabilities():
    # One question, 3 answers. View 0 prefers answer 0 by a little, view 1 answer 1 by a lot:
    # the mean of the probabilities (not of the logits' argmaxes) decides.
    table = torch.tensor([[[2.0, 1.9, -5.0]], [[0.0, 3.0, 0.5]]])
    mean = (table[0, 0].softmax(0) + table[1, 0].softmax(0)) / 2
    assert int(mean.argmax()) == 1
    task = QuestionAnswering()

    def batches(view):
        return open_ended_batches([0], [0], view=0 if view is None else view)

    one_view = task.evaluate(TableModel(table), batches, torch.device("cpu"), "val")
    two_views = task.evaluate(TableModel(table), batches, torch.device("cpu"), "val", views=2)
    assert one_view["val/accuracy"] == 100.0 and two_views["val/accuracy"] == 0.0


def test_an_answer_index_outside_the_logits_is_named():
    table = torch.zeros(1, 2, 4)
    task = QuestionAnswering()
    with pytest.raises(ValueError, match=r"answer_index \[4\] outside \[-1, 4\)"):
        task.evaluate(TableModel(table), lambda v: open_ended_batches([0, 1], [0, 4]), "cpu", "v")
    with pytest.raises(ValueError, match="empty"):
        task.evaluate(TableModel(table), lambda v: [], "cpu", "v")
