"""Classification metrics, in numpy, for training (validation) and `pizzactl evaluate` alike.

Probabilities come in one of two shapes, and every function here takes both:

* binary: `p` is [N], P(class 1), and a prediction is class 1 when `p >= threshold` (as in
  the exported graph);
* N classes: `p` is [N, K] (rows sum to 1), and a prediction is the arg max.

True labels are class indices [N] (or one-hot [N, K], as the softmax head trains on).

The confusion matrix is K x K, rows the true class and columns the predicted class, in class
order: for two classes `[[tn, fp], [fn, tp]]`. Precision, recall or F1 with a zero
denominator are 0.0, as scikit-learn's default. No scikit-learn at run time; the tests compare
against it.
"""

from __future__ import annotations

from typing import Any

EPSILON = 1e-7  # probabilities are clipped to [EPSILON, 1 - EPSILON] for the log loss
THRESHOLD = 0.5


def _arrays(y_true, p):
    import numpy as np

    y_true = np.asarray(y_true)
    y_true = (
        (np.argmax(y_true, axis=1) if y_true.ndim == 2 and y_true.shape[1] > 1 else y_true).astype(np.int64).ravel()
    )
    p = np.asarray(p, dtype=np.float64)
    if p.ndim == 2 and p.shape[1] == 1:
        p = p.ravel()
    if p.shape[0] != y_true.shape[0]:
        raise ValueError(f"y_true {y_true.shape} and probabilities {p.shape} differ in length")
    return y_true, p


def predicted_labels(p, threshold: float = THRESHOLD):
    """Class indices: `p >= threshold` for binary [N] probabilities, the arg max for [N, K]."""
    import numpy as np

    p = np.asarray(p, dtype=np.float64)
    if p.ndim == 2 and p.shape[1] > 1:
        return np.argmax(p, axis=1)
    return (p.ravel() >= threshold).astype(np.int64)


def log_loss(y_true, p) -> float:
    """Mean cross-entropy: binary for [N] probabilities, categorical for [N, K]."""
    import numpy as np

    y_true, p = _arrays(y_true, p)
    q = np.clip(p, EPSILON, 1 - EPSILON)
    if q.ndim == 2:
        return float(-np.mean(np.log(q[np.arange(len(y_true)), y_true])))
    return float(-np.mean(y_true * np.log(q) + (1 - y_true) * np.log(1 - q)))


def loss_and_accuracy(y_true, p, threshold: float = THRESHOLD) -> tuple[float, float]:
    """(log loss, accuracy): what every training phase reports as val_loss / val_accuracy."""
    import numpy as np

    y_true, p = _arrays(y_true, p)
    return log_loss(y_true, p), float(np.mean(predicted_labels(p, threshold) == y_true))


def confusion_matrix(y_true, y_pred, n_classes: int) -> list[list[int]]:
    """K x K counts: rows the true class, columns the predicted class."""
    import numpy as np

    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return matrix.tolist()


def per_class(matrix: list[list[int]]) -> list[dict[str, Any]]:
    """Precision, recall, F1 and support of each class, from a confusion matrix."""
    out = []
    for k in range(len(matrix)):
        tp = matrix[k][k]
        predicted = sum(row[k] for row in matrix)
        actual = sum(matrix[k])
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out.append({"precision": precision, "recall": recall, "f1": f1, "support": actual})
    return out


def _average_ranks(values):
    """1-based ranks with ties given their average rank (like scipy.stats.rankdata)."""
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + 1 + end) / 2.0
    return ranks


def roc_auc(y_true, y_score) -> float | None:
    """Area under the ROC curve via the rank-sum (Mann-Whitney U) identity; None if one class is absent.

    AUC = P(score of a random positive > score of a random negative), ties counting one half.
    """
    import numpy as np

    y_true = np.asarray(y_true).astype(bool)
    n_pos = int(y_true.sum())
    n_neg = len(y_true) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _average_ranks(y_score)
    return float((ranks[y_true].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def binary_metrics(y_true, y_prob, threshold: float = THRESHOLD) -> dict[str, Any]:
    """Accuracy, precision, recall, F1 (of the positive class 1), ROC AUC and the 2 x 2 confusion matrix."""
    y_true, y_prob = _arrays(y_true, y_prob)
    if y_prob.ndim != 1:
        raise ValueError(f"binary_metrics takes P(class 1) of shape [N], not {y_prob.shape}")
    matrix = confusion_matrix(y_true, predicted_labels(y_prob, threshold), 2)
    positive = per_class(matrix)[1]
    n = len(y_true)
    return {
        "n": n,
        "accuracy": (matrix[0][0] + matrix[1][1]) / n if n else 0.0,
        "precision": positive["precision"],
        "recall": positive["recall"],
        "f1": positive["f1"],
        "roc_auc": roc_auc(y_true, y_prob),
        "confusion_matrix": matrix,
    }


def best_threshold(y_true, p, grid_step: float = 0.01) -> float:
    """The binary threshold with the highest accuracy on (y_true, p); among ties, the one
    nearest 0.5. Chosen on validation photos, it is scored on others."""
    import numpy as np

    y_true, p = _arrays(y_true, p)
    grid = np.round(np.arange(0.05, 0.95 + grid_step / 2, grid_step), 4)
    accuracy = np.array([np.mean((p >= t) == (y_true == 1)) for t in grid])
    best = np.flatnonzero(accuracy == accuracy.max())
    return float(grid[best[np.argmin(np.abs(grid[best] - THRESHOLD))]])


def multiclass_metrics(y_true, p) -> dict[str, Any]:
    """Accuracy, macro precision/recall/F1, macro one-vs-rest ROC AUC and the K x K confusion matrix.

    A class's ROC AUC is its probability column against "this class or not"; the macro AUC
    averages the classes where that is defined (the class and some other class are present),
    None if it is defined for none.
    """
    y_true, p = _arrays(y_true, p)
    if p.ndim != 2:
        raise ValueError(f"multiclass_metrics takes probabilities of shape [N, K], not {p.shape}")
    matrix = confusion_matrix(y_true, predicted_labels(p), p.shape[1])
    classes = per_class(matrix)
    for k, row in enumerate(classes):
        row["roc_auc"] = roc_auc(y_true == k, p[:, k])
    aucs = [c["roc_auc"] for c in classes if c["roc_auc"] is not None]
    n = len(y_true)
    return {
        "n": n,
        "accuracy": sum(matrix[k][k] for k in range(len(matrix))) / n if n else 0.0,
        "precision": _mean([c["precision"] for c in classes]),
        "recall": _mean([c["recall"] for c in classes]),
        "f1": _mean([c["f1"] for c in classes]),
        "roc_auc": _mean(aucs) if aucs else None,
        "confusion_matrix": matrix,
        "per_class": classes,
    }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def classification_metrics(y_true, p, threshold: float = THRESHOLD, classes=None) -> dict[str, Any]:
    """The figures `evaluate` and a run's metrics.json report, for two classes or more.

    Two classes ([N] P(class 1)): `binary_metrics` (precision, recall, F1 of class 1, as
    always). More ([N, K]): `multiclass_metrics` (macro averages). Both add `macro_f1` and
    `per_class` (precision, recall, F1, support and one-vs-rest ROC AUC of each class), keyed
    by the names in `classes` when given.
    """
    y_true, p = _arrays(y_true, p)
    if p.ndim == 1:
        m = binary_metrics(y_true, p, threshold)
        rows = per_class(m["confusion_matrix"])
        rows[0]["roc_auc"] = roc_auc(y_true == 0, 1.0 - p)
        rows[1]["roc_auc"] = m["roc_auc"]
        m["per_class"] = rows
    else:
        m = multiclass_metrics(y_true, p)
    m["macro_f1"] = _mean([c["f1"] for c in m["per_class"]])
    if classes is not None:
        m["per_class"] = {str(name): row for name, row in zip(classes, m["per_class"], strict=True)}
    return m


def validation_metrics(y_true, p, threshold: float = THRESHOLD, classes=None) -> dict[str, Any]:
    """A run's metrics.json figures: `classification_metrics` and the log loss, prefixed `val_`.

    For more than two classes precision, recall and F1 are macro averages and there is no threshold.
    """
    m = classification_metrics(y_true, p, threshold, classes)
    binary = _arrays(y_true, p)[1].ndim == 1
    return {
        "val_accuracy": float(m["accuracy"]),
        "val_precision": float(m["precision"]),
        "val_recall": float(m["recall"]),
        "val_f1": float(m["f1"]),
        "val_roc_auc": m["roc_auc"],
        "val_loss": log_loss(y_true, p),
        "confusion_matrix": m["confusion_matrix"],
        "n_val": m["n"],
        "threshold": threshold if binary else None,
        "val_macro_f1": float(m["macro_f1"]),
        "per_class": m["per_class"],
    }
