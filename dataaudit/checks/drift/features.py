"""Per-feature evidence: which features' mean or spread moved between the epochs before and after a change."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from dataaudit.checks.base import json_number

# Once a change is dated, a feature moved when its mean moved by at least this many standard deviations
# (or its spread by this log-ratio) and that move is _FEATURE_Z standard errors away from noise
# (about a Bonferroni bound over a thousand features at 1%).
_FEATURE_EFFECT = 0.05
_FEATURE_Z = 4.0


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


def feature_shifts(features: dict[int, pd.DataFrame], before: list[int], after: list[int]) -> list[dict[str, Any]]:
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
