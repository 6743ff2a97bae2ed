"""Loss curves per epoch, shared by the plateau and optimizer checks."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from dataaudit.run import Split, in_epochs

# A change of a tenth of the loss level is "meaningful": epoch-to-epoch noise of a
# full-dataset mean loss is ~1%, and a tenth is what a practitioner reads off a curve.
MEANINGFUL = 0.10
# Converged: >= 99% of the training samples fitted (train accuracy), or without labels
# a loss below 1% of where it started (cross-entropy 2.3 -> 0.023: p(label) ~ 0.98).
CONVERGED_ACCURACY = 0.99
CONVERGED_LEVEL = 0.01
# An epoch whose losses are mostly non-finite counts as non-finite.
NONFINITE_EPOCH = 0.5


def epoch_losses(split: Split) -> pd.DataFrame:
    """Per complete epoch of `split`: epoch, loss (mean of the finite per-sample losses; NaN when an epoch
    has none), nonfinite (share of non-finite losses), accuracy (share with pred == label; NaN without labels).
    """
    columns = ["epoch", "loss", "nonfinite", "accuracy"]
    if split.epoch_curve is not None:  # a run beyond the row budget: read from every epoch as it was streamed
        return split.epoch_curve[columns].copy()
    records = split.records
    epochs = split.complete_epochs
    if not len(records) or not epochs:
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in columns}).astype({"epoch": "int64"})
    records = in_epochs(records, epochs)
    # one epoch at a time: float64 copies of all the rows would cost 160 MB a column at 20M rows
    rec_epoch = records["epoch"].to_numpy()
    loss_all, label_all, pred_all = (records[c].to_numpy() for c in ("loss", "label", "pred"))
    rows = []
    for epoch in np.unique(rec_epoch):
        rows_of = rec_epoch == epoch
        loss = loss_all[rows_of].astype(np.float64)
        finite = np.isfinite(loss)
        label = label_all[rows_of]
        labelled = label >= 0
        rows.append({
            "epoch": int(epoch),
            "loss": float(loss[finite].mean()) if finite.any() else np.nan,  # NaN-skipping mean
            "nonfinite": float((~finite).mean()),
            "accuracy": float((pred_all[rows_of][labelled] == label[labelled]).mean()) if labelled.any() else np.nan,
        })
    out = pd.DataFrame(rows, columns=columns).astype({"epoch": "int64", "loss": "float64",
                                                       "nonfinite": "float64", "accuracy": "float64"})
    return out[columns]


def median3(y: np.ndarray) -> np.ndarray:
    """Running median of 3 of y (n,), with Tukey's end-point rule: kills single-epoch spikes, keeps steps."""
    n = len(y)
    if n < 3:
        return y.astype(np.float64).copy()
    s = y.astype(np.float64).copy()
    s[1:-1] = np.median(np.stack([y[:-2], y[1:-1], y[2:]]), axis=0)
    # The ends extrapolate the smoothed neighbours linearly (Tukey 1977), so a last epoch
    # that is a spike is damped while a genuine trend at the end is kept.
    s[0] = np.median([y[0], s[1], 3 * s[1] - 2 * s[2]])
    s[-1] = np.median([y[-1], s[-2], 3 * s[-2] - 2 * s[-3]])
    return s


def loss_rise(smooth: np.ndarray, *, of_progress: bool = True) -> dict[str, Any]:
    """How far the smoothed loss (n,) ended above its best: the basis of "diverging" and "overfitting".

    Returns best_pos (position of the minimum), rise (end - best), and rising: the rise exceeds a tenth
    of the best level, or with `of_progress` of the larger of that level and the progress made before the
    best (a training loss near zero may wobble by more than a tenth of itself without undoing anything).
    """
    best_pos = int(np.argmin(smooth))
    best = float(smooth[best_pos])
    progress = float(smooth[0] - best)
    rise = float(smooth[-1] - best)
    scale = max(progress, abs(best)) if of_progress else abs(best)
    return {"best_pos": best_pos, "best": best, "rise": rise,
            "rising": bool(scale > 0 and rise > MEANINGFUL * scale and best_pos < len(smooth) - 1)}
