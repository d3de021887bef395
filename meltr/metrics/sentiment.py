"""CMU-MOSI sentiment-regression metrics as MMSA (thuiar/MMSA, ``MetricsTop``) reports them.

Sentiment scores live in ``[-3, 3]`` (negative to positive). Accuracies and F1 are in percent,
MAE and the correlation in label units: the scale of MELTR's Table 6 ("BA 84.6 F1 84.6 MAE 0.781
Corr 0.767"). Which binary variant that table reports (non-zero or has-zero) is not published.
"""

from __future__ import annotations

import torch
from torch import Tensor


def sentiment_metrics(predictions: Tensor, labels: Tensor) -> dict[str, float]:
    """MAE, Pearson correlation, 7- and 5-class and binary accuracies and weighted F1.

    ``predictions`` and ``labels`` are real sentiment scores of shape ``[N]`` or ``[N, 1]``.
    Keys (units):

    - ``mae``: mean ``|prediction - label|`` on the raw (unclipped) values.
    - ``corr``: Pearson correlation of the raw values; NaN when either side is constant.
    - ``acc7`` (%): ``round(clip(., -3, 3))`` equal for prediction and label (7 classes);
      ``acc5`` (%): the same with ``clip(., -2, 2)`` (5 classes). Rounding is half to even, as
      numpy's and torch's.
    - ``acc2_nonzero``, ``f1_nonzero`` (%): only samples with label != 0, positive (> 0) vs
      negative (a prediction of exactly 0 counts as negative); NaN when every label is 0.
    - ``acc2_haszero``, ``f1_haszero`` (%): all samples, >= 0 vs < 0 for labels and predictions.

    F1 is the support-weighted mean of the two classes' F1 (scikit-learn's ``average="weighted"``:
    each class present among the labels, weighted by its count there).
    """
    predictions, labels = _validate(predictions, labels)
    metrics = {
        "mae": (predictions - labels).abs().mean().item(),
        "corr": _pearson(predictions, labels),
        "acc7": _rounded_class_accuracy(predictions, labels, bound=3.0),
        "acc5": _rounded_class_accuracy(predictions, labels, bound=2.0),
    }
    nonzero = labels != 0
    if nonzero.any():
        positive_label, positive_prediction = labels[nonzero] > 0, predictions[nonzero] > 0
        metrics["acc2_nonzero"] = _accuracy(positive_prediction, positive_label)
        metrics["f1_nonzero"] = _weighted_f1(positive_prediction, positive_label)
    else:
        metrics["acc2_nonzero"] = metrics["f1_nonzero"] = float("nan")
    non_negative_label, non_negative_prediction = labels >= 0, predictions >= 0
    metrics["acc2_haszero"] = _accuracy(non_negative_prediction, non_negative_label)
    metrics["f1_haszero"] = _weighted_f1(non_negative_prediction, non_negative_label)
    return metrics


def _pearson(x: Tensor, y: Tensor) -> float:
    x, y = x - x.mean(), y - y.mean()
    denominator = x.norm() * y.norm()
    if denominator == 0:
        return float("nan")
    return (x @ y / denominator).item()


def _rounded_class_accuracy(predictions: Tensor, labels: Tensor, bound: float) -> float:
    predicted_class = predictions.clamp(-bound, bound).round()
    true_class = labels.clamp(-bound, bound).round()
    return _accuracy(predicted_class, true_class)


def _accuracy(predicted: Tensor, true: Tensor) -> float:
    return 100.0 * (predicted == true).double().mean().item()


def _weighted_f1(predicted: Tensor, true: Tensor) -> float:
    """Support-weighted F1 (percent) of booleans; a class absent from ``true`` weighs 0."""
    total = 0.0
    for cls in (False, True):
        support = int((true == cls).sum())
        if support == 0:
            continue
        true_positives = int(((predicted == cls) & (true == cls)).sum())
        false_positives = int(((predicted == cls) & (true != cls)).sum())
        false_negatives = support - true_positives
        # 2PR / (P + R) written in counts; 0 when nothing of the class is predicted right.
        f1 = 2 * true_positives / (2 * true_positives + false_positives + false_negatives)
        total += support * f1
    return 100.0 * total / len(true)


def _validate(predictions: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    predictions = torch.as_tensor(predictions).detach().cpu()
    labels = torch.as_tensor(labels).detach().cpu()
    shapes = f"predictions {tuple(predictions.shape)}, labels {tuple(labels.shape)}"
    flat = []
    for values in (predictions, labels):
        is_column = values.dim() == 2 and values.shape[1] == 1
        if not (values.dim() == 1 or is_column) or values.is_complex():
            raise ValueError(f"predictions and labels must be real [N] or [N, 1]; got {shapes}")
        flat.append(values.reshape(-1).double())
    predictions, labels = flat
    if len(predictions) != len(labels) or len(labels) == 0:
        raise ValueError(f"predictions and labels must hold the same N > 0 scores; got {shapes}")
    for name, values in (("predictions", predictions), ("labels", labels)):
        if not torch.isfinite(values).all():
            raise ValueError(f"{name} contain NaN or infinite values")
    return predictions, labels
