"""Per-sample evidence of a change: did the ids seen before come back with another value?

Two values per recorded sample are followed across epochs: its input fingerprint (the input
projected on one fixed direction: equal across epochs while the pipeline is deterministic) and
its label. A deterministic pipeline that changes shows as a jump, from ~0 to ~1, in the share of
ids whose value moved since their previous sighting; random augmentation moves every id every
epoch, so then this evidence dates nothing.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from dataaudit.run import positions, unique_ids

# Fingerprints of the same input agree to float rounding (rel ~1e-5; TF32 matmuls give ~1e-3),
# relative to the value plus the spread of all fingerprints (values near 0 have no useful relative error).
_FINGERPRINT_RTOL = 1e-3
# A transition (previous sighting -> this epoch) is stable when at most this share of ids changed
# (deterministic pipeline), changed when at least _CHANGED_SHARE did; in between is neither.
_STABLE_SHARE = 1e-3
_CHANGED_SHARE = 0.02
# Fewer ids than this seen again in an epoch say nothing about it.
_MIN_COMPARED = 10


def fingerprint_column(records: pd.DataFrame) -> np.ndarray:
    """The fingerprint column as stored (float32), shape (n,); all NaN for runs written before it existed.
    Compared in float64 one epoch at a time (`compute_changes`)."""
    if "fingerprint" not in records.columns:
        return np.full(len(records), np.nan, np.float32)
    return records["fingerprint"].to_numpy()


def rows(keep: np.ndarray, *columns: np.ndarray) -> tuple[np.ndarray, ...]:
    """The columns, filtered by `keep` (n,) only when something is to be dropped (no copy otherwise)."""
    return columns if keep.all() else tuple(c[keep] for c in columns)


def fp_tolerance(previous: np.ndarray, scale: float) -> np.ndarray:
    """Largest difference (m,) from `previous` fingerprints (m,) that is still rounding."""
    return _FINGERPRINT_RTOL * (np.abs(previous) + scale)


def compute_changes(epochs: np.ndarray, rec_epoch: np.ndarray, ids: np.ndarray, values: np.ndarray, *,
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


def compute_first_change(changed: np.ndarray, compared: np.ndarray) -> tuple[int | None, str]:
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


def share_of(changes: dict[str, np.ndarray], key: str, i: int) -> float | None:
    """changes[key] / compared at epoch index i, rounded; None when no id was compared."""
    n = int(changes["compared"][i])
    return round(float(changes[key][i] / n), 4) if n else None


def median_share(changes: dict[str, np.ndarray]) -> float | None:
    """Median share of changed ids over the epochs that compared any; None when none did."""
    ok = changes["compared"] > 0
    return round(float(np.median(changes["changed"][ok] / changes["compared"][ok])), 4) if ok.any() else None


def differs_from_first(changes: dict[str, np.ndarray], *, dated: bool) -> np.ndarray:
    """(T,) bool: epochs whose ids changed since their first sighting; only meaningful once a change
    of a deterministic pipeline was dated (with random augmentation every id differs every epoch)."""
    if not dated:
        return np.zeros(len(changes["compared"]), bool)
    compared = changes["compared"]
    share = changes["changed_first"] / np.maximum(compared, 1)
    return (compared >= _MIN_COMPARED) & (share >= _CHANGED_SHARE) & (changes["changed_first"] >= 2)
