"""Class imbalance: are some classes so rare that the model barely trains on them?

Classes are counted over the distinct samples of the run (the last label
recorded for each sample id; label -1, unknown, is left out). A class is named
under-represented when its count is far below the typical (median) class count:

    count < 0.25 * median   and   count < median - 3 * sqrt(median)

The first condition is the imbalance itself (with two classes: about 1:7 or
worse); the second keeps the Poisson noise of small datasets from naming a
class (nothing is named while the median count is below 10). Mild imbalance
(breast_cancer 212/357, wine 48/59/71) names nothing. A class the model has an
output for but no sample of has count 0, unless most outputs have no sample
(a head wider than the label set), which is only noted. The imbalance ratio
is the largest class count over the smallest non-zero one.

The per-class mean loss of each epoch says whether the named classes lag:
over the late half of the epochs (up to the last complete one), where the
other classes have converged, a class lags when its mean loss is at least twice
the other classes' and above it by 0.1. A lagging class with an imbalance of
10:1 or more is critical; a sampler that already draws the rare classes about as
often as the others (WeightedRandomSampler) makes the finding informational.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from dataaudit.checks.base import CheckResult, Finding
from dataaudit.run import Run, last_records, unique_ids

NAME = "class_imbalance"
TASKS = ("classification", "binary")

# A class is under-represented below this fraction of the median class count ...
_FRACTION = 0.25
# ... and this many Poisson standard deviations (sqrt(median)) below the median.
_POISSON_SIGMAS = 3.0
# A named class lags when its mean loss over the late epochs is this many times the other classes' ...
_LAG_FACTOR = 2.0
# ... and above it by at least this much, so that two near-zero losses do not count.
_LAG_MARGIN = 0.1
# A sampler that draws a named class at least this share of the median class's draws has rebalanced it.
_REBALANCED = 0.5
# The imbalance ratio from which a lagging class is critical.
_CRITICAL_RATIO = 10.0
# per_class_loss keeps at most this many epochs (evenly spaced, first and last included).
_MAX_EPOCHS = 50
_COLUMNS = ("epoch", "sample_id", "label", "loss")


def check(run: Run) -> CheckResult:
    """Count the classes of the run's distinct samples and name the under-represented ones.

    Reads `run.records` (epoch, sample_id, label, loss; one row per (epoch, sample)) and
    `run.num_classes`. Skipped without a labelled sample or with a single class.
    """
    records = run.records
    missing = [c for c in _COLUMNS if c not in records.columns]
    if missing:
        raise ValueError(f"class_imbalance needs records with columns {list(_COLUMNS)}; "
                         f"got columns {list(records.columns)} (missing {missing})")
    labels = records["label"].to_numpy()  # the stored dtypes: float64/int64 copies cost 160 MB a column at 20M rows
    if not (labels >= 0).any():
        return CheckResult.skipped(NAME, "no sample with a known label was recorded")
    num_classes = max(int(run.num_classes or 0), int(labels.max()) + 1)
    if num_classes < 2:
        return CheckResult.skipped(NAME, "a single class: there is nothing to balance")
    complete = run.train.complete_epochs
    epochs = records["epoch"].to_numpy()
    final_epoch = complete[-1] if complete else int(epochs.max())
    return _compute_class_imbalance(epochs, records["sample_id"].to_numpy(), labels,
                                    records["loss"].to_numpy(), num_classes, final_epoch)


def _compute_class_imbalance(epochs: np.ndarray, ids: np.ndarray, labels: np.ndarray, losses: np.ndarray,
                             num_classes: int, final_epoch: int) -> CheckResult:
    """epochs, ids, labels, losses : shape (rows,), one per recorded (epoch, sample); labels -1 = unknown."""
    # The last label recorded for each distinct sample id.
    sample_ids, last = last_records(ids, epochs)
    sample_labels = labels[last]
    known = labels >= 0
    every = bool(known.all())  # then the columns themselves, not 160 MB copies of each at 20M rows
    counts = np.bincount(sample_labels[sample_labels >= 0], minlength=num_classes)

    present = counts > 0
    median = float(np.median(counts[present]))
    rare = (counts < _FRACTION * median) & (counts < median - _POISSON_SIGMAS * np.sqrt(median))
    wide_head = int((~present).sum()) > int(present.sum())
    if wide_head:  # most outputs have no sample: the head is wider than the label set, not rare classes
        rare &= present
    classes = np.flatnonzero(rare)
    empty = classes[counts[classes] == 0]
    ratio = float(counts[present].max() / counts[present].min())

    per_class = per_class_loss(*((epochs, labels, losses) if every else (epochs[known], labels[known], losses[known])),
                                num_classes)  # (epochs, classes)
    # The late half of the epochs up to the last complete one: where the other classes have converged.
    judged = per_class.loc[:final_epoch]
    judged = judged if len(judged) else per_class
    late_epochs = judged.index[len(judged) // 2:]
    late = judged.loc[late_epochs].mean()  # (classes,) mean over late epochs of the per-epoch class means
    others = [c for c in late.index if not rare[c] and np.isfinite(late[c])]
    rest_loss = float(late[others].mean()) if others else float("nan")
    lagging = [int(c) for c in classes if c in late.index and np.isfinite(late[c]) and np.isfinite(rest_loss)
               and late[c] >= _LAG_FACTOR * rest_loss and late[c] - rest_loss >= _LAG_MARGIN]

    # Draws per class over all epochs: a sampler that rebalances draws the rare classes as often as the rest.
    draws = np.bincount(labels if every else labels[known], minlength=num_classes)
    rare_present = classes[counts[classes] > 0]
    rebalanced = bool(len(rare_present)) and bool(
        (draws[rare_present] >= _REBALANCED * np.median(draws[present])).all())
    in_late = known & np.isin(epochs, late_epochs)
    late_total = float(np.nansum(losses[in_late], dtype=np.float64))
    loss_share = (float(np.nansum(losses[in_late & np.isin(labels, classes)], dtype=np.float64) / late_total)
                  if late_total > 0 else 0.0)

    findings = []
    if len(rare_present):
        findings.append(_imbalance_finding(rare_present, counts, median, ratio, late, rest_loss, lagging,
                                           rebalanced, loss_share))
    if len(empty):
        findings.append(Finding(
            NAME, "warning",
            f"The model has outputs for class(es) {empty.tolist()} but no training sample has those labels.",
            remedy=f"Collect samples of classes {empty.tolist()}, or drop them from the label set and the head.",
            evidence={"empty_classes": empty.tolist(), "num_classes": num_classes}))
    if wide_head:
        findings.append(Finding(
            NAME, "info",
            f"Only {int(present.sum())} of the model's {num_classes} outputs have training samples.",
            evidence={"classes_with_samples": int(present.sum()), "num_classes": num_classes}))

    strength = 1.0 if len(empty) else min(np.log10(ratio) / 2.0, 1.0)
    score = 0.0 if not len(classes) else strength * (1.0 if lagging else 0.5) * (0.3 if rebalanced else 1.0)
    share = np.where(sample_labels >= 0, counts[np.clip(sample_labels, 0, None)] / max(counts.sum(), 1), np.nan)
    per_sample = pd.DataFrame({"sample_id": sample_ids, "label": sample_labels, "class_share": share,
                               "under_represented": np.isin(sample_labels, classes)})
    details = {
        "classes": classes.tolist(),
        "counts": {int(c): int(n) for c, n in enumerate(counts)},
        "median_count": median,
        "imbalance_ratio": round(ratio, 4),
        "lagging_classes": lagging,
        "rebalanced_by_sampler": rebalanced,
        "late_epochs": [int(late_epochs[0]), int(late_epochs[-1])],
        "minority_loss_share": round(loss_share, 4),
        "per_class_loss": _compact(per_class),
    }
    return CheckResult.from_findings(NAME, findings, score=score, details=details, per_sample=per_sample)


def per_class_loss(epochs: np.ndarray, labels: np.ndarray, losses: np.ndarray, num_classes: int) -> pd.DataFrame:
    """Mean loss (NaN losses skipped) per (epoch, label) as an (epochs, classes) table, NaN where a pair has none;
    rows and columns are the epochs and labels that occur. What groupby(["epoch", "label"]).mean().unstack()
    gives, without its per-row copies."""
    epoch_values, epoch_pos = unique_ids(epochs, return_inverse=True)
    width = max(num_classes, int(labels.max()) + 1 if len(labels) else 0)
    key = epoch_pos.astype(np.int64) * width + labels
    del epoch_pos
    counted = ~np.isnan(losses)
    shape = (len(epoch_values), width)
    rows = np.bincount(key, minlength=shape[0] * width).reshape(shape)
    present = rows > 0
    if counted.all():  # no masked copies of the 20M-row columns
        n = rows
        total = np.bincount(key, weights=losses, minlength=shape[0] * width).reshape(shape)
    else:
        n = np.bincount(key[counted], minlength=shape[0] * width).reshape(shape)
        total = np.bincount(key[counted], weights=losses[counted], minlength=shape[0] * width).reshape(shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, total / np.maximum(n, 1), np.nan)
    classes = np.flatnonzero(present.any(0))
    table = pd.DataFrame(mean[:, classes], index=pd.Index(epoch_values.astype(np.int64), name="epoch"),
                         columns=pd.Index(classes.astype(np.int64), name="label"))
    return table


def _imbalance_finding(rare: np.ndarray, counts: np.ndarray, median: float, ratio: float, late: pd.Series,
                       rest_loss: float, lagging: list[int], rebalanced: bool, loss_share: float) -> Finding:
    named = rare.tolist()
    late_loss = {int(c): round(float(late[c]), 4) for c in rare if c in late.index and np.isfinite(late[c])}
    listed = ", ".join(f"{c} ({int(counts[c])} samples)" for c in named)
    summary = f"Under-represented classes: {listed}, against a median of {median:g} per class (imbalance {ratio:.1f}:1)"
    if lagging:
        summary += (f"; over the late epochs their loss stays at {max(late_loss[c] for c in lagging):.3g} "
                    f"while the other classes average {rest_loss:.3g}")
    if rebalanced:
        summary += "; the sampler already draws them about as often as the other classes"
        severity = "info"
    else:
        severity = "critical" if lagging and ratio >= _CRITICAL_RATIO else "warning"
    return Finding(
        NAME, severity, summary + ".",
        remedy=f"Rebalance: a class-weighted loss (CrossEntropyLoss(weight=...)) or a WeightedRandomSampler, "
               f"or collect more samples of classes {named}; judge the model on per-class recall, not accuracy.",
        evidence={"counts": {int(c): int(counts[c]) for c in rare}, "median_count": median,
                  "imbalance_ratio": round(ratio, 4), "late_loss": late_loss,
                  "other_classes_late_loss": round(rest_loss, 4) if np.isfinite(rest_loss) else None,
                  "loss_share": round(loss_share, 4)})


def _compact(per_class: pd.DataFrame) -> dict[int, dict[int, float]]:
    """epoch -> {class: mean loss}, for at most _MAX_EPOCHS evenly spaced epochs (first and last kept)."""
    rows = np.unique(np.linspace(0, len(per_class) - 1, min(len(per_class), _MAX_EPOCHS)).round().astype(int))
    return {int(per_class.index[i]): {int(c): round(float(v), 4) for c, v in per_class.iloc[i].items()
                                      if np.isfinite(v)} for i in rows}
