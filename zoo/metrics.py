"""Metrics the zoo models share: text recognition, detection boxes, maps, ranking, embeddings.
Each is the textbook definition, in numpy, with no model-specific decoding."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance (insertions, deletions, substitutions all cost 1)."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def character_error_rate(predictions: Sequence[str], truths: Sequence[str]) -> float:
    """Total edit distance over total truth length (the corpus CER)."""
    errors = sum(edit_distance(p, t) for p, t in zip(predictions, truths, strict=True))
    return errors / max(1, sum(len(t) for t in truths))


def exact_match(predictions: Sequence[str], truths: Sequence[str]) -> float:
    return float(np.mean([p == t for p, t in zip(predictions, truths, strict=True)])) if truths else 0.0


def ctc_greedy_decode(logits: np.ndarray, blank: int = 0) -> list[int]:
    """Best path: argmax per step, repeats merged, blanks dropped. ``logits``: (steps, classes)."""
    best = np.asarray(logits).argmax(-1).reshape(-1)
    kept = [int(c) for i, c in enumerate(best) if c != blank and (i == 0 or c != best[i - 1])]
    return kept


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (n, 4) with every box in ``b`` (m, 4), boxes as x1, y1, x2, y2."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda boxes: (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def matched_boxes(predicted: np.ndarray, truth: np.ndarray, iou: float = 0.5) -> int:
    """Greedy one-to-one matching at ``iou`` (highest IoU first): the number of true positives."""
    overlaps = box_iou(predicted, truth)
    matched = 0
    while overlaps.size and overlaps.max() >= iou:
        i, j = np.unravel_index(overlaps.argmax(), overlaps.shape)
        overlaps[i, :] = -1
        overlaps[:, j] = -1
        matched += 1
    return matched


def box_f1(predicted: Sequence[np.ndarray], truth: Sequence[np.ndarray], iou: float = 0.5) -> dict[str, float]:
    """Precision, recall and F1 over a set of images, boxes matched one to one at ``iou``."""
    hits = sum(matched_boxes(p, t, iou) for p, t in zip(predicted, truth, strict=True))
    n_predicted = sum(len(np.asarray(p).reshape(-1, 4)) for p in predicted)
    n_truth = sum(len(np.asarray(t).reshape(-1, 4)) for t in truth)
    precision = hits / n_predicted if n_predicted else float(n_truth == 0)
    recall = hits / n_truth if n_truth else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def binary_f1(predicted: np.ndarray, truth: np.ndarray) -> float:
    """F1 of two boolean maps (pixels set in both over the mean of the counts)."""
    predicted, truth = np.asarray(predicted, bool), np.asarray(truth, bool)
    both = np.logical_and(predicted, truth).sum()
    total = predicted.sum() + truth.sum()
    return float(2 * both / total) if total else 1.0


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a positive outranks a negative (ties count half)."""
    scores, labels = np.asarray(scores, np.float64).ravel(), np.asarray(labels, bool).ravel()
    positives, negatives = scores[labels], scores[~labels]
    if not len(positives) or not len(negatives):
        return float("nan")
    greater = (positives[:, None] > negatives[None, :]).sum()
    ties = (positives[:, None] == negatives[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(positives) * len(negatives)))


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (n, d) arrays."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return np.sum(a * b, axis=-1) / np.where(norms > 0, norms, 1)


def top_k_overlap(candidate: np.ndarray, reference: np.ndarray, k: int = 5) -> float:
    """Mean share of each item's k nearest neighbours (cosine, itself excluded) that the candidate
    embeddings and the reference embeddings agree on."""

    def neighbours(e: np.ndarray) -> np.ndarray:
        e = np.asarray(e, np.float64)
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        similarity = e @ e.T
        np.fill_diagonal(similarity, -np.inf)
        return np.argsort(-similarity, axis=1, kind="stable")[:, :k]

    a, b = neighbours(candidate), neighbours(reference)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b, strict=True)]))


def sqnr_db(candidate: np.ndarray, reference: np.ndarray) -> float:
    """Signal to quantization-noise ratio of ``candidate`` against ``reference``, in dB."""
    reference = np.asarray(reference, np.float64)
    noise = np.sum((np.asarray(candidate, np.float64) - reference) ** 2)
    return float(10 * np.log10(np.sum(reference**2) / noise)) if noise > 0 else float("inf")
