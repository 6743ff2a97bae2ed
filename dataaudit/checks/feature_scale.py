"""Feature scale: are some input features orders of magnitude larger than the rest?

Floating-point inputs only: integer inputs (token ids, category codes) are indices, not
quantities, and are skipped with that reason (the tracker records the inputs' kind).
Reads the per-feature moments of the inputs the model saw (the tracker's input
sketch) at the earliest epoch that has them, before any later change of the
pipeline. Images (C, H, W) are judged per channel: a channel's mean is the mean
of its features' means, its variance the mean of their variances plus the
variance of their means. Other inputs are judged per flattened feature.

A feature's scale is measured twice: its root mean square sqrt(mean^2 + var),
the magnitude the first layer sees on average, and its largest absolute value,
what it sees when the feature is active (a pixel that is rarely inked has a
small RMS whatever its unit). In log10 space, relative to their medians over
the non-constant features, a feature is named badly scaled when

    one of the two is at least tau decades above its median, and both are above it by log10(2),
    tau = max(log10(30), 3 * MAD)        (MAD: of that measure's log10, scaled to a std)

so a group of features 30x or more off a tight bulk is named; one heavy-tailed
standardised feature (large maximum, RMS 1 like the rest) is not, nor is data
whose features spread over a continuum of scales, share one large scale (raw
0-255 pixels) or are standardised: the overall `normalised` verdict covers
those. Constant features (digits' border pixels) are left out of the medians
and never named. Features far *below* the rest are only noted: from their
moments a rarely active feature cannot be told from a badly scaled one, and a
tiny feature harms training far less than a huge one. Non-finite moments mean
NaN or inf in the inputs: critical, and named.
"""
from __future__ import annotations

import numpy as np

from dataaudit.checks.base import CheckResult, Finding, json_number
from dataaudit.run import Run

NAME = "feature_scale"

# A feature is named this many decades above the median scale at the least (30x) ...
_MIN_DECADES = float(np.log10(30.0))
# ... or this many robust standard deviations of the log scales, when the features spread widely ...
_MAD_SIGMAS = 3.0
# ... with its other scale measure above the median too (2x): not a lone outlier on a standardised feature.
_AGREE_DECADES = float(np.log10(2.0))
# Named features this far above the median (300x) make the finding critical.
_CRITICAL_DECADES = float(np.log10(300.0))
# A typical feature RMS in this range reads as normalised (mean 0 / std 1, or values in [0, 1]) ...
_UNIT_SCALE = (0.05, 5.0)
# ... and outside this one as a warning rather than a note (raw 0-255 pixels, inputs in a tiny unit).
_FAR_SCALE = (1e-3, 50.0)
_COLUMNS = ("feature", "count", "mean", "m2", "min", "max")


def check(run: Run, *, split: str = "train") -> CheckResult:
    """Name the input features (channels, for images) whose scale is orders of magnitude above the rest.

    Reads `run.splits[split].features` (epoch -> per-feature moments: feature, count, mean, m2, min, max)
    and the split's sketch shape. Skipped when no inputs were tracked.
    """
    data = run.split(split)
    info = run.meta.get("splits", {}).get(split, {})
    kind = info.get("input_kind", "float")
    if kind != "float":  # token ids and category codes are indices, not quantities with a scale
        return CheckResult.skipped(NAME, f"the inputs of split {split!r} are {kind} (integer ids or codes, not "
                                         "measured quantities): only floating-point inputs have a scale to judge")
    if data is None or not data.features:
        why = info.get("input_sketch_note") or "record() was called without inputs="
        return CheckResult.skipped(NAME, f"no input statistics of split {split!r} were tracked ({why})")
    epoch = min(data.features)
    table = data.features[epoch]
    missing = [c for c in _COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"feature_scale needs input moments with columns {list(_COLUMNS)}; "
                         f"got columns {list(table.columns)} (missing {missing})")
    if not len(table) or table["count"].max() <= 0:
        return CheckResult.skipped(NAME, f"the input statistics of epoch {epoch} hold no sample")
    table = table.sort_values("feature")
    count = table["count"].to_numpy(np.float64)
    mean = table["mean"].to_numpy(np.float64)
    var = table["m2"].to_numpy(np.float64) / np.maximum(count, 1.0)
    lo, hi = table["min"].to_numpy(np.float64), table["max"].to_numpy(np.float64)
    sketch = run.meta.get("splits", {}).get(split, {}).get("sketch_shape") or data.input_shape
    if sketch is not None and len(sketch) == 3 and int(np.prod(sketch)) == len(table):
        return _compute_feature_scale(*_per_channel(mean, var, lo, hi, int(sketch[0])), unit="channel", epoch=epoch)
    return _compute_feature_scale(mean, var, lo, hi, unit="feature", epoch=epoch)


def _per_channel(mean: np.ndarray, var: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                 channels: int) -> tuple[np.ndarray, ...]:
    """Moments of the flattened (C * h * w,) features pooled per channel, each of shape (C,)."""
    mean, var, lo, hi = (a.reshape(channels, -1) for a in (mean, var, lo, hi))
    # Law of total variance over the channel's positions, each weighted alike.
    return mean.mean(1), var.mean(1) + mean.var(1), lo.min(1), hi.max(1)


def _compute_feature_scale(mean: np.ndarray, var: np.ndarray, lo: np.ndarray, hi: np.ndarray, *,
                           unit: str, epoch: int) -> CheckResult:
    """mean, var, lo, hi : per-unit (feature or channel) moments, each of shape (d,)."""
    d = len(mean)
    finite = np.isfinite(mean) & np.isfinite(var) & np.isfinite(lo) & np.isfinite(hi)
    with np.errstate(invalid="ignore", over="ignore"):
        rms = np.sqrt(mean**2 + var)
        peak = np.maximum(np.abs(lo), np.abs(hi))
    constant = finite & (hi <= lo)
    varying = finite & ~constant & (rms > 0) & (peak > 0)
    nonfinite = np.flatnonzero(~finite)

    large = np.zeros(d, bool)
    small = np.zeros(d, bool)
    excess = np.zeros(d)
    typical = typical_peak = tau = None
    if varying.any():
        # (2, d): log10 RMS and log10 largest absolute value, centred on their medians over varying units.
        logs = np.log10(np.where(varying, np.stack([rms, peak]), 1.0))
        medians = np.median(logs[:, varying], axis=1, keepdims=True)
        dev = logs - medians
        mad = 1.4826 * np.median(np.abs(dev[:, varying]), axis=1, keepdims=True)
        taus = np.maximum(_MIN_DECADES, _MAD_SIGMAS * mad)  # (2, 1): per measure
        typical, typical_peak = (float(v) for v in 10 ** medians[:, 0])
        # "Off the rest" needs a rest: with fewer than 3 varying units there is no bulk to compare with.
        if varying.sum() >= 3:
            excess = dev.max(0)
            large = varying & (dev >= taus).any(0) & (dev.min(0) >= _AGREE_DECADES)
            small = varying & (dev <= -taus).all(0)
        tau = float(taus.max())
    named = np.union1d(np.flatnonzero(large), nonfinite).astype(int)
    normalised = bool(not len(nonfinite) and not large.any() and typical is not None
                      and _UNIT_SCALE[0] <= typical <= _UNIT_SCALE[1])

    findings = []
    score = 0.0
    if len(nonfinite):
        findings.append(Finding(
            NAME, "critical",
            f"{len(nonfinite)} of {d} input {unit}s held NaN or infinite values at epoch {epoch}: "
            f"{_listing(nonfinite)}.",
            remedy="Find where NaN/inf enter the inputs (missing values, log of 0, a division by 0 in the pipeline); "
                   "impute or drop them, and assert torch.isfinite(x).all() where the batch is built.",
            evidence={unit + "s": nonfinite[:20].tolist(), "epoch": int(epoch)}))
        score = 1.0
    if large.any():
        idx = np.flatnonzero(large)
        findings.append(Finding(
            NAME, "critical" if excess[idx].max() >= _CRITICAL_DECADES else "warning",
            f"{len(idx)} of {d} input {unit}s ({_listing(idx)}) are orders of magnitude larger than the median "
            f"{unit}: up to {rms[idx].max() / typical:,.0f}x its RMS ({typical:.3g}) and "
            f"{peak[idx].max() / typical_peak:,.0f}x its largest absolute value ({typical_peak:.3g}); "
            "they dominate the first layer's activations and gradients.",
            remedy=f"Normalise the named {unit}s: StandardScaler fitted on the training split for tabular features, "
                   "per-channel mean/std normalisation (transforms.Normalize) for images; take log1p first for a "
                   "feature that spans orders of magnitude.",
            evidence={unit + "s": idx[:20].tolist(), "median_rms": json_number(typical),
                      "median_max_abs": json_number(typical_peak), "rms": [json_number(v) for v in rms[idx[:20]]],
                      "max_abs": [json_number(v) for v in peak[idx[:20]]], "threshold_ratio": json_number(10**tau)}))
        score = max(score, min(float(excess[idx].max()) / 3.0, 1.0))
    if typical is not None and not len(nonfinite) and not normalised and not large.any():
        far = not _FAR_SCALE[0] <= typical <= _FAR_SCALE[1]
        findings.append(Finding(
            NAME, "warning" if far else "info",
            f"The inputs are not normalised: the typical {unit} has RMS {typical:.3g} (about 0.05 to 5 is expected, "
            "from mean 0 / std 1 or values in [0, 1]).",
            remedy="Standardise the inputs (StandardScaler, per-channel mean/std) or scale them to [0, 1] "
                   "(e.g. divide 8-bit pixels by 255).",
            evidence={"median_rms": json_number(typical)}))
        score = max(score, 0.3 if far else 0.1)
    if small.any():
        idx = np.flatnonzero(small)
        findings.append(Finding(
            NAME, "info",
            f"{len(idx)} input {unit}s ({_listing(idx)}) are far smaller than the rest: rarely active inputs "
            "(near-empty border pixels) or inputs in too small a unit.",
            evidence={unit + "s": idx[:20].tolist(), "median_rms": json_number(typical)}))
    if constant.any():
        idx = np.flatnonzero(constant)
        findings.append(Finding(
            NAME, "info", f"{len(idx)} of {d} input {unit}s are constant ({_listing(idx)}): they carry no information.",
            evidence={unit + "s": idx[:20].tolist(), "values": [json_number(v) for v in lo[idx[:20]]]}))

    details = {
        "features": named.tolist(),
        "unit": unit,
        "epoch": int(epoch),
        "num_units": d,
        "normalised": normalised,
        "median_scale": json_number(typical) if typical is not None else None,
        "threshold_ratio": json_number(10**tau) if tau is not None else None,
        "scales": [{unit: int(i), "mean": json_number(mean[i]), "std": json_number(np.sqrt(var[i])),
                    "min": json_number(lo[i]), "max": json_number(hi[i]), "rms_ratio": json_number(rms[i] / typical),
                    "max_abs_ratio": json_number(peak[i] / typical_peak)} for i in np.flatnonzero(large)[:100]],
        "nonfinite_features": nonfinite.tolist(),
        "constant_features": np.flatnonzero(constant).tolist(),
        "small_features": np.flatnonzero(small).tolist(),
    }
    return CheckResult.from_findings(NAME, findings, score=score, details=details)


def _listing(idx: np.ndarray, shown: int = 10) -> str:
    """'20, 21, 22', or the first `shown` then 'and 40 more'."""
    head = ", ".join(str(int(i)) for i in idx[:shown])
    return head if len(idx) <= shown else f"{head} and {len(idx) - shown} more"

