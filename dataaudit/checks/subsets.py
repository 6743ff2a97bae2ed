"""Subsets: is a flat, hard subset hidden under a mean loss that still falls?

An easy majority can keep the mean training loss falling while a subset (a
class, or the samples that were hard early on) stopped learning long ago. The
check splits the per-(epoch, sample) losses two ways:

- per class (the given label), for classification runs;
- per bin of early difficulty: the samples' mean loss over the first tenth of the
  epochs (at least one, at most three), cut at its quintiles; bin 4 is the
  hardest fifth.

Over the last third of the complete epochs (at least 3), the mean loss must
have fallen by at least a tenth (MEANINGFUL) for the check to judge; a subset
is flagged when, over the same epochs, its own loss fell by less than a twentieth
and by less than a quarter of the mean's relative fall, while it ends at twice
the level of the other samples or more (a converged easy subset is flat too, but
near zero; a large hard subset pulls the mean up to itself, the rest stays apart).
The curves (smoothed with a running median of 3) go in `details`, compact.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from dataaudit.checks.base import CheckResult, Finding, json_number
from dataaudit.checks.curves import MEANINGFUL, median3
from dataaudit.run import Run, in_epochs, unique_ids

NAME = "subsets"

# The judged window: the last third of the run, at least this many epochs; the run needs twice as many.
MIN_TAIL = 3
TAIL_SHARE = 1 / 3
# Flat: a relative fall below this over the window, and below this share of the mean's relative fall.
FLAT_FALL = MEANINGFUL / 2
FLAT_VS_MEAN = 0.25
# Hard: the subset's loss at the end of the window is at least this multiple of the mean's.
HARD_RATIO = 2.0
# Subsets smaller than this are too noisy to call flat (the standard error of a mean of 30 losses
# is about a fifth of their spread).
MIN_SIZE = 30
# A subset resting below this share of the first epoch's mean loss holds nothing worth learning (the
# attribution's own threshold for "removable"): a run that converged everywhere has no hard subset.
NEGLIGIBLE = 0.05
BINS = 5
# At most this many class curves and epochs go into details (flagged classes first).
MAX_CLASSES = 20
MAX_EPOCHS = 50


def check(run: Run) -> CheckResult:
    split = run.train
    epochs = split.with_records(split.complete_epochs)  # beyond the row budget: the held ones
    records = split.records
    if not len(records) or len(epochs) < 2 * MIN_TAIL:
        return CheckResult.skipped(NAME, f"{len(epochs)} complete training epochs; at least {2 * MIN_TAIL} "
                                         f"are needed to tell a flat subset from a falling mean")
    records = in_epochs(records, epochs)
    return _compute_subsets(records["epoch"].to_numpy(), records["sample_id"].to_numpy(),
                            records["loss"].to_numpy(), records["label"].to_numpy())


def _group_curves(epoch_pos: np.ndarray, group: np.ndarray, loss: np.ndarray, n_epochs: int,
                  n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean loss and count of finite losses per (epoch, group), both of shape (n_epochs, n_groups);
    the mean is NaN where a group has no finite loss in an epoch."""
    ok = np.isfinite(loss) & (group >= 0)
    if ok.all():  # no masked copies of the rows (160 MB a column at 20M rows)
        index = epoch_pos * n_groups
        index += group
        weights = loss
    else:
        index, weights = epoch_pos[ok] * n_groups + group[ok], loss[ok]
    total = np.bincount(index, weights=weights, minlength=n_epochs * n_groups)
    count = np.bincount(index, minlength=n_epochs * n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
    return mean.reshape(n_epochs, n_groups), count.reshape(n_epochs, n_groups)


def _difficulty_bins(epoch_pos: np.ndarray, ids: np.ndarray, loss: np.ndarray, n_epochs: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the early-difficulty bin of its sample (-1: not seen early), and the bin edges (BINS + 1,)."""
    early = max(1, min(3, n_epochs // 10))
    uniq, inverse = unique_ids(ids, return_inverse=True)
    keep = (epoch_pos < early) & np.isfinite(loss)
    total = np.bincount(inverse[keep], weights=loss[keep], minlength=len(uniq))
    count = np.bincount(inverse[keep], minlength=len(uniq))
    seen = count > 0
    if seen.sum() < BINS * MIN_SIZE:
        return np.full(len(ids), -1), np.array([])
    difficulty = np.full(len(uniq), np.nan)
    difficulty[seen] = total[seen] / count[seen]
    edges = np.quantile(difficulty[seen], np.linspace(0, 1, BINS + 1))
    per_sample = np.full(len(uniq), -1)
    per_sample[seen] = np.clip(np.searchsorted(edges[1:-1], difficulty[seen], side="right"), 0, BINS - 1)
    return per_sample[inverse], edges


def _judge(curve: np.ndarray, rest: np.ndarray, mean: np.ndarray, begin: int, floor: float) -> dict[str, Any]:
    """Whether one subset's smoothed curve (e,) is flat over [begin, e) while the mean's (e,) fell, and hard:
    at HARD_RATIO times the rest of the samples' curve (e,) or more at the end, and at `floor` or above."""
    if not np.isfinite(curve).all() or curve[begin] <= 0:
        return {"flat": False}
    fall = float((curve[begin] - curve[-1]) / curve[begin])
    mean_fall = float((mean[begin] - mean[-1]) / mean[begin])
    vs_rest = float(curve[-1] / rest[-1]) if rest[-1] > 0 else math.inf
    flat = fall < FLAT_FALL and fall < FLAT_VS_MEAN * mean_fall and vs_rest >= HARD_RATIO and curve[-1] >= floor
    return {"flat": bool(flat), "fall": fall, "level": float(curve[-1]), "vs_rest": vs_rest,
            "vs_mean": float(curve[-1] / mean[-1]) if mean[-1] > 0 else math.inf}


def _compute_subsets(epochs: np.ndarray, ids: np.ndarray, loss: np.ndarray, labels: np.ndarray) -> CheckResult:
    """The subsets result from per-(epoch, sample) rows.

    Parameters
    ----------
    epochs, ids : int arrays of shape (r,), each row's epoch and sample id (complete epochs only).
    loss : float array of shape (r,), per-sample losses (NaN: not finite or not recorded).
    labels : int array of shape (r,), the given class (-1: unknown, e.g. regression).
    """
    numbers, epoch_pos = unique_ids(epochs, return_inverse=True)
    n = len(numbers)
    finite = np.isfinite(loss)  # sums in float64 whatever the stored dtype: bincount adds its weights so
    every = bool(finite.all())
    total_loss = np.bincount(epoch_pos if every else epoch_pos[finite], weights=loss if every else loss[finite],
                             minlength=n)
    total_count = np.bincount(epoch_pos if every else epoch_pos[finite], minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_raw = total_loss / total_count
    if not np.isfinite(mean_raw).all() or n < 2 * MIN_TAIL:
        return CheckResult.skipped(NAME, "an epoch has no finite training loss, or too few epochs")
    tail = max(MIN_TAIL, math.ceil(TAIL_SHARE * n))
    begin = n - tail
    mean = median3(mean_raw)
    mean_fall = float((mean[begin] - mean[-1]) / mean[begin]) if mean[begin] > 0 else 0.0
    judged = mean_fall >= MEANINGFUL

    subsets: dict[str, dict[str, Any]] = {}
    flagged: list[dict[str, Any]] = []
    for kind, group, n_groups in _groupings(epoch_pos, ids, loss, labels, n):
        curves, counts = _group_curves(epoch_pos, group, loss, n, n_groups)
        sizes = counts.max(axis=0)
        smooth = np.stack([median3(curves[:, g]) for g in range(n_groups)], axis=1)
        # the rest of the samples, per group: (all the epoch's losses - the group's) / (the other samples)
        with np.errstate(invalid="ignore", divide="ignore"):
            rest = ((total_loss[:, None] - np.nan_to_num(curves) * counts) / (total_count[:, None] - counts))
        verdicts = []
        for g in range(n_groups):
            v = (_judge(smooth[:, g], median3(rest[:, g]), mean, begin, NEGLIGIBLE * mean_raw[0])
                 if judged and sizes[g] >= MIN_SIZE
                 else {"flat": False})
            v.update(kind=kind, group=g, size=int(sizes[g]))
            verdicts.append(v)
            if v["flat"]:
                flagged.append(v)
        subsets[kind] = {"curves": smooth, "sizes": sizes, "verdicts": verdicts}

    findings = [_finding(v, numbers[begin], tail, mean_fall, subsets) for v in flagged]
    if not findings:
        why = (f"the mean training loss fell {mean_fall:.0%} over the last {tail} epochs and no class or "
               f"difficulty bin of {MIN_SIZE}+ samples stayed flat and high" if judged else
               f"the mean training loss fell only {max(mean_fall, 0):.0%} over the last {tail} epochs: "
               f"nothing to mask")
        findings = [Finding(NAME, "info", f"No flat hard subset: {why}.")]
    # the flagged subset's share of the mean loss at the end: how much of the level it holds up
    score = max((min(1.0, v["size"] / max(len(unique_ids(ids)), 1) * v["vs_mean"]) for v in flagged), default=0.0)
    details = _details(numbers, mean, begin, mean_fall, judged, subsets, flagged)
    return CheckResult.from_findings(NAME, findings, score=score, details=details)


def _groupings(epoch_pos: np.ndarray, ids: np.ndarray, loss: np.ndarray, labels: np.ndarray, n: int):
    """(kind, group per row, number of groups) for each way of splitting the samples."""
    labelled = labels >= 0
    if labelled.any():
        group = labels if labelled.all() else np.where(labelled, labels, -1)
        yield "class", group, int(labels[labelled].max()) + 1  # the stored int32: no 160 MB copy at 20M rows
    bins, edges = _difficulty_bins(epoch_pos, ids, loss, n)
    if len(edges):
        yield "difficulty", bins.astype(np.int64, copy=False), BINS


def _finding(v: dict[str, Any], since: int, tail: int, mean_fall: float, subsets: dict) -> Finding:
    name = f"class {v['group']}" if v["kind"] == "class" else (
        "the hardest fifth of the samples" if v["group"] == BINS - 1 else f"difficulty bin {v['group']} of {BINS}")
    return Finding(
        NAME, "warning",
        f"The mean training loss fell {mean_fall:.0%} since epoch {since}, but {name} ({v['size']} samples) "
        f"stayed flat at {v['level']:.3g} ({v['vs_rest']:.1f}x the other samples; {max(v['fall'], 0):.0%} lower over "
        f"{tail} epochs): an easy majority masks a subset that stopped learning.",
        remedy="Look at the subset's samples (wrong labels? inputs the model cannot see?); if they are right, "
               "reweight or oversample them, use a focal loss, or give the model more capacity; check the "
               "labels and class_imbalance checks for the same subset.",
        evidence={"kind": v["kind"], "group": v["group"], "size": v["size"], "level": json_number(v["level"]),
                  "fall": json_number(v["fall"]), "vs_rest": json_number(v["vs_rest"]), "since_epoch": int(since),
                  "mean_fall": json_number(mean_fall)})


def _details(numbers: np.ndarray, mean: np.ndarray, begin: int, mean_fall: float, judged: bool,
             subsets: dict, flagged: list[dict]) -> dict[str, Any]:
    rows = np.unique(np.linspace(0, len(numbers) - 1, min(len(numbers), MAX_EPOCHS)).round().astype(int))
    out: dict[str, Any] = {
        "epochs": [int(numbers[i]) for i in rows],
        "mean_loss": [json_number(mean[i]) for i in rows],
        "window_from_epoch": int(numbers[begin]),
        "mean_fall": json_number(mean_fall),
        "judged": judged,
        "flat": [{"kind": v["kind"], "group": v["group"], "size": v["size"], "level": json_number(v["level"]),
                  "fall": json_number(v["fall"])} for v in flagged],
    }
    for kind, s in subsets.items():
        curves, sizes = s["curves"], s["sizes"]
        groups = [g for g in range(curves.shape[1]) if sizes[g] > 0]
        if kind == "class" and len(groups) > MAX_CLASSES:
            first = [v["group"] for v in flagged if v["kind"] == "class"]
            rest = sorted((g for g in groups if g not in first), key=lambda g: -np.nan_to_num(curves[-1, g]))
            groups = sorted((first + rest)[:MAX_CLASSES])
        out[kind] = {"groups": [int(g) for g in groups], "sizes": [int(sizes[g]) for g in groups],
                     "loss": [[json_number(curves[i, g]) for i in rows] for g in groups]}
    return out
