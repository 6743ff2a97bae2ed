"""Noisy labels: training dynamics fused with confident learning, no extra training needed.

A model fits the clean majority of its data first and memorises wrong labels
later (Arpit et al., 2017). So the probabilities it gave *before memorising* are
nearly out-of-sample, and the margins of mislabeled samples stay low for most of
training (area under the margin, Pleiss et al., 2020). The method:

1. Window: epochs 1..e (epoch 0 starts from random weights). e is chosen where
   the samples confident learning calls mislabeled are best separated from the
   rest by their mean margin (a Fisher ratio): late enough that the model has
   fit the clean samples, before memorisation blurs the two groups.
2. Confident learning (cleanlab, Northcutt et al., 2021) on the probabilities
   averaged over the window: class-conditional, it finds systematic flips
   (class a labelled b) well.
3. Area under the margin over the window, ranked globally, the top N taken, N
   being cleanlab's calibrated estimate of the number of label issues: it finds
   random flips well.
4. Flagged = union of 2 and 3, most suspicious first (mean rank of both scores).

It stays quiet when the evidence is weak: when the model's predictions agree with
the given labels hardly better than always guessing the commonest class, or when
more than half the labels would be called wrong, nothing is flagged and the
finding says why. And a mislabeled sample is one the model keeps assigning to one
other class; when, over the later half of the window (its early epochs belong to
a model still learning), the flagged samples' predictions wander (a model hampered
by its inputs or its optimizer), only those it consistently assigns elsewhere are
kept, the evidence is called moderate and the finding is info.

A model that cannot fit is not a dataset with wrong labels: a class whose samples
the model still predicts as their label less than half the time at the end of
training (a frozen backbone, too little capacity, unscaled inputs) is not fit, and
disagreement that involves such a class, as given or as suggested label, is not
judged. When that is most of the disagreement, the model is underfitting: what it
flags elsewhere is kept at info, and the finding says so.
"""
from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dataaudit.checks.base import CheckResult, Finding
from dataaudit.run import Run, positions, probs_kind, unique_ids

NAME = "labels"
TASKS = ("classification", "binary")
# Below this lift over always guessing the commonest class, the model has not learnt enough to judge labels.
_MIN_LIFT = 0.2
# Above this estimated share of wrong labels, the disagreement says more about the model than the labels.
_MAX_NOISE = 0.5
# Soft targets: rows whose dominant class has less target probability than this are not judged.
_SOFT_PURITY = 0.75
# Candidate window ends tried (evenly spread): each costs one confident-learning count.
_WINDOW_CANDIDATES = 8
# Mislabeled samples are predicted as their true class nearly every epoch (0.9-1.0 in the runs
# we measured); below this mean consistency the flagged set is unsettled.
_MIN_CONSISTENCY = 0.8
# ...and then only samples assigned to their suggested class this consistently are kept.
_STRICT_CONSISTENCY = 0.9
# A class whose samples the model predicts as their given label less often than this over the last third
# of training is not fit: more than half of one class mislabeled is the per-class form of _MAX_NOISE.
_MIN_RECALL = 0.5
# Top-k probabilities are rebuilt as dense (n, k) float32 arrays (three of them live at once while averaging):
# above this many cells (n x k) that is too much memory, and confident learning is left out, saying so.
_MAX_DENSE_CELLS = 150_000_000


@dataclass(frozen=True)
class Dynamics:
    """Per-sample training dynamics over the complete epochs of a run.

    ids : (n,) sample ids; labels : (n,) given labels (-1 unknown);
    margin : (n, E) margin per epoch (NaN where the sample was not drawn);
    pred : (n, E) predicted class per epoch (-1 where not drawn);
    probs : j -> (n, k) float32 predicted probabilities in the j-th epoch (NaN rows where the sample
        was not drawn), or None if not stored. Read one epoch at a time: all of them at once are
        E x n x k floats (800 MB at 10^6 samples, 20 epochs, 10 classes).
    """

    ids: np.ndarray
    labels: np.ndarray
    margin: np.ndarray
    pred: np.ndarray
    probs: Callable[[int], np.ndarray] | None
    epochs: list[int]
    probs_kind: str | None = None  # "full", "top-k" or None (not stored)
    probs_note: str | None = None  # why confident learning cannot run, when it cannot


def check(run: Run) -> CheckResult:
    split = run.train
    epochs = split.with_records(split.complete_epochs or split.epochs)  # beyond the row budget: the held ones
    records = split.records
    if not epochs or records.empty or (records["label"] < 0).all() or records["margin"].isna().all():
        return CheckResult.skipped(NAME, "no recorded logits and labels")
    dynamics = _dynamics(run, epochs)
    k = run.num_classes or int(dynamics.labels.max()) + 1
    if k < 2 or len(np.unique(dynamics.labels)) < 2:
        return CheckResult.skipped(NAME, "the labels hold fewer than two classes")
    result = _compute_label_issues(dynamics, k)
    return _with_soft_note(result, run, epochs) if run.soft_targets else result


def _with_soft_note(result: CheckResult, run: Run, epochs: list[int]) -> CheckResult:
    """Say how soft targets were read: a label where one class dominates, rows of another sample's class left out."""
    from dataaudit.track.task import DOMINANT

    records = run.train.records
    rows = np.isin(records["epoch"].to_numpy(), epochs)
    labels = records["label"].to_numpy()
    dominant = rows & (labels >= 0)
    usual = _usual_label(records["sample_id"].to_numpy(), labels, dominant)
    total, none = int(rows.sum()), int((rows & (labels < 0)).sum())
    partner = int((dominant & (labels != usual)).sum())
    mixed = int((rows & (records["target_prob"].to_numpy() < _SOFT_PURITY)).sum()) if "target_prob" in records else 0
    soft = {"rule": f"a soft target's label is its dominant class (probability >= {DOMINANT} and above every other "
                    f"class), -1 (unknown) elsewhere; rows whose dominant class has less than {_SOFT_PURITY} of the "
                    "target, or is not the sample's usual one (a mixup partner's), are left out",
            "rows": total, "rows_without_dominant_class": none, "rows_of_another_class": partner,
            "rows_mixed": mixed}
    note = Finding(NAME, "info",
                   f"Targets were soft (mixup, cutmix or smoothed labels): labels were judged on each sample's "
                   f"dominant class; of {total} recorded rows, {none} ({none / max(total, 1):.1%}) had no dominant "
                   f"class, {mixed} ({mixed / max(total, 1):.1%}) one with less than {_SOFT_PURITY:.0%} of the target "
                   f"and {partner} ({partner / max(total, 1):.1%}) were dominated by another sample's class: "
                   "those were left out.", evidence=soft)
    return dataclasses.replace(result, details={**result.details, "soft_targets": soft},
                               findings=(*result.findings, note))


def _dynamics(run: Run, epochs: list[int]) -> Dynamics:
    records = run.train.records
    epoch_col = records["epoch"].to_numpy()
    label_col = records["label"].to_numpy()
    keep = np.isin(epoch_col, epochs) & (label_col >= 0)
    if run.soft_targets and "target_prob" in records:
        # A mixed input speaks for its sample's label only where the sample makes up most of it
        # (3/4: a right model then still prefers its class); a row dominated by a mixup partner
        # carries the partner's class, not this sample's.
        keep &= ~(records["target_prob"].to_numpy() < _SOFT_PURITY)
        keep &= label_col == _usual_label(records["sample_id"].to_numpy(), label_col, keep)
    everything = bool(keep.all())  # the usual case: no copy of the 20M-row columns

    def column(name: str) -> np.ndarray:
        values = records[name].to_numpy()
        return values if everything else values[keep]

    ids, index = unique_ids(column("sample_id"), return_inverse=True)
    col = np.searchsorted(epochs, epoch_col if everything else epoch_col[keep])
    n_epochs = len(epochs)
    # mean per (sample, epoch): a sample drawn twice in an epoch counts once
    cell = index * n_epochs + col
    size = len(ids) * n_epochs
    total = np.bincount(cell, weights=column("margin").astype(np.float64), minlength=size)
    count = np.bincount(cell, minlength=size)
    with np.errstate(invalid="ignore"):
        margin = (total / count).reshape(len(ids), n_epochs)
    del total, count
    labels = np.full(len(ids), -1, np.int64)
    labels[index] = label_col if everything else label_col[keep]
    pred = np.full((len(ids), n_epochs), -1, np.int32)
    pred[index, col] = column("pred")
    del cell, index, col
    probs, kind, note = None, None, None
    k = run.num_classes
    if k is not None and all(e in run.train.probs_source for e in epochs):
        kind = probs_kind(run.train.probs_source[epochs[0]])
        if kind == "top-k" and len(ids) * k > _MAX_DENSE_CELLS:
            kind, note = None, (f"confident learning was left out: rebuilding the stored top-k probabilities of "
                                f"{len(ids):,} samples x {k:,} classes would take "
                                f"{len(ids) * k * 12 / 1e9:.1f} GB")
        else:
            probs = functools.partial(_epoch_probs, run.train, ids, epochs, k)
    elif k is not None and k > 2:
        note = (f"confident learning was left out: the run stored no predicted probabilities for its {k} classes "
                "(more than the tracker's max_prob_classes, and top_k_probs=0 or a run recorded before top-k "
                "probabilities were stored); the labels were judged by the margin alone")
    return Dynamics(ids, labels, margin, pred, probs, list(epochs), kind, note)


def _usual_label(ids: np.ndarray, labels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Per row, the label its sample carries most often over the kept rows (rows (m,); -2 for samples with none)."""
    uniq, index = unique_ids(ids[keep], return_inverse=True)
    k = int(labels[keep].max()) + 1 if keep.any() else 1
    counts = np.bincount(index * k + labels[keep], minlength=len(uniq) * k).reshape(len(uniq), k)
    usual = counts.argmax(1)
    pos, ok = positions(uniq, ids)
    return np.where(ok, usual[pos], -2)


def _epoch_probs(split, ids: np.ndarray, epochs: list[int], k: int, j: int) -> np.ndarray | None:
    """Probabilities (n, k) of `ids` in the j-th of `epochs`, NaN rows where not drawn; None if not stored."""
    got = split.probs(epochs[j], k)
    if got is None:
        return None
    pid, p = got
    out = np.full((len(ids), k), np.nan, np.float32)
    pos, ok = positions(ids, pid)
    if ok.all():
        out[pos] = p
    else:
        out[pos[ok]] = p[ok]
    del got, pid, p
    # arrow's allocator keeps what it freed: at 10^6 samples an epoch's table is ~100 MB, held past the check
    import pyarrow as pa
    pa.default_memory_pool().release_unused()
    return out


def _late_start(first: int, end: int) -> int:
    """The first epoch position of the window's later half (window: positions first..end-1), over which
    consistency is judged."""
    return first + (end - first) // 2


def _compute_label_issues(d: Dynamics, k: int) -> CheckResult:
    from cleanlab.filter import find_label_issues

    n, n_epochs = d.margin.shape
    first = 1 if n_epochs > 1 else 0
    ends = _window_candidates(first, n_epochs)
    try:
        end, pp, aum, n_issues = _best_window(d, first, ends, k)
    except _NoProbs:  # an epoch without stored probabilities: margins alone, as when none are stored
        d = dataclasses.replace(d, probs=None, probs_kind=None,
                                probs_note="confident learning was left out: some epochs of the window have no "
                                           "stored probabilities; the labels were judged by the margin alone")
        end, pp, aum, n_issues = _best_window(d, first, ends, k)

    prior_max = np.bincount(d.labels, minlength=k).max() / n
    agreement = float((pp.argmax(1) == d.labels).mean()) if pp is not None else float((aum > 0).mean())
    lift = (agreement - prior_max) / max(1 - prior_max, 1e-9)
    noise_rate = n_issues / n
    weak = lift < _MIN_LIFT or noise_rate > _MAX_NOISE

    flagged = np.zeros(n, bool)
    if not weak and n_issues > 0:
        if pp is not None:
            with warnings.catch_warnings():  # cleanlab warns about classes with few samples
                warnings.simplefilter("ignore")
                flagged |= find_label_issues(d.labels, pp, filter_by="prune_by_noise_rate")
        flagged[np.argsort(aum, kind="stable")[:n_issues]] = True

    # label quality: the window's probability of the given label (or a squashed margin without probabilities)
    quality = pp[np.arange(n), d.labels] if pp is not None else 1 / (1 + np.exp(-aum))
    suggested = _suggest(pp, d.labels) if pp is not None else _modal_other(d.pred[:, first:end], d.labels)
    # share of epochs in which the model predicted the suggested class, over the window's later half: its early
    # epochs belong to a model still learning (on a hard dataset a sample is learnt epochs after it is first seen)
    late = d.pred[:, _late_start(first, end):end]
    drawn = late >= 0  # epochs a sample was drawn in (and kept)
    consistency_of = (late == suggested[:, None]).sum(1) / np.maximum(drawn.sum(1), 1)
    consistency = float(consistency_of[flagged].mean()) if flagged.any() else 1.0
    settled = consistency >= _MIN_CONSISTENCY
    if not settled:
        flagged &= consistency_of >= _STRICT_CONSISTENCY
    # Classes the model still does not fit at the end of training: disagreement there (given or suggested)
    # says the model cannot represent them, not that their labels are wrong.
    recall = _class_recall(d, k)
    unfit = np.flatnonzero(recall < _MIN_RECALL)
    in_unfit = flagged & (np.isin(d.labels, unfit) | np.isin(suggested, unfit))
    cannot_fit = bool(in_unfit.any()) and in_unfit.sum() >= 0.5 * flagged.sum()
    flagged &= ~in_unfit
    # one suspicion order from both scores: mean rank (0 = most suspicious)
    suspicion = (_ranks(aum) + _ranks(quality)) / 2
    order = np.flatnonzero(flagged)[np.argsort(suspicion[flagged], kind="stable")]
    pairs = _confused_pairs(d.labels[flagged], suggested[flagged])

    window = [d.epochs[first], d.epochs[end - 1]]
    details = {
        "label_issues": d.ids[order].tolist(),
        "n_flagged": int(flagged.sum()),
        "estimated_noise_rate": round(float(noise_rate), 4),
        "confused_pairs": pairs,
        "evidence": "weak" if weak else ("cannot fit" if cannot_fit else ("strong" if settled else "moderate")),
        "unfit_classes": unfit.tolist(),
        "not_judged": int(in_unfit.sum()),
        "class_recall": {int(c): round(float(r), 4) for c, r in enumerate(recall) if np.isfinite(r)},
        "consistency": round(consistency, 4),
        "model_agreement": round(agreement, 4),
        "lift_over_prior": round(float(lift), 4),
        "window": window,
        "method": ("confident learning on probabilities averaged over the window"
                   + (" (rebuilt from each sample's stored top-k classes)" if d.probs_kind == "top-k" else "")
                   + ", united with the lowest area under the margin (count: cleanlab's calibrated estimate)")
        if pp is not None else
                  "area under the margin over the window below zero (probabilities not stored)",
        "probabilities": d.probs_kind if pp is not None else "none",
    }
    if pp is None and d.probs_note:
        details["note"] = d.probs_note
    per_sample = pd.DataFrame({
        "sample_id": d.ids, "label": d.labels, "suggested_label": suggested, "label_quality": quality,
        "aum": aum, "flagged": flagged,
    })
    findings = _findings(d, order, flagged, noise_rate, pairs, weak, lift, window, n)
    if cannot_fit or (not weak and not settled):
        # a model that fails whole classes, or whose predictions still wander, disagrees with labels for its
        # own reasons: its disagreement is listed, but it is no firm evidence of wrong labels
        findings = [dataclasses.replace(f, severity="info") for f in findings]
    if cannot_fit:
        findings.append(Finding(
            NAME, "info",
            f"The model does not fit class(es) {unfit.tolist()} even at the end of training (recall "
            f"{', '.join(f'{recall[c]:.0%}' for c in unfit[:10])}): the {int(in_unfit.sum())} samples it "
            f"disagrees with there are not judged, and the labels elsewhere only moderately.",
            remedy="A model that cannot fit whole classes needs capacity or training (unfreeze layers, a larger "
                   "model or feature size, a longer or better schedule), not relabelling; audit the labels again then.",
            evidence={"unfit_classes": unfit.tolist(), "not_judged": int(in_unfit.sum())}))
    if pp is None and d.probs_note:
        findings.append(Finding(
            NAME, "info", d.probs_note[0].upper() + d.probs_note[1:] + ".",
            remedy="Track with Tracker(top_k_probs=8) (the default) or a larger max_prob_classes to store what "
                   "confident learning needs.",
            evidence={"num_classes": k, "samples": n}))
    if not weak and not settled:
        findings.append(Finding(
            NAME, "info",
            f"The model keeps changing its predictions for the samples it disagrees with (they go to the same "
            f"other class in {consistency:.0%} of the window's later epochs, against 90% or more for mislabeled "
            f"samples): "
            f"only the {int(flagged.sum())} it consistently assigns elsewhere are listed.",
            remedy="Fix what holds training back (optimizer, feature scale) and audit the labels again.",
            evidence={"consistency": round(consistency, 3)}))
    return CheckResult.from_findings(NAME, findings, score=0.0 if weak else min(1.0, flagged.mean() * 2),
                                     details=details, per_sample=per_sample)


def _class_recall(d: Dynamics, k: int) -> np.ndarray:
    """Per class (k,): the share of its samples' predictions over the last third of the epochs that are
    the given label (NaN for a class without samples)."""
    n_epochs = d.pred.shape[1]
    late = d.pred[:, n_epochs - max(1, n_epochs // 3):]
    drawn = late >= 0
    hits = ((late == d.labels[:, None]) & drawn).sum(1)
    seen = np.bincount(d.labels, weights=drawn.sum(1), minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.bincount(d.labels, weights=hits, minlength=k) / seen


def _window_candidates(first: int, n_epochs: int) -> list[int]:
    """Window ends (exclusive) to try, from a few epochs in to the last."""
    lo = min(first + 2, n_epochs)
    ends = np.unique(np.linspace(lo, n_epochs, num=min(_WINDOW_CANDIDATES, n_epochs - lo + 1)).round().astype(int))
    return [int(e) for e in ends if e > first] or [n_epochs]


class _NoProbs(Exception):
    """An epoch of the window has no stored probabilities."""


def _best_window(d: Dynamics, first: int, ends: list[int], k: int) -> tuple[int, np.ndarray | None, np.ndarray, int]:
    """(end, probabilities (n, k) or None, area under the margin (n,), estimated number of issues) of the
    candidate window whose lowest margins are best separated from the rest."""
    best = None
    for end, pp, aum in _windows(d, first, ends, k):
        # without stored probabilities (many classes), the margin alone: negative = model prefers another class
        n_issues = _count_issues(d.labels, pp) if pp is not None else int((aum < 0).sum())
        sep = _separation(aum, n_issues)
        # ties (no window shows a separable group: clean labels) go to the later, better-trained window
        if best is None or sep >= best[0] - 1e-9:
            best = (sep, end, pp, aum, n_issues)
        del pp
    return best[1:]


def _windows(d: Dynamics, first: int, ends: list[int], k: int) -> Iterator[tuple[int, np.ndarray | None, np.ndarray]]:
    """Per window end (exclusive, ascending): (end, probabilities (n, k) or None if not stored, area under
    the margin (n,)), averaged over epochs first..end-1.

    The probabilities are summed epoch by epoch, so one epoch's are in memory at a time.
    """
    n = len(d.ids)
    total = count = None
    if d.probs is not None:
        total = np.zeros((n, k), np.float32)
        count = np.zeros((n, k), np.int32)
    done = first
    for end in ends:
        if total is not None:
            for j in range(done, end):
                p = d.probs(j)
                if p is None:
                    raise _NoProbs
                p[np.isnan(d.margin[:, j])] = np.nan  # rows left out of the margins (soft targets) stay out
                missing = np.isnan(p)
                p[missing] = 0.0
                total += p
                count += ~missing
            done = end
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # samples never drawn in the window
            aum = np.nanmean(d.margin[:, first:end], axis=1)
        aum = np.where(np.isfinite(aum), aum, 0.0)
        if total is None:
            yield end, None, aum
            continue
        # float32 sum divided by the count, as np.nanmean over the stacked epochs would (a float32 division is
        # the float64 one rounded to float32: 53 >= 2 * 24 + 2 bits make that double rounding exact)
        with np.errstate(invalid="ignore", divide="ignore"):  # samples never kept in the window: NaN, then 1/k
            pp = np.divide(total, count, dtype=np.float32).astype(np.float64)
        pp[~np.isfinite(pp)] = 1.0 / k
        np.clip(pp, 1e-9, None, out=pp)
        pp /= pp.sum(1, keepdims=True)
        yield end, pp, aum


def _count_issues(labels: np.ndarray, pp: np.ndarray) -> int:
    """cleanlab's num_label_issues(labels, pp, estimation_method="off_diagonal_calibrated"), its steps without
    its input validation (a Python loop over the labels: 1 s a window at 10^6 samples; ours are valid)."""
    from cleanlab.count import compute_confident_joint, estimate_joint

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        confident = compute_confident_joint(labels, pp, calibrate=True)
        joint = estimate_joint(labels, pp, confident_joint=confident)
    return int(np.rint((1.0 - joint.trace()) * len(labels)))


def _separation(aum: np.ndarray, n_issues: int) -> float:
    """Fisher ratio between the n_issues lowest margins and the rest (0 when either group is tiny)."""
    n = len(aum)
    if n_issues < 5 or n - n_issues < 5:
        return 0.0
    order = np.sort(aum)
    low, high = order[:n_issues], order[n_issues:]
    pooled = (low.var() * len(low) + high.var() * len(high)) / n
    return float((high.mean() - low.mean()) / np.sqrt(max(pooled, 1e-12)))


def _ranks(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(x, kind="stable"), kind="stable").astype(np.float64)


def _suggest(pp: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The most probable class other than the given one when the model prefers it, else the given label."""
    top = pp.argmax(1)
    second = np.argsort(pp, axis=1)[:, -2]
    return np.where(top != labels, top, np.where(pp[np.arange(len(pp)), top] < 0.5, second, top))


def _modal_other(pred: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The class other than the given one predicted most often over the epochs (the given label if none)."""
    out = labels.copy()
    other = np.where((pred >= 0) & (pred != labels[:, None]), pred, -1)
    for i in np.flatnonzero((other >= 0).any(1)):
        values, counts = np.unique(other[i][other[i] >= 0], return_counts=True)
        out[i] = values[counts.argmax()]
    return out


def _confused_pairs(given: np.ndarray, suggested: np.ndarray, top: int = 5) -> list[dict]:
    if len(given) == 0:
        return []
    pairs, counts = np.unique(np.stack([given, suggested], 1), axis=0, return_counts=True)
    order = np.argsort(-counts, kind="stable")[:top]
    return [{"given": int(pairs[i, 0]), "suggested": int(pairs[i, 1]), "count": int(counts[i])} for i in order]


def _findings(d, order, flagged, noise_rate, pairs, weak, lift, window, n) -> list[Finding]:
    if weak:
        why = (f"its predictions agree with the given labels hardly better than guessing the commonest class "
               f"(lift {lift:.2f})" if lift < _MIN_LIFT else
               f"it would call {noise_rate:.0%} of the labels wrong, more than is plausible")
        return [Finding(NAME, "info", f"Label quality not judged: the model has learnt too little, {why}.",
                        remedy="Make training work first (see the optimizer findings), then audit the labels.",
                        evidence={"lift_over_prior": round(float(lift), 3), "window": window})]
    count = int(flagged.sum())
    if count == 0:
        return []
    share = count / n
    # severity from the smaller of the flagged share and the calibrated noise estimate: on clean data a few hard
    # samples get flagged while the estimate stays low; real noise raises both
    rate = min(share, float(noise_rate)) if np.isfinite(noise_rate) else share
    severity = "critical" if rate > 0.05 else ("warning" if rate > 0.01 else "info")
    pair_text = ", ".join(f"{p['given']}→{p['suggested']} ({p['count']})" for p in pairs[:3])
    return [Finding(
        NAME, severity,
        f"{count} samples ({share:.1%}) look mislabeled; the estimated noise rate is {noise_rate:.1%}"
        + (f"; most often {pair_text}" if pair_text else "") + ".",
        remedy="Review and relabel the listed ids (label_issues, most suspicious first), or drop them and retrain; "
               "with many, consider a noise-robust loss.",
        evidence={"flagged": count, "estimated_noise_rate": round(float(noise_rate), 4), "window": window,
                  "confused_pairs": pairs},
        ids=tuple(int(i) for i in d.ids[order]))]
