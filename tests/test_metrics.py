"""Metrics in one place (pizzactl.train.metrics): hand-worked examples and scikit-learn as reference."""

from __future__ import annotations

import numpy as np
import pytest

from pizzactl.train.metrics import (
    best_threshold,
    binary_metrics,
    classification_metrics,
    confusion_matrix,
    log_loss,
    loss_and_accuracy,
    multiclass_metrics,
    per_class,
    predicted_labels,
    roc_auc,
    validation_metrics,
)

# --- binary ------------------------------------------------------------------------------


def test_metrics_on_a_hand_worked_example():
    m = binary_metrics([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], threshold=0.5)
    # predictions 0,0,0,1: tn=2 fp=0 fn=1 tp=1
    assert m["confusion_matrix"] == [[2, 0], [1, 1]]
    assert m["accuracy"] == 0.75 and m["precision"] == 1.0 and m["recall"] == 0.5
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["roc_auc"] == 0.75  # 3 of the 4 (positive, negative) pairs are ordered right
    assert m["n"] == 4


def test_threshold_is_inclusive_like_the_exported_graph():
    m = binary_metrics([1, 0], [0.3, 0.29], threshold=0.3)
    assert m["confusion_matrix"] == [[1, 0], [0, 1]]


def test_roc_auc_counts_ties_as_half_and_needs_both_classes():
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert roc_auc([0, 1, 1], [0.2, 0.2, 0.9]) == 0.75
    assert roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert roc_auc([1, 1], [0.2, 0.9]) is None


def test_zero_denominators_give_zero_not_nan():
    m = binary_metrics([0, 0, 0], [0.1, 0.2, 0.3])
    assert (m["precision"], m["recall"], m["f1"]) == (0.0, 0.0, 0.0)
    assert m["accuracy"] == 1.0 and m["roc_auc"] is None


def test_metrics_agree_with_scikit_learn_on_random_scores_with_ties():
    import sklearn.metrics as sk  # a dev dependency

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.round(np.clip(rng.normal(0.35 + 0.3 * y, 0.25), 0, 1), 2)  # rounding makes ties
    m = binary_metrics(y, p, threshold=0.45)
    pred = (p >= 0.45).astype(int)
    assert m["accuracy"] == pytest.approx(sk.accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(sk.precision_score(y, pred))
    assert m["recall"] == pytest.approx(sk.recall_score(y, pred))
    assert m["f1"] == pytest.approx(sk.f1_score(y, pred))
    assert m["roc_auc"] == pytest.approx(sk.roc_auc_score(y, p))
    assert m["confusion_matrix"] == sk.confusion_matrix(y, pred).tolist()


def test_validation_metrics_match_a_hand_count():
    y = [0, 0, 0, 1, 1, 1, 1]
    p = [0.1, 0.6, 0.2, 0.9, 0.8, 0.4, 0.7]  # one false positive, one false negative
    m = validation_metrics(y, p)
    assert m["confusion_matrix"] == [[2, 1], [1, 3]]
    assert m["val_accuracy"] == pytest.approx(5 / 7)
    assert m["val_precision"] == pytest.approx(3 / 4)
    assert m["val_recall"] == pytest.approx(3 / 4)
    assert m["n_val"] == 7
    assert 0.5 < m["val_roc_auc"] <= 1.0


def test_loss_and_accuracy_is_what_validation_reports():
    y = [0, 1, 1, 0]
    p = [0.2, 0.9, 0.4, 0.0]  # 0.0 is clipped, not -inf
    loss, acc = loss_and_accuracy(y, p)
    expected = -np.mean(np.log([0.8, 0.9, 0.4, 1 - 1e-7]))
    assert loss == pytest.approx(expected) and acc == 0.75
    assert validation_metrics(y, p)["val_loss"] == pytest.approx(loss)


# --- N classes: what a softmax head will report -----------------------------------------------


def test_n_class_confusion_per_class_and_log_loss_agree_with_scikit_learn():
    import sklearn.metrics as sk

    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 300)
    logits = rng.normal(size=(300, 4)) + 1.5 * np.eye(4)[y]
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    pred = predicted_labels(p)
    assert np.array_equal(pred, p.argmax(axis=1))
    matrix = confusion_matrix(y, pred, 4)
    assert matrix == sk.confusion_matrix(y, pred, labels=range(4)).tolist()
    precision, recall, f1, support = sk.precision_recall_fscore_support(y, pred, labels=range(4), zero_division=0)
    for k, row in enumerate(per_class(matrix)):
        assert row["precision"] == pytest.approx(precision[k])
        assert row["recall"] == pytest.approx(recall[k])
        assert row["f1"] == pytest.approx(f1[k])
        assert row["support"] == support[k]
    assert log_loss(y, p) == pytest.approx(sk.log_loss(y, p, labels=range(4)))
    assert loss_and_accuracy(y, p)[1] == pytest.approx(sk.accuracy_score(y, pred))


def test_a_column_of_probabilities_is_binary():
    assert predicted_labels(np.array([[0.2], [0.7]])).tolist() == [0, 1]
    assert log_loss([0, 1], np.array([[0.2], [0.7]])) == pytest.approx(log_loss([0, 1], [0.2, 0.7]))


def test_multiclass_figures_are_scikit_learns_macro_averages_and_one_vs_rest_auc():
    import sklearn.metrics as sk

    rng = np.random.default_rng(2)
    y = rng.integers(0, 5, 400)
    logits = rng.normal(size=(400, 5)) + 1.2 * np.eye(5)[y]
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    pred = p.argmax(axis=1)
    m = classification_metrics(y, p, classes=["a", "b", "c", "d", "e"])
    assert m["accuracy"] == pytest.approx(sk.accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(sk.precision_score(y, pred, average="macro"))
    assert m["recall"] == pytest.approx(sk.recall_score(y, pred, average="macro"))
    assert m["f1"] == m["macro_f1"] == pytest.approx(sk.f1_score(y, pred, average="macro"))
    assert m["roc_auc"] == pytest.approx(sk.roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert m["per_class"]["c"]["roc_auc"] == pytest.approx(sk.roc_auc_score(y == 2, p[:, 2]))
    assert m["confusion_matrix"] == sk.confusion_matrix(y, pred).tolist()


def test_one_vs_rest_auc_averages_only_the_classes_where_it_is_defined():
    y = [0, 0, 1, 1]  # class 2 never occurs
    p = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4]])
    m = multiclass_metrics(y, p)
    assert m["per_class"][2]["roc_auc"] is None
    assert m["roc_auc"] == pytest.approx((m["per_class"][0]["roc_auc"] + m["per_class"][1]["roc_auc"]) / 2)
    assert m["confusion_matrix"] == [[2, 0, 0], [0, 1, 1], [0, 0, 0]]


def test_binary_keeps_its_figures_and_gains_per_class_and_macro_f1():
    y, p = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    m = classification_metrics(y, p, classes=["not_pizza", "pizza"])
    assert {k: m[k] for k in binary_metrics(y, p)} == binary_metrics(y, p)  # the same numbers as before
    assert m["per_class"]["pizza"]["f1"] == m["f1"]
    assert m["per_class"]["not_pizza"]["roc_auc"] == m["per_class"]["pizza"]["roc_auc"] == m["roc_auc"]
    assert m["macro_f1"] == pytest.approx((m["per_class"]["pizza"]["f1"] + m["per_class"]["not_pizza"]["f1"]) / 2)


def test_one_hot_labels_are_class_indices():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    assert loss_and_accuracy(np.eye(3)[[0, 2]], p) == loss_and_accuracy([0, 2], p)
    assert validation_metrics(np.eye(3)[[0, 2]], p)["threshold"] is None


def test_the_threshold_is_the_most_accurate_and_nearest_half_among_ties():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.35, 0.4, 0.9])  # 0.5 misses two pizzas; 0.31-0.35 gets all
    assert 0.3 < best_threshold(y, p) <= 0.35
    assert best_threshold(np.array([0, 1]), np.array([0.1, 0.9])) == 0.5
