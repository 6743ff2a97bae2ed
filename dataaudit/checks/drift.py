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
  Kolmogorov-Smirnov test per projected dimension (alibi-detect `KSDrift`,
  Bonferroni over dimensions) of each epoch against the first epoch, Holm over
  epochs. When it alone dates the change, one multivariate MMD permutation
  test (alibi-detect `MMDDrift`) confirms it. This also sees what
  fingerprints cannot: new sample ids, a sampler that draws other samples;
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
import pandas as pd

from dataaudit.checks.base import CheckResult, Finding, json_number
from dataaudit.run import Run, Split, in_epochs, positions, unique_ids

NAME = "drift"

# Family-wise error rate of each scan over epochs (inputs, labels): a run of 100
# epochs then raises a false alarm in at most 1 of 100 clean runs per scan.
_ALPHA = 0.01
# A reference epoch and at least two to compare: with one, a change and a one-off glitch look the same.
_MIN_EPOCHS = 3
# Fingerprints of the same input agree to float rounding (rel ~1e-5; TF32 matmuls give ~1e-3),
# relative to the value plus the spread of all fingerprints (values near 0 have no useful relative error).
_FINGERPRINT_RTOL = 1e-3
# A transition (previous sighting -> this epoch) is stable when at most this share of ids changed
# (deterministic pipeline), changed when at least _CHANGED_SHARE did; in between is neither.
_STABLE_SHARE = 1e-3
_CHANGED_SHARE = 0.02
# Fewer ids than this seen again in an epoch say nothing about it.
_MIN_COMPARED = 10
# Reservoirs smaller than this are too small for a two-sample test.
_MIN_RESERVOIR = 20
_MMD_PERMUTATIONS = 100
_MMD_SAMPLES = 256
# Once a change is dated, a feature moved when its mean moved by at least this many standard deviations
# (or its spread by this log-ratio) and that move is _FEATURE_Z standard errors away from noise
# (about a Bonferroni bound over a thousand features at 1%).
_FEATURE_EFFECT = 0.05
_FEATURE_Z = 4.0
_MAX_FEATURES = 20


def check(run: Run, *, split: str = "train") -> CheckResult:
    """Find the first epoch whose inputs or labels differ from the epochs before.

    Parameters
    ----------
    run : the captured run; reads the split's records (fingerprint, label), reservoir and features.
    split : which split to judge.

    Returns
    -------
    CheckResult with details `first_drift_epoch` (int or None: the first epoch whose inputs or labels
    differ), `method` (what dated it: "fingerprint", "ks", "label ids", "chi-square" or "none"),
    `pipeline` ("deterministic", "random" or "unknown", from the fingerprints), `features` (indices
    of the sketched, flattened input that moved, most first), `label_drift` and `per_epoch`.
    """
    data = run.split(split)
    epochs = data.complete_epochs if data is not None else []
    if len(epochs) < _MIN_EPOCHS:
        return CheckResult.skipped(
            NAME, f"drift needs at least {_MIN_EPOCHS} complete epochs of split {split!r} "
                  f"(a reference and two to compare); got {len(epochs)}")
    records = in_epochs(data.records, epochs)
    has_fingerprints = bool(np.isfinite(_fingerprints(records)).any())
    if not (has_fingerprints or any(e in data.reservoir for e in epochs)):
        return CheckResult.skipped(
            NAME, "no inputs were recorded; pass inputs= to tracker.record() to check the inputs for drift")
    return _compute_drift(data, epochs)


# ---------------------------------------------------------------- the check


def _compute_drift(data: Split, epochs: list[int]) -> CheckResult:
    """Run every test on the complete `epochs` (ascending, at least 3) of `data` and decide."""
    epochs_arr = np.asarray(epochs, dtype=np.int64)
    records = in_epochs(data.records, epochs)
    # the stored (narrow) dtypes: an int64 copy of a column is 160 MB at 20M rows
    rec_epoch = records["epoch"].to_numpy()
    rec_ids = records["sample_id"].to_numpy()

    # exact per-sample evidence: fingerprints
    fp = _fingerprints(records)
    known = np.isfinite(fp)
    labels = records["label"].to_numpy()
    has_label = labels >= 0
    fp_changes = _compute_changes(epochs_arr, *_rows(known, rec_epoch, rec_ids, fp), tolerance=_fp_tolerance)
    fp_index, pipeline = _compute_first_change(fp_changes["changed"], fp_changes["compared"])

    # distributional evidence: KS scan of the reservoirs
    scan = _scan_reservoirs(data.reservoir, epochs)
    ks_rejected = _rejected(scan["p_value"], scan["tested"])
    ks_index = _first(ks_rejected)

    input_index, method = _earliest((fp_index, "fingerprint"), (ks_index, "ks"))

    # labels: per id, and class proportions
    label_changes = _compute_changes(epochs_arr, *_rows(has_label, rec_epoch, rec_ids, labels), tolerance=None)
    label_id_index, label_pipeline = _compute_first_change(label_changes["changed"], label_changes["compared"])
    counts = _compute_class_counts(epochs_arr, rec_epoch[has_label], labels[has_label])
    label_p = _compute_chi2_scan(counts)
    label_rejected = _rejected(label_p, np.isfinite(label_p))
    label_p_index = _first(label_rejected)
    label_index, label_method = _earliest((label_id_index, "label ids"), (label_p_index, "chi-square"))

    first_index, first_method = _earliest((input_index, method), (label_index, label_method))

    # per-feature evidence, and the MMD confirmation of the epoch found
    features: list[dict[str, Any]] = []
    mmd_p = None
    if input_index is not None:
        features = _feature_shifts(data.features, epochs[:input_index], epochs[input_index:])
        if method == "ks":  # fingerprints date a change with certainty; a test adds nothing to them
            mmd_p = _confirm_with_mmd(data.reservoir, scan["reference"], epochs[input_index])

    # Per epoch: does it differ from the first epoch? (A change that is undone later shows as such.)
    input_differs = ks_rejected | _differs_from_first(fp_changes, dated=fp_index is not None)
    label_differs = label_rejected | _differs_from_first(label_changes, dated=label_id_index is not None)
    per_epoch = []
    for i, epoch in enumerate(epochs):
        per_epoch.append({
            "epoch": epoch,
            "p_value": json_number(scan["p_value"][i], 6),
            "statistic": json_number(scan["statistic"][i], 6),
            "changed_share": _share(fp_changes, "changed", i),
            "changed_vs_first_share": _share(fp_changes, "changed_first", i),
            "label_changed_share": _share(label_changes, "changed", i),
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
        "median_changed_share": _median_share(fp_changes),
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
    }
    return CheckResult.from_findings(NAME, findings, score=score, details=details)


# ------------------------------------------------------- per-sample changes


def _fingerprints(records: pd.DataFrame) -> np.ndarray:
    """The fingerprint column as stored (float32), shape (n,); all NaN for runs written before it existed.
    Compared in float64 one epoch at a time (`_compute_changes`)."""
    if "fingerprint" not in records.columns:
        return np.full(len(records), np.nan, np.float32)
    return records["fingerprint"].to_numpy()


def _rows(keep: np.ndarray, *columns: np.ndarray) -> tuple[np.ndarray, ...]:
    """The columns, filtered by `keep` (n,) only when something is to be dropped (no copy otherwise)."""
    return columns if keep.all() else tuple(c[keep] for c in columns)


def _fp_tolerance(previous: np.ndarray, scale: float) -> np.ndarray:
    """Largest difference (m,) from `previous` fingerprints (m,) that is still rounding."""
    return _FINGERPRINT_RTOL * (np.abs(previous) + scale)


def _compute_changes(epochs: np.ndarray, rec_epoch: np.ndarray, ids: np.ndarray, values: np.ndarray, *,
                     tolerance: Any) -> dict[str, np.ndarray]:
    """Per epoch, how many ids seen before came back with a different value.

    Parameters
    ----------
    epochs : (T,) the epochs judged, ascending.
    rec_epoch, ids, values : (n,) one row per recorded sample: its epoch, id and value (fingerprint or label).
    tolerance : None for exact comparison (labels), else f(previous (m,), scale) -> (m,) allowed difference.

    Returns
    -------
    dict of (T,) int arrays: compared (ids seen in an earlier epoch), changed (value differs from the
    id's previous sighting), changed_first (differs from the id's first sighting).

    One epoch at a time against per-id last and first values: memory stays at a few arrays the size of
    the dataset, where sorting all rows by id took several the size of the run (20M rows at 10^6 x 20).
    """
    out = {k: np.zeros(len(epochs), np.int64) for k in ("compared", "changed", "changed_first")}
    if len(ids) == 0:
        return out
    uniq = unique_ids(ids)
    dtype = np.float64 if tolerance is not None else values.dtype
    last, first = np.zeros(len(uniq), dtype), np.zeros(len(uniq), dtype)
    seen = np.zeros(len(uniq), bool)
    scale = _scale(values) if tolerance is not None else 0.0
    # the rows come epoch by epoch (they do when loaded): slices, no masks
    by_epoch = len(rec_epoch) < 2 or bool((rec_epoch[1:] >= rec_epoch[:-1]).all())
    starts, ends = (np.searchsorted(rec_epoch, epochs), np.searchsorted(rec_epoch, epochs, side="right")) \
        if by_epoch else (None, None)
    for t, epoch in enumerate(epochs):
        rows = slice(starts[t], ends[t]) if by_epoch else rec_epoch == epoch
        pos, _ = positions(uniq, ids[rows])
        vals = values[rows].astype(dtype, copy=False)
        if len(pos) and np.bincount(pos).max() > 1:  # drawn twice in one epoch: its first draw counts
            _, firsts = np.unique(pos, return_index=True)
            pos, vals = pos[firsts], vals[firsts]
        again = seen[pos]
        p, v = pos[again], vals[again]
        if tolerance is None:
            changed, changed_first = v != last[p], v != first[p]
        else:
            changed = np.abs(v - last[p]) > tolerance(last[p], scale)
            changed_first = np.abs(v - first[p]) > tolerance(first[p], scale)
        out["compared"][t], out["changed"][t], out["changed_first"][t] = again.sum(), changed.sum(), changed_first.sum()
        new = ~again
        first[pos[new]] = vals[new]
        last[pos] = vals
        seen[pos] = True
    return out


def _scale(values: np.ndarray, most: int = 2_000_000) -> float:
    """Median absolute deviation of the values (on an even subsample of at most `most`), else their largest size."""
    sample = values[:: max(1, len(values) // most)].astype(np.float64)
    return float(np.median(np.abs(sample - np.median(sample)))) or float(np.abs(sample).max()) or 1.0


def _compute_first_change(changed: np.ndarray, compared: np.ndarray) -> tuple[int | None, str]:
    """The first epoch index at which a deterministic pipeline changed, and what the pipeline looks like.

    Parameters
    ----------
    changed, compared : (T,) per epoch, ids that changed since their previous sighting, and ids compared.

    Returns
    -------
    (index or None, pipeline): pipeline is "deterministic" (ids keep their values across the stable
    transitions), "random" (values differ from the first transition on: random augmentation, so the
    per-id evidence cannot date a change) or "unknown" (no id was seen twice).
    """
    share = np.where(compared >= _MIN_COMPARED, changed / np.maximum(compared, 1), np.nan)
    judged = np.flatnonzero(np.isfinite(share))
    for k, i in enumerate(judged):
        if share[i] <= _STABLE_SHARE:
            continue
        if share[i] >= _CHANGED_SHARE and changed[i] >= 2:
            # Dated with certainty when stable transitions come before it; at the first transition,
            # only when the next one is stable again (else it is random augmentation from the start).
            if k > 0 or (k + 1 < len(judged) and share[judged[k + 1]] <= _STABLE_SHARE):
                return int(i), "deterministic"
        if k == 0:
            return None, "random"
        # After a stable start, a few ids changed (fewer than _CHANGED_SHARE): too few to date
        # a change; later transitions still can.
    return None, "deterministic" if len(judged) else "unknown"


def _share(changes: dict[str, np.ndarray], key: str, i: int) -> float | None:
    n = int(changes["compared"][i])
    return round(float(changes[key][i] / n), 4) if n else None


def _median_share(changes: dict[str, np.ndarray]) -> float | None:
    ok = changes["compared"] > 0
    return round(float(np.median(changes["changed"][ok] / changes["compared"][ok])), 4) if ok.any() else None


# ---------------------------------------------------- distribution tests


def _scan_reservoirs(reservoir: dict[int, tuple[np.ndarray, np.ndarray]], epochs: list[int]) -> dict[str, Any]:
    """KS test of each epoch's reservoir against the first epoch's, per projected dimension.

    Returns
    -------
    dict: reference (epoch or None); p_value (T,) Bonferroni-combined over dimensions (NaN where
    untested); statistic (T,) the largest KS distance over dimensions; tested (T,) bool.
    """
    n = len(epochs)
    out = {"reference": None, "p_value": np.full(n, np.nan), "statistic": np.full(n, np.nan),
           "tested": np.zeros(n, bool)}
    usable = [i for i, e in enumerate(epochs) if e in reservoir and len(reservoir[e][0]) >= _MIN_RESERVOIR]
    if len(usable) < 2:
        return out
    ref_index = usable[0]
    # The first epoch is the reference: a change at epoch 1 stays visible, and every later epoch is
    # compared with data that cannot have drifted yet (a rolling window would absorb a slow drift).
    x_ref = np.asarray(reservoir[epochs[ref_index]][1], dtype=np.float32)
    out["reference"] = int(epochs[ref_index])
    detector = _alibi_cd().KSDrift(x_ref, p_val=_ALPHA, correction="bonferroni")
    for i in usable[1:]:
        x = np.asarray(reservoir[epochs[i]][1], dtype=np.float32)
        p, dist = detector.score(x)
        # Bonferroni over the dimensions, as KSDrift's own batch decision does.
        out["p_value"][i] = min(1.0, float(np.min(p)) * len(p))
        out["statistic"][i] = float(np.max(dist))
        out["tested"][i] = True
    return out


def _confirm_with_mmd(reservoir: dict[int, tuple[np.ndarray, np.ndarray]], reference: int | None,
                      epoch: int) -> float | None:
    """p-value of one multivariate MMD permutation test: the drift epoch's reservoir against the reference's.

    Each side is subsampled to _MMD_SAMPLES rows: the permutations re-index the (2m, 2m) kernel
    matrix, ~0.1 s each at m = 1024 on a CPU, and 256 rows a side already see any drift the
    per-dimension KS scan found at its corrected level.
    """
    if reference is None or epoch not in reservoir or epoch == reference:
        return None
    rng = np.random.default_rng(0)
    sides = []
    for e in (reference, epoch):
        x = np.asarray(reservoir[e][1], dtype=np.float32)
        if len(x) > _MMD_SAMPLES:
            x = x[np.sort(rng.choice(len(x), _MMD_SAMPLES, replace=False))]
        sides.append(np.array(x, dtype=np.float32, copy=True))  # torch wants writable arrays
    if min(len(x) for x in sides) < _MIN_RESERVOIR:
        return None
    import torch

    # The permutations draw from torch's global generator: fork it so the result is
    # deterministic and the caller's random state is left as it was.
    # A (512, 512) kernel matrix gains nothing from intra-op threads; on a busy CPU they only
    # spin against each other (10x slower measured), so the test runs on one.
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            detector = _alibi_cd().MMDDrift(sides[0], backend="pytorch", p_val=_ALPHA,
                                            n_permutations=_MMD_PERMUTATIONS, device="cpu")
            result = detector.predict(sides[1])
    finally:
        torch.set_num_threads(threads)
    return float(result["data"]["p_val"])


def _alibi_cd() -> Any:
    """alibi_detect.cd, imported on first use: it takes seconds (it pulls transformers), which
    `import dataaudit` and the tracker must not pay."""
    import warnings

    with warnings.catch_warnings():
        # its import scripts functions with torch.jit, deprecated in recent torch: alibi's to fix, not the user's
        warnings.simplefilter("ignore", DeprecationWarning)
        import alibi_detect.cd
    return alibi_detect.cd


def _compute_class_counts(epochs: np.ndarray, rec_epoch: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Class counts per epoch, shape (T, classes); (T, 0) when no labels were recorded."""
    if len(labels) == 0:
        return np.zeros((len(epochs), 0), np.int64)
    k = int(labels.max()) + 1
    position = np.searchsorted(epochs, rec_epoch)
    return np.bincount(position * k + labels, minlength=len(epochs) * k).reshape(len(epochs), k)


def _compute_chi2_scan(counts: np.ndarray) -> np.ndarray:
    """Chi-square p-value of each epoch's class counts against the first epoch's, shape (T,) (NaN: untested)."""
    from scipy.stats import chi2_contingency

    p = np.full(len(counts), np.nan)
    if counts.shape[1] == 0 or counts[0].sum() == 0:
        return p
    for i in range(1, len(counts)):
        table = counts[[0, i]]
        table = table[:, table.sum(0) > 0]
        if table[1].sum() == 0:
            continue
        if table.shape[1] < 2:  # one class in both epochs: nothing can have moved
            p[i] = 1.0
            continue
        p[i] = float(chi2_contingency(table, correction=False)[1])
    return p


def _holm(p: np.ndarray, alpha: float) -> np.ndarray:
    """Holm's step-down rejections of p (m,): controls the family-wise error at alpha under any dependence
    (every epoch is compared with the same reference, so the tests are correlated)."""
    m = len(p)
    reject = np.zeros(m, bool)
    for rank, i in enumerate(np.argsort(p, kind="stable")):
        if p[i] > alpha / (m - rank):
            break
        reject[i] = True
    return reject


def _rejected(p: np.ndarray, tested: np.ndarray) -> np.ndarray:
    """Holm's rejections among the tested epochs, shape (T,) bool (untested: False)."""
    out = np.zeros(len(p), bool)
    index = np.flatnonzero(tested)
    out[index] = _holm(p[index], _ALPHA)
    return out


def _first(flags: np.ndarray) -> int | None:
    hits = np.flatnonzero(flags)
    return int(hits[0]) if len(hits) else None


def _differs_from_first(changes: dict[str, np.ndarray], *, dated: bool) -> np.ndarray:
    """(T,) bool: epochs whose ids changed since their first sighting; only meaningful once a change
    of a deterministic pipeline was dated (with random augmentation every id differs every epoch)."""
    if not dated:
        return np.zeros(len(changes["compared"]), bool)
    compared = changes["compared"]
    share = changes["changed_first"] / np.maximum(compared, 1)
    return (compared >= _MIN_COMPARED) & (share >= _CHANGED_SHARE) & (changes["changed_first"] >= 2)


def _earliest(*candidates: tuple[int | None, str]) -> tuple[int | None, str]:
    """The (epoch index, method) that dates a change first, the first listed on a tie; (None, "none") if none."""
    found = [(i, name) for i, name in candidates if i is not None]
    return min(found, key=lambda c: c[0]) if found else (None, "none")


# --------------------------------------------------------------- features


def _pool_moments(tables: list[pd.DataFrame]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pooled (count, mean, variance) per feature, each (d,), of per-epoch moment tables (Chan et al.)."""
    count = np.zeros(len(tables[0]))
    mean = np.zeros(len(tables[0]))
    m2 = np.zeros(len(tables[0]))
    for t in tables:
        n_b, mean_b, m2_b = (t[c].to_numpy(dtype=np.float64) for c in ("count", "mean", "m2"))
        total = np.maximum(count + n_b, 1)
        delta = mean_b - mean
        mean = mean + delta * n_b / total
        m2 = m2 + m2_b + delta**2 * count * n_b / total
        count = count + n_b
    return count, mean, m2 / np.maximum(count, 1)


def _feature_shifts(features: dict[int, pd.DataFrame], before: list[int], after: list[int]) -> list[dict[str, Any]]:
    """Every feature whose mean or spread moved between the pooled epochs `before` and `after`, largest first.

    The effect of a feature is the larger of |mean shift| / std and |log std ratio|, with stds floored
    at a small fraction of the typical spread, so that constant features (image borders) that start
    to vary or move count, without dividing by zero. A move counts when it is also far from sampling
    noise: z-scores use one epoch's count as the sample size, since the epochs pooled on each side
    mostly hold the same samples again.
    """
    before = [e for e in before if e in features]
    after = [e for e in after if e in features]
    if not before or not after or len({len(features[e]) for e in before + after}) != 1:
        return []
    count_b, mean_b, var_b = _pool_moments([features[e] for e in before])
    count_a, mean_a, var_a = _pool_moments([features[e] for e in after])
    n_b = np.maximum(count_b / len(before), 2)
    n_a = np.maximum(count_a / len(after), 2)
    sd_b, sd_a = np.sqrt(var_b), np.sqrt(var_a)
    spread = np.concatenate([sd_b, sd_a])
    spread = spread[np.isfinite(spread) & (spread > 0)]
    floor = max(0.05 * float(np.median(spread)) if len(spread) else 1e-6, 1e-12)
    mean_effect = np.abs(mean_a - mean_b) / np.maximum(np.maximum(sd_b, sd_a), floor)
    log_ratio = np.abs(np.log((sd_a + floor) / (sd_b + floor)))
    # standard errors of a mean difference and of a log std (1 / sqrt(2 (n - 1)) for normal data)
    se_mean = np.sqrt(np.maximum(var_b, floor**2) / n_b + np.maximum(var_a, floor**2) / n_a)
    z_mean = np.abs(mean_a - mean_b) / se_mean
    z_spread = log_ratio / np.sqrt(1 / (2 * (n_b - 1)) + 1 / (2 * (n_a - 1)))
    # Non-finite moments are the feature-scale check's to report, not a drift (NaN compares False).
    moved_mean = (mean_effect >= _FEATURE_EFFECT) & (z_mean >= _FEATURE_Z)
    moved_spread = (log_ratio >= _FEATURE_EFFECT) & (z_spread >= _FEATURE_Z)
    effect = np.nan_to_num(np.maximum(mean_effect, log_ratio), nan=0.0, posinf=0.0)
    feature_ids = features[before[0]]["feature"].to_numpy()
    moved = np.flatnonzero((moved_mean | moved_spread) & (effect > 0))
    moved = moved[np.argsort(-effect[moved], kind="stable")]
    return [{"feature": int(feature_ids[j]), "effect": json_number(effect[j], 3),
             "mean_before": json_number(mean_b[j], 4), "mean_after": json_number(mean_a[j], 4),
             "std_before": json_number(sd_b[j], 4), "std_after": json_number(sd_a[j], 4)} for j in moved]


# --------------------------------------------------------------- findings


def _input_finding(epochs: list[int], index: int, method: str, pipeline: str, scan: dict[str, Any],
                   fp_changes: dict[str, np.ndarray], features: list[dict[str, Any]],
                   mmd_p: float | None, *, persistent: bool) -> tuple[Finding, float]:
    """The finding for input drift at epochs[index], and its strength in [0, 1]."""
    epoch = int(epochs[index])
    share = _share(fp_changes, "changed", index)
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
    share = _share(changes, "changed", index)
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

