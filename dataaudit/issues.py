"""The per-sample issues table and the per-check summary of an Audit (what `Audit.issues()` returns).

One row for every sample of the run, flagged or not, gathered from the checks' per-sample tables and
from the run's records: the label check's verdict on each sample, its loss on the plateau and whether
that loss still falls, and how often the loader drew it. Everything is computed with `np.bincount`
over the record columns, so it stays a few seconds at 10^6 samples x 20 epochs.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from dataaudit.run import Run, positions, union_ids, unique_ids

if TYPE_CHECKING:
    from dataaudit.audit import Audit

# The columns every issues table has, in order; check-specific columns follow.
ISSUE_COLUMNS = ("sample_id", "given_label", "suggested_label", "label_score", "is_label_issue", "label_rank",
                 "plateau_loss", "loss_trend", "aum", "times_drawn", "times_missing")
# Further per-sample columns the checks produce, copied when the check ran: check -> {column: new name}.
_EXTRA = {
    "coverage": {"max_draws_per_epoch": "max_draws_per_epoch"},
    "class_imbalance": {"class_share": "class_share", "under_represented": "under_represented"},
}


def issues_table(audit: Audit) -> pd.DataFrame:
    """One row per sample of the run (flagged or not), ordered by sample id.

    Columns
    -------
    sample_id : int
    given_label : int, the label the sample was trained with (-1 unknown).
    suggested_label : int, the label the labels check suggests (the given one when it has no doubt).
    label_score : float in [0, 1], the model's probability of the given label over the check's window
        (low: the label is suspect); NaN when the labels check did not run.
    is_label_issue : bool, flagged as mislabeled.
    label_rank : position in `audit.label_issues` (0 = most suspicious), -1 when not flagged.
    plateau_loss : float, mean loss over the plateau epochs (nats for cross-entropy); NaN when never recorded.
    loss_trend : float, least-squares slope of the sample's loss against the epoch over the plateau epochs
        (loss units per epoch; negative: still being fit); NaN with fewer than two epochs.
    aum : float, area under the margin (mean margin over the labels check's window).
    times_drawn : int, draws of the sample over all recorded epochs.
    times_missing : int, complete epochs in which the sample was not drawn.
    Then, when the checks ran: max_draws_per_epoch, class_share, under_represented; and with a scan on top
    of a tracked run, scan_suggested_label, scan_label_score, scan_is_label_issue.
    """
    run = audit.run
    labels = audit.results.get("labels")
    label_table = _per_sample(labels)
    ids = _universe(audit, label_table)
    n = len(ids)
    out = pd.DataFrame({"sample_id": ids})
    given = np.full(n, -1, np.int64)
    suggested = np.full(n, -1, np.int64)
    score = np.full(n, np.nan)
    aum = np.full(n, np.nan)
    flagged = np.zeros(n, bool)
    if label_table is not None:
        pos, ok = positions(ids, label_table["sample_id"].to_numpy())
        pos = pos[ok]
        given = _fill(n, pos, label_table["label"].to_numpy()[ok], -1)
        suggested = _fill(n, pos, label_table["suggested_label"].to_numpy()[ok], -1)
        score[pos] = label_table["label_quality"].to_numpy(dtype=float)[ok]
        if "aum" in label_table:
            aum[pos] = label_table["aum"].to_numpy(dtype=float)[ok]
    rank = np.full(n, -1, np.int64)
    issues = np.asarray(audit.label_issues, dtype=np.int64)
    if len(issues):
        pos, ok = positions(ids, issues)
        rank[pos[ok]] = np.flatnonzero(ok)
        flagged[pos[ok]] = True
    stats = _loss_stats(run, ids, _plateau_epochs(audit)) if run is not None else None
    draws = _draw_counts(run, ids) if run is not None else (np.zeros(n, np.int64), np.zeros(n, np.int64))
    if run is not None and given.dtype.kind in "iu" and (given < 0).any():
        _fill_labels(run, ids, given)
        suggested = np.where(suggested < 0, given, suggested)
    out["given_label"] = given
    out["suggested_label"] = suggested
    out["label_score"] = score
    out["is_label_issue"] = flagged
    out["label_rank"] = rank
    out["plateau_loss"] = stats[0] if stats is not None else np.nan
    out["loss_trend"] = stats[1] if stats is not None else np.nan
    out["aum"] = aum
    out["times_drawn"], out["times_missing"] = draws
    for check, columns in _EXTRA.items():
        table = _per_sample(audit.results.get(check))
        if table is None:
            continue
        pos, ok = positions(ids, table["sample_id"].to_numpy())
        for column, name in columns.items():
            if column in table:
                values = table[column].to_numpy()
                fill = {"b": (False, bool), "i": (0, np.int64), "u": (0, np.int64)}.get(values.dtype.kind,
                                                                                      (np.nan, float))
                out[name] = _fill(n, pos[ok], values[ok], *fill)
    scanned = _per_sample(audit.results.get("scan_labels"))
    if scanned is not None:
        pos, ok = positions(ids, scanned["sample_id"].to_numpy())
        out["scan_suggested_label"] = _fill(n, pos[ok], scanned["suggested_label"].to_numpy()[ok], -1, np.int64)
        out["scan_label_score"] = _fill(n, pos[ok], scanned["label_quality"].to_numpy()[ok], np.nan, float)
        out["scan_is_label_issue"] = _fill(n, pos[ok], scanned["flagged"].to_numpy()[ok], False, bool)
    return out


def summary_table(audit: Audit) -> pd.DataFrame:
    """One row per check: check, status, score, findings, flagged (distinct sample ids its findings name),
    worst (the most severe finding's severity, "" when none), summary (its first sentence)."""
    order = {"critical": 2, "warning": 1, "info": 0}
    rows = []
    for name, result in audit.results.items():
        worst = max(result.findings, key=lambda f: order[f.severity], default=None)
        named = {i for f in result.findings for i in f.ids}
        rows.append({"check": name, "status": result.status, "score": round(float(result.score), 4),
                     "findings": len(result.findings), "flagged": len(named),
                     "worst": worst.severity if worst else "", "summary": worst.summary if worst else ""})
    columns = ["check", "status", "score", "findings", "flagged", "worst", "summary"]
    return pd.DataFrame(rows, columns=columns)


def flagged_rows(audit: Audit) -> pd.DataFrame:
    """The suspected label errors, most suspicious first (the scan's when a scan ran on top of a tracked run):
    sample_id, given_label, suggested_label, label_quality, then given_class/suggested_class when the classes
    have names, file for image folders, and the other issues columns. What `flagged.csv` holds."""
    table = issues_table(audit)
    scanned = "scan_is_label_issue" in table
    if scanned:
        flagged = table[table["scan_is_label_issue"]].set_index("sample_id")
        ids = audit.results["scan_labels"].details.get("label_issues", [])
        flagged = flagged.loc[[i for i in ids if i in flagged.index]].reset_index()
        flagged = flagged.assign(suggested_label=flagged["scan_suggested_label"],
                                 label_score=flagged["scan_label_score"])
    else:
        flagged = table[table["is_label_issue"]].sort_values("label_rank", kind="stable")
    flagged = flagged.rename(columns={"label_score": "label_quality"}).reset_index(drop=True)
    flagged["label_quality"] = flagged["label_quality"].round(6)
    first = ["sample_id", "given_label", "suggested_label", "label_quality"]
    names = (audit.run_summary.get("scan") or {}).get("class_names") or (
        audit.run.meta.get("class_names") if audit.run is not None else None)
    if names:
        flagged["given_class"] = [names[i] if 0 <= i < len(names) else "" for i in flagged["given_label"]]
        flagged["suggested_class"] = [names[i] if 0 <= i < len(names) else "" for i in flagged["suggested_label"]]
        first += ["given_class", "suggested_class"]
    files = audit.run.meta.get("sample_files") if audit.run is not None else None
    if files:
        flagged["file"] = [files[i] if 0 <= i < len(files) else "" for i in flagged["sample_id"]]
        first.append("file")
    rest = [c for c in flagged.columns if c not in first and not c.startswith("scan_")
            and c not in ("is_label_issue", "label_rank")]
    return flagged[first + rest]


def _per_sample(result) -> pd.DataFrame | None:
    if result is None or result.per_sample is None or not len(result.per_sample):
        return None
    return result.per_sample.drop_duplicates("sample_id")


def _fill(n: int, pos: np.ndarray, values: np.ndarray, fill, dtype=None) -> np.ndarray:
    """An (n,) array of `fill` with `values` at `pos`; of `dtype`, else of the values' own (object when they
    are not numbers: labels are class indices, but a table can hold anything)."""
    if dtype is None:
        dtype = values.dtype if values.dtype.kind in "biuf" else object
    out = np.full(n, fill, dtype=dtype)
    out[pos] = values
    return out


def _universe(audit: Audit, label_table: pd.DataFrame | None) -> np.ndarray:
    """Every sample id the run knows: drawn, recorded, or in the dataset but never drawn (sorted, unique)."""
    parts = [np.asarray(audit.label_issues, dtype=np.int64)]
    if label_table is not None:
        parts.append(label_table["sample_id"].to_numpy(dtype=np.int64))
    coverage = _per_sample(audit.results.get("coverage"))
    if coverage is not None:
        parts.append(coverage["sample_id"].to_numpy(dtype=np.int64))
    run = audit.run
    if run is not None:
        size = run.train.dataset_size
        # one epoch's draws at a time: a long run's are read back from the store (see budget.StoredDraws)
        bounds = [(int(d.min()), int(d.max())) for d in run.train.draws.values() if len(d)]
        # the common case, dataset indices 0..size-1: the universe is known without a pass over the rows
        if size and all(lo >= 0 and hi < size for lo, hi in bounds):
            parts.append(np.arange(size, dtype=np.int64))
        else:
            if bounds:
                parts.append(union_ids(d for d in run.train.draws.values() if len(d)).astype(np.int64))
            if size:
                parts.append(np.arange(size, dtype=np.int64))
            if not bounds and len(run.records):  # records are draws: only without draws are they read
                parts.append(unique_ids(run.records["sample_id"].to_numpy()).astype(np.int64))
    return unique_ids(np.concatenate(parts)) if parts else np.empty(0, np.int64)


def _plateau_epochs(audit: Audit) -> list[int]:
    """The epochs the attribution measured the plateau over, else the plateau's onset to the end, else all."""
    run = audit.run
    epochs = run.train.complete_epochs or run.train.epochs
    span = (audit.attribution or {}).get("plateau_epochs")
    if span and len(span) == 2:
        return [e for e in epochs if span[0] <= e <= span[1]] or epochs
    onset = audit.plateau.get("onset_epoch") if audit.plateau.get("detected") else None
    if onset is not None:
        return [e for e in epochs if e >= onset] or epochs
    return epochs


def _loss_stats(run: Run, ids: np.ndarray, epochs: list[int]) -> tuple[np.ndarray, np.ndarray] | None:
    """(mean loss (n,), least-squares slope of loss on epoch (n,)) of each of `ids` over `epochs`.

    Sums per sample with np.bincount (no sort, no groupby object): 20M rows take about a second.
    """
    records = run.records
    if not len(records) or not epochs:
        return None
    epoch = records["epoch"].to_numpy()
    loss = records["loss"].to_numpy()
    keep = np.isin(epoch, np.asarray(epochs, dtype=epoch.dtype)) & np.isfinite(loss)
    pos, ok = positions(ids, records["sample_id"].to_numpy()[keep].astype(np.int64))
    pos = pos[ok]
    x = epoch[keep][ok].astype(np.float64)
    y = loss[keep][ok].astype(np.float64)
    n = len(ids)
    count = np.bincount(pos, minlength=n).astype(np.float64)
    sx = np.bincount(pos, weights=x, minlength=n)
    sy = np.bincount(pos, weights=y, minlength=n)
    sxx = np.bincount(pos, weights=x * x, minlength=n)
    sxy = np.bincount(pos, weights=x * y, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sy / count
        denominator = count * sxx - sx * sx
        slope = np.where(denominator > 1e-9, (count * sxy - sx * sy) / denominator, np.nan)
    return mean, slope


def _draw_counts(run: Run, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(draws over all epochs (n,), complete epochs in which the sample was not drawn (n,))."""
    n = len(ids)
    drawn = np.zeros(n, np.int64)
    missing = np.zeros(n, np.int64)
    complete = set(run.train.complete_epochs)
    for epoch, draws in run.train.draws.items():
        pos, ok = positions(ids, np.asarray(draws, dtype=np.int64))
        counts = np.bincount(pos[ok], minlength=n)
        drawn += counts
        if epoch in complete:
            missing += counts == 0
    return drawn, missing


def _fill_labels(run: Run, ids: np.ndarray, given: np.ndarray) -> None:
    """Fill unknown given labels (-1) in place from the records: the last epoch's first (one pass over its
    rows, usually enough), then all epochs for samples that epoch did not draw."""
    records = run.records
    if not len(records):
        return
    epoch = records["epoch"].to_numpy()
    last = epoch == epoch.max()
    for rows in (last, None):
        sample = records["sample_id"].to_numpy()
        label = records["label"].to_numpy()
        if rows is not None:
            sample, label = sample[rows], label[rows]
        pos, ok = positions(ids, sample.astype(np.int64))
        keep = ok & (label >= 0)
        seen = np.full(len(ids), -1, np.int64)
        seen[pos[keep]] = label[keep]
        unknown = given < 0
        given[unknown] = seen[unknown]
        if not (given < 0).any():
            return
