"""Drift within a run: did the inputs (or labels) the model sees change from one epoch to another?

A pipeline whose normalisation changes mid-run, an augmentation switched on at
some epoch, a new data source, labels remapped by a buggy loader: the loss
curve bends and nothing in the optimiser explains it. The check names the
first epoch whose data differ from before, with three kinds of evidence:

- exact, per sample (`fingerprint` column of the records): every recorded
  sample's input projected on one fixed direction. With a deterministic
  pipeline a sample id keeps its fingerprint every epoch, so the share of ids
  whose fingerprint moved since their previous sighting is ~0 until the
  pipeline changes and ~1 at the epoch it does: that epoch is certain.
  Random augmentation makes fingerprints differ every epoch from epoch 1 on;
  then this evidence is inconclusive (not drift) and the distribution test
  decides;
- distributional (the per-epoch reservoir of projected inputs): a two-sample
  Kolmogorov-Smirnov test per projected dimension of each epoch against the
  first epoch (Holm over dimensions, then Holm over epochs). When it alone
  dates the change, one multivariate MMD permutation test confirms it. This
  also sees what fingerprints cannot: new sample ids, a sampler that draws
  other samples. scipy and numpy compute both by default; alibi-detect's
  detectors with the `alibi` backend (`tests.py`);
- per feature (the per-epoch moments): which features' mean or spread moved,
  to name them.

Labels get the same two tests: the share of ids whose label changed since
their previous sighting, and a chi-square test of the class counts of each
epoch against the first (Holm over epochs).

Only complete epochs are judged (a partial pass draws a biased part of the data).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from dataaudit.checks.base import CheckResult, Finding, json_number
from dataaudit.checks.drift import tests
from dataaudit.checks.drift.features import feature_shifts
from dataaudit.checks.drift.fingerprints import (
    compute_changes,
    compute_first_change,
    differs_from_first,
    fingerprint_column,
    fp_tolerance,
    median_share,
    rows,
    share_of,
)
from dataaudit.run import Run, Split, in_epochs

NAME = "drift"

# Family-wise error rate of each scan over epochs (inputs, labels): a run of 100
# epochs then raises a false alarm in at most 1 of 100 clean runs per scan.
_ALPHA = 0.01
# A reference epoch and at least two to compare: with one, a change and a one-off glitch look the same.
_MIN_EPOCHS = 3
# Reservoirs smaller than this are too small for a two-sample test.
_MIN_RESERVOIR = 20
# The MMD test subsamples each side to this many rows: 256 a side already see any drift the
# per-dimension KS scan found at its corrected level, and the kernel matrix stays (512, 512).
_MMD_SAMPLES = 256
_MAX_FEATURES = 20


def check(run: Run, *, split: str = "train", backend: str | None = None) -> CheckResult:
    """Find the first epoch whose inputs or labels differ from the epochs before.

    Parameters
    ----------
    run : the captured run; reads the split's records (fingerprint, label), reservoir and features.
    split : which split to judge.
    backend : what computes the KS and MMD tests: "scipy" (scipy and numpy) or "alibi" (alibi-detect,
        `pip install "dataaudit[alibi]"`); default: $DATAAUDIT_DRIFT_BACKEND, else "scipy".

    Returns
    -------
    CheckResult with details `first_drift_epoch` (int or None: the first epoch whose inputs or labels
    differ), `method` (what dated it: "fingerprint", "ks", "label ids", "chi-square" or "none"),
    `pipeline` ("deterministic", "random" or "unknown", from the fingerprints), `features` (indices
    of the sketched, flattened input that moved, most first), `label_drift`, `backend` and `per_epoch`.
    """
    backend = tests.resolve_backend(backend)
    data = run.split(split)
    epochs = data.with_records(data.complete_epochs) if data is not None else []  # beyond the row budget: held
    if len(epochs) < _MIN_EPOCHS:
        return CheckResult.skipped(
            NAME, f"drift needs at least {_MIN_EPOCHS} complete epochs of split {split!r} "
                  f"(a reference and two to compare); got {len(epochs)}")
    records = in_epochs(data.records, epochs)
    has_fingerprints = bool(np.isfinite(fingerprint_column(records)).any())
    if not (has_fingerprints or any(e in data.reservoir for e in epochs)):
        return CheckResult.skipped(
            NAME, "no inputs were recorded; pass inputs= to tracker.record() to check the inputs for drift")
    return _compute_drift(data, epochs, backend=backend)


# ---------------------------------------------------------------- the check


def _compute_drift(data: Split, epochs: list[int], *, backend: str) -> CheckResult:
    """Run every test on the complete `epochs` (ascending, at least 3) of `data` and decide."""
    epochs_arr = np.asarray(epochs, dtype=np.int64)
    records = in_epochs(data.records, epochs)
    # the stored (narrow) dtypes: an int64 copy of a column is 160 MB at 20M rows
    rec_epoch = records["epoch"].to_numpy()
    rec_ids = records["sample_id"].to_numpy()

    # exact per-sample evidence: fingerprints
    fp = fingerprint_column(records)
    known = np.isfinite(fp)
    labels = records["label"].to_numpy()
    has_label = labels >= 0
    fp_changes = compute_changes(epochs_arr, *rows(known, rec_epoch, rec_ids, fp), tolerance=fp_tolerance)
    fp_index, pipeline = compute_first_change(fp_changes["changed"], fp_changes["compared"])

    # distributional evidence: KS scan of the reservoirs
    scan = tests.ks_scan(data.reservoir, epochs, backend=backend, min_rows=_MIN_RESERVOIR)
    ks_rejected = tests.rejected(scan["p_value"], scan["tested"], _ALPHA)
    ks_index = _first(ks_rejected)

    input_index, method = _earliest((fp_index, "fingerprint"), (ks_index, "ks"))

    # labels: per id, and class proportions
    label_changes = compute_changes(epochs_arr, *rows(has_label, rec_epoch, rec_ids, labels), tolerance=None)
    label_id_index, label_pipeline = compute_first_change(label_changes["changed"], label_changes["compared"])
    counts = _compute_class_counts(epochs_arr, rec_epoch[has_label], labels[has_label])
    label_p = tests.chi2_scan(counts)
    label_rejected = tests.rejected(label_p, np.isfinite(label_p), _ALPHA)
    label_p_index = _first(label_rejected)
    label_index, label_method = _earliest((label_id_index, "label ids"), (label_p_index, "chi-square"))

    first_index, first_method = _earliest((input_index, method), (label_index, label_method))

    # per-feature evidence, and the MMD confirmation of the epoch found
    features: list[dict[str, Any]] = []
    mmd_p = None
    if input_index is not None:
        features = feature_shifts(data.features, epochs[:input_index], epochs[input_index:])
        if method == "ks":  # fingerprints date a change with certainty; a test adds nothing to them
            mmd_p = _confirm_with_mmd(data.reservoir, scan["reference"], epochs[input_index], backend)

    # Per epoch: does it differ from the first epoch? (A change that is undone later shows as such.)
    input_differs = ks_rejected | differs_from_first(fp_changes, dated=fp_index is not None)
    label_differs = label_rejected | differs_from_first(label_changes, dated=label_id_index is not None)
    per_epoch = []
    for i, epoch in enumerate(epochs):
        per_epoch.append({
            "epoch": epoch,
            "p_value": json_number(scan["p_value"][i], 6),
            "statistic": json_number(scan["statistic"][i], 6),
            "changed_share": share_of(fp_changes, "changed", i),
            "changed_vs_first_share": share_of(fp_changes, "changed_first", i),
            "label_changed_share": share_of(label_changes, "changed", i),
            "label_p_value": json_number(label_p[i], 6),
            "input_drift": bool(input_differs[i]),
            "label_drift": bool(label_differs[i]),
            "drift": bool(input_differs[i] or label_differs[i]),
        })

    findings = []
    score = 0.0
    if input_index is not None:
        finding, strength = _input_finding(epochs, input_index, method, pipeline, scan, fp_changes, features, mmd_p,
                                           persistent=bool(input_differs[-1]))
        findings.append(finding)
        score = max(score, 0.5 + 0.5 * strength)
    if label_index is not None:
        finding, strength = _label_finding(epochs, label_index, label_method, label_changes, counts, label_p)
        findings.append(finding)
        score = max(score, 0.5 + 0.5 * strength)

    details = {
        "first_drift_epoch": None if first_index is None else int(epochs[first_index]),
        "input_drift_epoch": None if input_index is None else int(epochs[input_index]),
        "method": first_method,
        "pipeline": pipeline,
        "median_changed_share": median_share(fp_changes),
        "reference_epoch": scan["reference"],
        "features": [f["feature"] for f in features[:_MAX_FEATURES]],
        "features_moved": len(features),
        "mmd_p_value": mmd_p,
        "label_drift": {
            "detected": label_index is not None,
            "first_epoch": None if label_index is None else int(epochs[label_index]),
            "method": label_method if label_index is not None else None,
            "labels": label_pipeline,
        },
        "per_epoch": per_epoch,
        "alpha": _ALPHA,
        "backend": backend,
    }
    return CheckResult.from_findings(NAME, findings, score=score, details=details)


def _confirm_with_mmd(reservoir: dict[int, tuple[np.ndarray, np.ndarray]], reference: int | None,
                      epoch: int, backend: str) -> float | None:
    """p-value of one multivariate MMD permutation test: the drift epoch's reservoir against the reference's.

    Each side is subsampled to _MMD_SAMPLES rows (seeded: the same rows every time).
    """
    if reference is None or epoch not in reservoir or epoch == reference:
        return None
    rng = np.random.default_rng(0)
    sides = []
    for e in (reference, epoch):
        x = np.asarray(reservoir[e][1], dtype=np.float32)
        x = x[np.isfinite(x).all(axis=1)]
        if len(x) > _MMD_SAMPLES:
            x = x[np.sort(rng.choice(len(x), _MMD_SAMPLES, replace=False))]
        sides.append(x)
    if min(len(x) for x in sides) < _MIN_RESERVOIR:
        return None
    p_value, _ = tests.mmd_test(sides[0], sides[1], backend=backend)
    return p_value


def _compute_class_counts(epochs: np.ndarray, rec_epoch: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Class counts per epoch, shape (T, classes); (T, 0) when no labels were recorded."""
    if len(labels) == 0:
        return np.zeros((len(epochs), 0), np.int64)
    k = int(labels.max()) + 1
    position = np.searchsorted(epochs, rec_epoch)
    return np.bincount(position * k + labels, minlength=len(epochs) * k).reshape(len(epochs), k)


def _first(flags: np.ndarray) -> int | None:
    hits = np.flatnonzero(flags)
    return int(hits[0]) if len(hits) else None


def _earliest(*candidates: tuple[int | None, str]) -> tuple[int | None, str]:
    """The (epoch index, method) that dates a change first, the first listed on a tie; (None, "none") if none."""
    found = [(i, name) for i, name in candidates if i is not None]
    return min(found, key=lambda c: c[0]) if found else (None, "none")


# --------------------------------------------------------------- findings



def _input_finding(epochs: list[int], index: int, method: str, pipeline: str, scan: dict[str, Any],
                   fp_changes: dict[str, np.ndarray], features: list[dict[str, Any]],
                   mmd_p: float | None, *, persistent: bool) -> tuple[Finding, float]:
    """The finding for input drift at epochs[index], and its strength in [0, 1]."""
    epoch = int(epochs[index])
    share = share_of(fp_changes, "changed", index)
    ks_p, ks_stat = json_number(scan["p_value"][index], 6), json_number(scan["statistic"][index], 6)
    if method == "fingerprint":
        how = (f"{share:.1%} of the samples seen before came back with a different input "
               f"(the pipeline was deterministic until then)")
        strength = share or 0.0
    else:
        how = f"their distribution moved (largest KS distance {ks_stat:.2f}, {_fmt_p(ks_p)} against epoch " \
              f"{scan['reference']})"
        if pipeline == "random":
            how += "; the inputs differ every epoch (random augmentation), so this rests on the distribution test"
        strength = ks_stat or 0.0
    named = ""
    if features:
        top = features[0]
        named = (f"; feature {top['feature']} moved most (mean {top['mean_before']:.3g} -> {top['mean_after']:.3g}, "
                 f"std {top['std_before']:.3g} -> {top['std_after']:.3g})"
                 + (f", {len(features) - 1} more moved" if len(features) > 1 else ""))
    # A change still there at the last epoch (`persistent`) trained the rest of the run on other data.
    # An MMD test that does not confirm a KS-only finding leaves it a warning.
    confirmed = method == "fingerprint" or mmd_p is None or mmd_p <= _ALPHA
    severity = "critical" if persistent and confirmed and strength >= 0.2 else "warning"
    evidence = {"epoch": epoch, "method": method, "pipeline": pipeline, "changed_share": share,
                "ks_p_value": ks_p, "ks_statistic": ks_stat, "reference_epoch": scan["reference"],
                "mmd_p_value": mmd_p, "persistent": persistent, "features": features[:5]}
    finding = Finding(
        NAME, severity,
        f"The inputs changed at epoch {epoch}: {how}{named}.",
        remedy=(f"Check the data pipeline for a change at epoch {epoch}: normalisation, augmentation schedule, "
                "data source or sampler. If the change is intended (a curriculum, progressive augmentation), "
                "expect the loss to jump there; otherwise keep the transform the same in every epoch "
                "(and the same as at evaluation)."),
        evidence=evidence)
    return finding, float(min(max(strength, 0.0), 1.0))


def _label_finding(epochs: list[int], index: int, method: str, changes: dict[str, np.ndarray], counts: np.ndarray,
                   label_p: np.ndarray) -> tuple[Finding, float]:
    """The finding for label drift at epochs[index], and its strength in [0, 1]."""
    epoch = int(epochs[index])
    share = share_of(changes, "changed", index)
    p = json_number(label_p[index], 6)
    ref = counts[0] / max(counts[0].sum(), 1)
    now = counts[index] / max(counts[index].sum(), 1)
    moved = float(0.5 * np.abs(now - ref).sum())  # total variation distance of the class proportions
    if method == "label ids":
        how = f"{share:.1%} of the samples seen before came back with a different label"
        strength = share or 0.0
    else:
        how = f"the class proportions moved by {moved:.1%} (chi-square {_fmt_p(p)} against epoch {epochs[0]})"
        strength = min(1.0, 2 * moved)
    finding = Finding(
        NAME, "critical" if strength >= 0.05 else "warning",
        f"The labels changed at epoch {epoch}: {how}.",
        remedy=(f"Check what produces the labels at epoch {epoch}: a label map or class index rebuilt "
                "(e.g. from an unsorted folder listing), a dataset swapped or re-ordered while ids stay the same, "
                "or a sampler that re-weights classes from then on."),
        evidence={"epoch": epoch, "method": method, "changed_share": share, "chi2_p_value": p,
                  "proportion_shift": round(moved, 4)})
    return finding, float(min(max(strength, 0.0), 1.0))


def _fmt_p(p: float | None) -> str:
    """A p-value for a sentence; an underflowed 0 reads as a bound."""
    if p is None:
        return "p = n/a"
    return "p < 1e-300" if p == 0 else f"p = {p:.1e}"

