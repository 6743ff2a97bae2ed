"""The series the report draws and the rows it tabulates, computed from an Audit's run and results.

Pure pandas: no matplotlib, no HTML. Each function takes what the audit already holds and returns
a small, downsampled table; none recomputes a check.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dataaudit.checks import flagging

if TYPE_CHECKING:
    from dataaudit.audit import Audit
    from dataaudit.run import Run

MAX_POINTS = 400  # per line; more points add bytes, not information, at 6 inches wide
MAX_CLASSES = 10  # per-class curves drawn; the classes with the highest final loss
TOP_SAMPLES = 50
OPTIMIZER_COLUMNS = ("lr", "grad_norm", "update_ratio")


def loss_by_epoch(run: Run | None, flagged: tuple[int, ...]) -> pd.DataFrame:
    """Mean training loss per epoch of all samples, the unflagged and the flagged ones.

    Returns a frame indexed by epoch with columns all, clean, flagged (NaN where a subset is empty)
    and val (mean loss of the val split, NaN without one); empty without records.
    """
    if run is None or not len(run.records):
        return pd.DataFrame(columns=["all", "clean", "flagged", "val"])
    from dataaudit.run import unique_ids

    # Sums per (epoch, flagged or not) in one bincount over the columns themselves: a groupby of row subsets
    # copies them (at 10^6 samples x 20 epochs, about 0.9 GB on top of the run).
    records = run.records
    loss = records["loss"].to_numpy()
    is_flagged = records["sample_id"].isin(np.asarray(flagged, dtype=np.int64)).to_numpy()
    numbers, key = unique_ids(records["epoch"].to_numpy(), return_inverse=True)
    key *= 2
    key += is_flagged
    del is_flagged
    counted = ~np.isnan(loss)  # NaN losses are skipped, as a groupby mean skips them
    if not counted.all():
        key, loss = key[counted], loss[counted]
    size = 2 * len(numbers)
    total = np.bincount(key, weights=loss, minlength=size).reshape(-1, 2)
    count = np.bincount(key, minlength=size).reshape(-1, 2)
    del key
    with np.errstate(invalid="ignore", divide="ignore"):
        out = pd.DataFrame({"all": total.sum(1) / count.sum(1), "clean": total[:, 0] / count[:, 0],
                            "flagged": total[:, 1] / count[:, 1]},
                           index=pd.Index(numbers, name="epoch"))
    val = run.split("val")
    if val is not None and len(val.records):
        out["val"] = val.records.groupby("epoch")["loss"].mean()
    else:
        out["val"] = np.nan
    return out.sort_index().astype(float)


def loss_histogram(run: Run | None, flagged: tuple[int, ...], *, bins: int = 40) -> dict[str, np.ndarray] | None:
    """Per-sample loss of the last epoch binned for the clean and flagged samples (edges (bins + 1,), counts)."""
    if run is None or not len(run.records):
        return None
    records = run.records
    last = records[records["epoch"] == records["epoch"].max()]
    loss = last["loss"].to_numpy(dtype=float)
    loss = np.where(np.isfinite(loss), loss, np.nan)
    if not np.isfinite(loss).any():
        return None
    is_flagged = last["sample_id"].isin(np.asarray(flagged, dtype=np.int64)).to_numpy()
    edges = np.histogram_bin_edges(loss[np.isfinite(loss)], bins=bins)
    ok = np.isfinite(loss)
    return {"edges": edges,
            "clean": np.histogram(loss[ok & ~is_flagged], bins=edges)[0],
            "flagged": np.histogram(loss[ok & is_flagged], bins=edges)[0]}


def loss_by_class(run: Run | None) -> pd.DataFrame:
    """Mean training loss per (epoch, given label): epochs as index, one column per class.

    At most MAX_CLASSES columns, the classes with the highest loss in the last epoch first.
    """
    if run is None or not len(run.records):
        return pd.DataFrame()
    records = run.records
    labels = records["label"].to_numpy()
    if (labels >= 0).all():  # the class_imbalance check's table: bincounts over the columns, no groupby copies
        from dataaudit.checks.class_imbalance import per_class_loss

        table = per_class_loss(records["epoch"].to_numpy(), labels, records["loss"].to_numpy(), 0)
    else:  # unknown labels (-1) get a column of their own
        table = records.groupby(["epoch", "label"])["loss"].mean().unstack("label").sort_index()
    worst = table.iloc[-1].sort_values(ascending=False, na_position="last").index[:MAX_CLASSES]
    return table[list(worst)].astype(float)


def coverage_rows(audit: Audit) -> list[dict[str, Any]]:
    """One row per epoch: epoch, seen, unique, missing, duplicates, complete (from the coverage check)."""
    result = audit.results.get("coverage")
    rows = result.details.get("per_epoch") if result is not None else None
    if rows:
        return list(rows)
    if audit.run is None or not len(audit.run.coverage):
        return []
    keep = ["epoch", "seen", "unique", "missing", "duplicates", "complete"]
    return audit.run.coverage[keep].to_dict("records")


def drift_rows(audit: Audit) -> list[dict[str, Any]]:
    """The drift check's per-epoch rows (p-values, changed shares), empty when it was skipped."""
    result = audit.results.get("drift")
    return list(result.details.get("per_epoch") or []) if result is not None else []


def optimizer_series(run: Run | None) -> pd.DataFrame:
    """lr, grad_norm and update_ratio per step, downsampled to MAX_POINTS rows (bin means).

    Indexed by the fractional epoch (epoch + position within it), so the x axis matches the loss curve.
    """
    if run is None or not len(run.steps):
        return pd.DataFrame()
    steps = run.steps
    if "skipped" in steps:
        steps = steps[~steps["skipped"].astype(bool)]
    columns = [c for c in OPTIMIZER_COLUMNS if c in steps and steps[c].notna().any()]
    if not columns or not len(steps):
        return pd.DataFrame()
    position = steps.groupby("epoch").cumcount()
    per_epoch = steps.groupby("epoch")["epoch"].transform("size")
    x = steps["epoch"].to_numpy(dtype=float) + position.to_numpy() / per_epoch.to_numpy()
    table = steps[columns].astype(float).set_axis(x).sort_index()
    return downsample(table)


def downsample(table: pd.DataFrame, points: int = MAX_POINTS) -> pd.DataFrame:
    """At most `points` rows: means over equal runs of consecutive rows (NaN-aware)."""
    if len(table) <= points:
        return table
    group = np.arange(len(table)) * points // len(table)
    out = table.groupby(group).mean()
    out.index = pd.Series(table.index.to_numpy()).groupby(group).mean().to_numpy()
    return out


def suspicious_samples(audit: Audit, *, top: int = TOP_SAMPLES) -> list[dict[str, Any]]:
    """The `top` most suspicious samples, in the order of audit.label_issues.

    Each row: sample_id, label, suggested_label, label_quality (and aum when the check has it); for the
    targets check (regression): sample_id, loss, residual.
    """
    result = flagging(audit.results) or audit.results.get("labels")  # regression: flagged for their targets
    table = result.per_sample if result is not None else None
    ids = list(audit.label_issues[:top])
    if table is None or not len(table) or not ids:
        return []
    keep = [c for c in ("sample_id", "label", "suggested_label", "label_quality", "aum", "loss", "residual")
            if c in table]
    table = table[keep].drop_duplicates("sample_id").set_index("sample_id", drop=False)
    present = [i for i in ids if i in table.index]
    return table.loc[present].to_dict("records")
