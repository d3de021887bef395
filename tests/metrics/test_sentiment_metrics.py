"""sentiment_metrics against values computed by hand on small vectors."""

import math

import pytest
import torch

from meltr.metrics.sentiment import sentiment_metrics

LABELS = torch.tensor([-3.0, -1.2, 0.0, 0.0, 1.4, 2.6])
PREDICTIONS = torch.tensor([-3.6, 0.4, -0.2, 0.5, 0.0, 1.5])


def test_regression_and_class_metrics_by_hand():
    metrics = sentiment_metrics(PREDICTIONS, LABELS)
    # |errors| = 0.6, 1.6, 0.2, 0.5, 1.4, 1.1 -> 5.4 / 6.
    assert metrics["mae"] == pytest.approx(0.9, abs=1e-6)
    # 7 classes: predictions -3, 0, 0, 0 (0.5 rounds half to even), 0, 2 vs labels
    # -3, -1, 0, 0, 1, 3 -> 3 of 6 (half away from zero would give 2 of 6).
    assert metrics["acc7"] == pytest.approx(50.0)
    # 5 classes (clip to [-2, 2]): -2, 0, 0, 0, 0, 2 vs -2, -1, 0, 0, 1, 2 -> 4 of 6.
    assert metrics["acc5"] == pytest.approx(400 / 6)
    # Non-zero labels (samples 0, 1, 4, 5): positive? labels F F T T, predictions (> 0) F T F T:
    # the prediction 0.0 for label 1.4 is negative here. Both classes' F1 are 2/4.
    assert metrics["acc2_nonzero"] == pytest.approx(50.0)
    assert metrics["f1_nonzero"] == pytest.approx(50.0)
    # Has-zero (>= 0): labels F F T T T T, predictions F T F T T T -> 4 of 6 right;
    # F1: class < 0 (support 2) 2*1 / (2*1 + 1 + 1) = 0.5, class >= 0 (support 4)
    # 2*3 / (2*3 + 1 + 1) = 0.75, weighted (2 * 0.5 + 4 * 0.75) / 6 (macro would be 62.5).
    assert metrics["acc2_haszero"] == pytest.approx(400 / 6)
    assert metrics["f1_haszero"] == pytest.approx(400 / 6)
    assert set(metrics) == {
        "mae",
        "corr",
        "acc7",
        "acc5",
        "acc2_nonzero",
        "f1_nonzero",
        "acc2_haszero",
        "f1_haszero",
    }


def test_pearson_correlation_by_hand():
    # Centred x = (-1, 0, 1), y = (-1, 1, 0): sum xy = 1, |x|^2 = |y|^2 = 2 -> 0.5.
    corr = sentiment_metrics(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 3.0, 2.0]))["corr"]
    assert corr == pytest.approx(0.5)
    labels = torch.tensor([-2.0, 0.5, 1.0, 3.0])
    assert sentiment_metrics(2 * labels + 1, labels)["corr"] == pytest.approx(1.0)
    assert sentiment_metrics(-labels, labels)["corr"] == pytest.approx(-1.0)
    assert math.isnan(sentiment_metrics(torch.ones(4), labels)["corr"])


def test_weighted_f1_by_hand_with_unequal_supports():
    labels = torch.tensor([2.0, 1.0, 1.0, 0.5, 3.0, -1.0, -2.0])  # 5 positive, 2 negative
    predictions = torch.tensor([1.0, 1.0, -1.0, 0.5, -0.5, -1.0, 1.0])
    # Positive: TP 3, FP 1, FN 2 -> P 3/4, R 3/5, F1 2/3. Negative: TP 1, FP 2, FN 1 ->
    # P 1/3, R 1/2, F1 0.4. Weighted by support: (5 * 2/3 + 2 * 0.4) / 7; accuracy 4/7.
    expected_f1 = 100 * (5 * 2 / 3 + 2 * 0.4) / 7
    metrics = sentiment_metrics(predictions, labels)
    assert metrics["f1_haszero"] == pytest.approx(expected_f1)
    assert metrics["f1_nonzero"] == pytest.approx(expected_f1)  # no zero label or prediction
    assert metrics["acc2_haszero"] == pytest.approx(400 / 7)


def test_a_class_only_predicted_has_no_weight_and_column_inputs_are_accepted():
    # Labels all positive; one negative prediction: positive F1 = 2*2 / (2*2 + 0 + 1) = 0.8.
    metrics = sentiment_metrics(torch.tensor([[1.0], [-1.0], [2.0]]), torch.tensor([1.0, 2.0, 3.0]))
    assert metrics["f1_nonzero"] == pytest.approx(80.0)
    assert metrics["acc2_nonzero"] == pytest.approx(200 / 3)


def test_all_zero_labels_leave_the_non_zero_metrics_undefined():
    metrics = sentiment_metrics(torch.tensor([0.5, -0.5]), torch.zeros(2))
    assert math.isnan(metrics["acc2_nonzero"]) and math.isnan(metrics["f1_nonzero"])
    assert metrics["acc2_haszero"] == pytest.approx(50.0)


@pytest.mark.parametrize(
    ("predictions", "labels", "message"),
    [
        (
            torch.zeros(3),
            torch.zeros(4),
            r"same N > 0 scores; got predictions \(3,\), labels \(4,\)",
        ),
        (torch.zeros(3, 2), torch.zeros(3), r"real \[N\] or \[N, 1\]; got predictions \(3, 2\)"),
        (torch.zeros(0), torch.zeros(0), "same N > 0"),
        (torch.tensor([0.0, float("nan")]), torch.zeros(2), "predictions contain NaN"),
    ],
)
def test_bad_input(predictions, labels, message):
    with pytest.raises(ValueError, match=message):
        sentiment_metrics(predictions, labels)
