"""Near-duplicates and outliers among a scan's samples, on the model's embeddings or the dataset's features.

Both work on standardised features (each column to zero mean, unit variance) with euclidean distances, so
that a column's units do not decide who is near whom.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from dataaudit.checks.base import CheckResult, Finding

# A pair closer than this fraction of the median nearest-neighbour distance is a near-duplicate. For n
# points spread in d dimensions about n * ln2 * RELATIVE**d pairs fall under it by chance: none for d >= 2.
NEAR_RELATIVE = 0.01
# An outlier's mean distance to its neighbours is at least OUTLIER_RATIO times the median one, OUTLIER_Z robust
# standard deviations above it, and in the lowest 1% of scores.
OUTLIER_RATIO, OUTLIER_Z, OUTLIER_K = 1.5, 10.0, 10
MAX_PAIRS, MAX_OUTLIERS = 1000, 100
MIN_SAMPLES = 20  # fewer and the typical neighbour distance means little

DUPLICATE_REMEDY = "drop or merge duplicates (they leak between train and test splits and overweight samples)"
OUTLIER_REMEDY = "check the outliers: corrupt files, wrong preprocessing, a different data source"


def find_near_duplicates(X: np.ndarray, *, ids: np.ndarray | None = None) -> list[tuple[int, int, float]]:
    """Pairs of samples that are (near-)copies of each other, closest first.

    X : array of shape (n, d) (or (n, ...), flattened), features or embeddings.
    ids : sample ids of shape (n,); default 0..n-1.
    Returns (id_a, id_b, distance) with distance on the standardised features: exact duplicates (distance 0;
    a group of m copies gives m - 1 pairs, each with its first copy) and pairs closer than
    NEAR_RELATIVE times the median nearest-neighbour distance.
    """
    X, ids = _validate(X, ids)
    return [(int(ids[a]), int(ids[b]), d) for a, b, d in _compute_near_duplicates(_standardise(X))]


def outlier_scores(X: np.ndarray) -> np.ndarray:
    """cleanlab's out-of-distribution score of each sample, shape (n,), in [0, 1]; low means an outlier.

    X : array of shape (n, d) (or (n, ...), flattened), at least OUTLIER_K + 2 rows.
    The score is exp(-mean distance to the OUTLIER_K nearest neighbours / its median), so exp(-1) is typical.
    """
    X, _ = _validate(X, None)
    if len(X) < OUTLIER_K + 2:
        raise ValueError(f"outlier_scores needs at least {OUTLIER_K + 2} samples; got {len(X)}")
    return _compute_outlier_scores(_standardise(X))


def find_outliers(scores: np.ndarray) -> np.ndarray:
    """Indices of the outliers among `scores` (from `outlier_scores`), shape (m,), most outlying first."""
    scores = np.asarray(scores, dtype=np.float64)
    dist = -np.log(np.clip(scores, 1e-300, None))  # mean neighbour distance / its median
    median = np.median(dist)
    spread = 1.4826 * np.median(np.abs(dist - median)) or 1e-12
    flagged = ((scores < np.quantile(scores, 0.01)) & (dist > OUTLIER_RATIO * median)
               & ((dist - median) / spread > OUTLIER_Z))
    found = np.flatnonzero(flagged)
    return found[np.argsort(scores[found], kind="stable")]


def neighbors_result(X: np.ndarray, labels: np.ndarray, *, ids: np.ndarray | None = None,
                     source: str = "features") -> CheckResult:
    """The scan's `neighbors` result: near-duplicates (noting those with different labels) and outliers.

    X : array of shape (n, ...) of features or embeddings; labels : shape (n,).
    source : what X is ("features" or "embeddings"), for the details.
    """
    X, ids = _validate(X, ids)
    labels = np.asarray(labels)
    if len(labels) != len(X):
        raise ValueError(f"neighbors_result needs one label per row of X ({len(X)}); got {len(labels)}")
    n = len(X)
    if n < MIN_SAMPLES:
        return CheckResult.skipped("neighbors", f"{n} samples; needs at least {MIN_SAMPLES}")
    Xs = _standardise(X)
    near = _neighbors(Xs)  # one neighbour search for both
    pairs = _compute_near_duplicates(Xs, near)
    outliers = find_outliers(_compute_outlier_scores(Xs, near))
    differ = [bool(labels[a] != labels[b]) for a, b, _ in pairs]
    n_differ = int(sum(differ))
    in_pairs = len({i for a, b, _ in pairs for i in (a, b)})
    details: dict[str, Any] = {
        "source": source, "dims": int(X.shape[1]),
        "near_duplicates": [{"ids": [int(ids[a]), int(ids[b])], "distance": round(d, 6), "labels_differ": f}
                            for (a, b, d), f in zip(pairs[:MAX_PAIRS], differ[:MAX_PAIRS], strict=True)],
        "n_near_duplicates": len(pairs), "n_labels_differ": n_differ,
        "outliers": [int(ids[i]) for i in outliers[:MAX_OUTLIERS]], "n_outliers": int(len(outliers)),
    }
    findings = []
    if pairs:
        many = in_pairs > 0.01 * n
        severity = "warning" if n_differ or many else "info"
        text = f"{len(pairs)} pairs of near-duplicate samples in the {source} ({in_pairs} samples)"
        if n_differ:
            text += f"; {n_differ} pairs carry different labels, likely label errors"
        first = sorted(range(len(pairs)), key=lambda j: not differ[j])  # pairs with different labels first
        findings.append(Finding("neighbors", severity, text, DUPLICATE_REMEDY,
                                {"n_near_duplicates": len(pairs), "n_labels_differ": n_differ},
                                tuple(dict.fromkeys(int(ids[i]) for j in first for i in pairs[j][:2]))))
    if len(outliers):
        findings.append(Finding("neighbors", "info",
                                f"{len(outliers)} samples lie far from all others in the {source}",
                                OUTLIER_REMEDY, {"n_outliers": int(len(outliers))},
                                tuple(int(ids[i]) for i in outliers)))
    score = min(1.0, (in_pairs + len(outliers)) / n + (n_differ > 0) * 0.5)
    return CheckResult.from_findings("neighbors", findings, score=score, details=details)


def _validate(X, ids) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X)
    if X.ndim < 2 or X.dtype.kind not in "iufb":
        raise ValueError(f"expected numeric features of shape (n, d); got shape {X.shape}, dtype {X.dtype}")
    X = X.reshape(len(X), -1).astype(np.float64)
    if not np.isfinite(X).all():
        raise ValueError(f"expected finite features; got {int((~np.isfinite(X)).sum())} NaN or infinite values")
    ids = np.arange(len(X), dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    if ids.shape != (len(X),):
        raise ValueError(f"expected one id per row of X ({len(X)}); got shape {ids.shape}")
    return X, ids


def _standardise(X: np.ndarray) -> np.ndarray:
    std = X.std(axis=0)
    return (X - X.mean(axis=0)) / np.where(std > 0, std, 1.0)


class _Neighbors(NamedTuple):
    """The k nearest distinct points of each distinct row, shared by the duplicate and outlier searches."""

    unique: np.ndarray  # (u,) row index of each distinct point's first copy, ascending
    group: np.ndarray  # (n,) each row's distinct point, as a position in `unique`
    counts: np.ndarray  # (u,) copies of each distinct point
    dist: np.ndarray  # (u, k) distances to its k nearest other distinct points, nearest first
    idx: np.ndarray  # (u, k) their positions in `unique`


def _neighbors(Xs: np.ndarray) -> _Neighbors:
    """Exact copies by row identity; then the OUTLIER_K nearest distinct points of each distinct one (that is
    enough for both searches: a point's k nearest rows lie among the copies of its k nearest distinct points)."""
    from dataaudit.scan.knn import nearest_neighbors

    _, first, inverse, counts = np.unique(Xs, axis=0, return_index=True, return_inverse=True, return_counts=True)
    order = np.argsort(first)
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    k = min(OUTLIER_K, len(first) - 1)
    if k < 1:
        dist, idx = np.zeros((len(first), 0)), np.zeros((len(first), 0), dtype=np.int64)
    else:
        dist, idx = nearest_neighbors(Xs[first[order]], k)
    return _Neighbors(first[order], position[inverse.reshape(-1)], counts[order], dist, idx)


def _compute_near_duplicates(Xs: np.ndarray, near: _Neighbors | None = None) -> list[tuple[int, int, float]]:
    """(index_a, index_b, distance) pairs, closest first; exact copies by row identity, near ones by 1-NN."""
    near = near or _neighbors(Xs)
    first = near.unique[near.group]
    pairs = [(int(f), i, 0.0) for i, f in enumerate(first) if f != i]
    if len(near.unique) < 3:
        return sorted(pairs)
    nearest = near.dist[:, 0]
    cutoff = NEAR_RELATIVE * np.median(nearest)
    seen = set()
    for a in np.flatnonzero(nearest < cutoff):
        b = near.idx[a, 0]
        key = (int(near.unique[min(a, b)]), int(near.unique[max(a, b)]))
        if key not in seen:
            seen.add(key)
            pairs.append((*key, float(nearest[a])))
    return sorted(pairs, key=lambda p: (p[2], p[0], p[1]))


def _compute_outlier_scores(Xs: np.ndarray, near: _Neighbors | None = None) -> np.ndarray:
    """cleanlab's OutOfDistribution feature score with a euclidean k-NN fit on Xs and queried with Xs.

    Each row's own zero distance is one of its k + 1 (k = OUTLIER_K), as it is in cleanlab with an unfitted
    knn: exp(-mean of those k + 1 distances / their median), and 1 where that mean is under sqrt(100 eps).
    Copies count: a row's nearest rows are its other copies (at 0), then its nearest distinct points, each
    as many times as it has copies.
    """
    near = near or _neighbors(Xs)
    k = min(OUTLIER_K + 1, len(Xs) - 1)  # distances per row, its own included
    own = np.minimum(near.counts, k)  # zeros: the row itself and its other copies
    copies = near.counts[near.idx]  # (u, kk) copies of each neighbour
    before = np.cumsum(copies, axis=1) - copies  # rows counted before each neighbour
    used = np.clip(np.minimum(copies, (k - own)[:, None] - before), 0, None)
    mean = ((near.dist * used).sum(axis=1) / k)[near.group]  # (n,)
    scaling = max(float(np.median(mean)), 100 * np.finfo(np.float64).eps)
    scores = np.exp(-mean / max(scaling, 1e-6))
    scores[mean < np.sqrt(100 * np.finfo(np.float64).eps)] = 1.0
    return scores
