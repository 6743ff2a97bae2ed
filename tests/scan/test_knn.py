from __future__ import annotations

import numpy as np
import pytest

from dataaudit.scan import knn
from dataaudit.scan.knn import nearest_neighbors


def _brute(X, k):
    d2 = ((X[:, None, :] - X[None, :, :]) ** 2).sum(axis=2)
    np.fill_diagonal(d2, np.inf)
    idx = np.argsort(d2, axis=1, kind="stable")[:, :k]
    return np.sqrt(np.take_along_axis(d2, idx, axis=1)), idx


def _clustered(rng, n, d, modes=6):
    centres = rng.normal(size=(modes, d)) * 4
    X = centres[rng.integers(0, modes, n)] + rng.normal(size=(n, d))
    X[:5] = rng.normal(size=(5, d)) * 20  # far points that widen their clusters
    return X


@pytest.mark.parametrize("d", [1, 3, 10, 40])
@pytest.mark.parametrize("shape", ["clustered", "gaussian"])
def test_same_neighbours_as_brute_force(rng, monkeypatch, d, shape):
    monkeypatch.setattr(knn, "CLUSTER_SIZE", 64)  # many clusters, so the pruning is exercised
    monkeypatch.setattr(knn, "QUERY_BLOCK", 32)
    X = _clustered(rng, 1500, d) if shape == "clustered" else rng.normal(size=(1500, d))
    dist, idx = nearest_neighbors(X, 7)
    ref_dist, ref_idx = _brute(X, 7)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-9, atol=1e-9)
    assert (idx == ref_idx).mean() > 0.999  # only ties (equal distances) may be ordered differently
    assert (idx != np.arange(len(X))[:, None]).all()


def test_tiny_distances_are_exact_and_small_clusters_are_enough(rng, monkeypatch):
    monkeypatch.setattr(knn, "CLUSTER_SIZE", 4)  # clusters smaller than k + 1
    X = rng.normal(size=(200, 16))
    X[100] = X[3] + 1e-9
    dist, idx = nearest_neighbors(X, 10)
    assert idx[3, 0] == 100 and idx[100, 0] == 3
    assert dist[3, 0] == pytest.approx(1e-9 * 4, rel=1e-6)  # sqrt(16) * 1e-9: not lost to cancellation
    np.testing.assert_allclose(dist, _brute(X, 10)[0], rtol=1e-9, atol=1e-12)


def test_k_up_to_n_minus_one_and_bad_input(rng):
    X = rng.normal(size=(12, 3))
    dist, idx = nearest_neighbors(X, 11)
    assert sorted(idx[0]) == list(range(1, 12))
    np.testing.assert_allclose(dist, _brute(X, 11)[0])
    with pytest.raises(ValueError, match="1 <= k < n = 12; got k = 12"):
        nearest_neighbors(X, 12)
    with pytest.raises(ValueError, match=r"shape \(n, d\); got shape \(12,\)"):
        nearest_neighbors(X[:, 0], 2)


@pytest.mark.parametrize("after", [0, 3])  # every query, or those after the first 3 blocks
def test_the_brute_force_fallback_gives_the_same_neighbours(rng, monkeypatch, after):
    monkeypatch.setattr(knn, "CLUSTER_SIZE", 64)
    monkeypatch.setattr(knn, "QUERY_BLOCK", 32)
    monkeypatch.setattr(knn, "BRUTE_AFTER", after)
    monkeypatch.setattr(knn, "BRUTE_ABOVE", -1.0)  # the pruning never pays: switch as soon as allowed
    X = _clustered(rng, 800, 12)
    dist, idx = nearest_neighbors(X, 5)
    ref_dist, ref_idx = _brute(X, 5)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-9, atol=1e-9)
    assert (idx == ref_idx).mean() > 0.999
