"""zoo.metrics against hand-computed values."""

import numpy as np
import pytest

from zoo import metrics


def test_edit_distance_and_cer():
    assert metrics.edit_distance("kitten", "sitting") == 3
    assert metrics.edit_distance("", "abc") == 3
    assert metrics.edit_distance("abc", "abc") == 0
    # 1 substitution + 1 deletion over 3 + 4 truth characters
    assert metrics.character_error_rate(["abd", "wxy"], ["abc", "wxyz"]) == pytest.approx(2 / 7)
    assert metrics.exact_match(["a", "b", "c"], ["a", "x", "c"]) == pytest.approx(2 / 3)


def test_ctc_greedy_decode_merges_repeats_and_drops_blanks():
    path = [0, 3, 3, 0, 3, 5, 5, 0]
    logits = np.eye(6)[path]
    assert metrics.ctc_greedy_decode(logits) == [3, 3, 5]


def test_box_iou_and_matching():
    a = np.array([[0, 0, 2, 2]])
    b = np.array([[1, 1, 3, 3], [0, 0, 2, 2], [5, 5, 6, 6]])
    np.testing.assert_allclose(metrics.box_iou(a, b), [[1 / 7, 1.0, 0.0]])
    predicted = [np.array([[0, 0, 2, 2], [0, 0, 2, 1.9], [10, 10, 11, 11]])]
    truth = [np.array([[0, 0, 2, 2], [20, 20, 21, 21]])]
    # one truth box matched once (the duplicate prediction is a false positive): P 1/3, R 1/2
    scores = metrics.box_f1(predicted, truth)
    assert scores["precision"] == pytest.approx(1 / 3)
    assert scores["recall"] == pytest.approx(1 / 2)
    assert scores["f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))


def test_binary_f1_roc_auc_cosine_topk_sqnr():
    assert metrics.binary_f1(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0])) == pytest.approx(0.5)
    # positives 0.9, 0.4; negatives 0.4, 0.1: pairs won 1 + 1 + 0.5 (tie) + 1 of 4
    assert metrics.roc_auc(np.array([0.9, 0.4, 0.4, 0.1]), np.array([1, 1, 0, 0])) == pytest.approx(3.5 / 4)
    np.testing.assert_allclose(metrics.cosine(np.array([[1.0, 0], [1, 1]]), np.array([[0.0, 1], [2, 2]])), [0.0, 1.0])
    points = np.array([[1.0, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]])
    assert metrics.top_k_overlap(points, points, k=1) == 1.0
    swapped = points[:, ::-1]  # the same neighbours: a reflection keeps every angle
    assert metrics.top_k_overlap(swapped, points, k=1) == 1.0
    assert metrics.sqnr_db(np.array([1.0, 1.1]), np.array([1.0, 1.0])) == pytest.approx(10 * np.log10(2 / 0.01))
