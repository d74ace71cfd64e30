"""Classification metrics from summed counts: loss, accuracy, precision, recall and F1 of the positive class,
and the confusion matrix."""

from __future__ import annotations


def metrics_for(labels: tuple[str, ...], positive: str, sums: dict[str, float]) -> dict:
    """Loss, accuracy, precision/recall/F1 of the positive class, and the confusion matrix (rows = truth)."""
    k = len(labels)
    cm = [[int(sums[f"cm_{a}_{b}"]) for b in range(k)] for a in range(k)]
    count = max(1, int(sums["count"]))
    pos = labels.index(positive) if positive else k - 1
    tp = cm[pos][pos]
    predicted = sum(cm[a][pos] for a in range(k))
    actual = sum(cm[pos])
    precision = tp / predicted if predicted else 0.0
    recall = tp / actual if actual else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"loss": sums["loss_sum"] / count, "accuracy": sum(cm[i][i] for i in range(k)) / count,
            "precision": precision, "recall": recall, "f1": f1, "examples": int(sums["count"]),
            "positive": labels[pos], "labels": list(labels), "confusion": cm}
