from __future__ import annotations

import json

import numpy as np
import pytest

from dataaudit.scan import scan
from dataaudit.scan.neighbors import find_near_duplicates, find_outliers, neighbors_result, outlier_scores


def _gaussian(rng, n=500, d=8):
    return rng.normal(size=(n, d)), rng.integers(0, 3, size=n)


def test_exact_duplicates_are_found(rng):
    X, _ = _gaussian(rng)
    X[10] = X[3]
    X[20] = X[3]
    X[7] = X[400]
    pairs = find_near_duplicates(X)
    assert {(a, b) for a, b, _ in pairs} == {(3, 10), (3, 20), (7, 400)}
    assert all(d == 0.0 for *_, d in pairs)


def test_near_duplicates_with_different_labels_are_flagged(rng):
    X, y = _gaussian(rng)
    X[50] = X[5] + 1e-5 * rng.normal(size=X.shape[1])
    y[5], y[50] = 0, 1
    X[60] = X[6]
    y[60] = y[6]
    result = neighbors_result(X, y)
    by_ids = {tuple(p["ids"]): p for p in result.details["near_duplicates"]}
    assert set(by_ids) == {(5, 50), (6, 60)}
    assert by_ids[(5, 50)]["labels_differ"] and not by_ids[(6, 60)]["labels_differ"]
    assert 0 < by_ids[(5, 50)]["distance"] < 1e-3
    assert result.details["n_labels_differ"] == 1
    assert result.status == "warning"
    assert result.findings[0].ids[:2] == (5, 50)  # the pair with different labels first


def test_a_planted_far_outlier_is_found(rng):
    X, y = _gaussian(rng)
    X[123] = 6.0
    scores = outlier_scores(X)
    assert scores.shape == (500,) and ((scores >= 0) & (scores <= 1)).all()
    assert list(find_outliers(scores)) == [123]
    result = neighbors_result(X, y)
    assert result.details["outliers"] == [123] and result.details["n_outliers"] == 1


def test_nothing_flagged_on_plain_gaussian_data(rng):
    X, y = _gaussian(rng)
    result = neighbors_result(X, y)
    assert result.status == "ok" and not result.findings
    assert result.details["n_near_duplicates"] == 0 and result.details["n_outliers"] == 0


def test_bad_input_says_what_was_got():
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        find_near_duplicates(np.zeros(5))
    with pytest.raises(ValueError, match="one label per row"):
        neighbors_result(np.zeros((30, 2)), np.zeros(29))
    assert neighbors_result(np.zeros((5, 2)), np.zeros(5)).status == "skipped"


def test_scan_of_a_data_npz_has_neighbors_in_audit_json(tmp_path, rng):
    X, y = _gaussian(rng, n=300, d=4)
    X[1] = X[0]
    y[0], y[1] = 0, 1
    np.savez(tmp_path / "data.npz", X=X.astype(np.float32), y=y)
    probs = np.full((300, 3), 1 / 3)
    audit = scan(tmp_path, pred_probs=probs)
    written = json.loads(audit.write_json(tmp_path / "audit.json").read_text())
    neighbors = written["checks"]["neighbors"]
    assert neighbors["near_duplicates"][0] == {"ids": [0, 1], "distance": 0.0, "labels_differ": True}
    assert neighbors["source"] == "features"
    assert any(f["check"] == "neighbors" for f in written["findings"])


def test_scan_leaves_neighbors_out_when_it_finds_nothing(tmp_path, rng):
    X, y = _gaussian(rng, n=300, d=4)
    np.savez(tmp_path / "data.npz", X=X.astype(np.float32), y=y)
    audit = scan(tmp_path, pred_probs=np.full((300, 3), 1 / 3))
    assert "neighbors" not in audit.results
    assert audit.run_summary["scan"]["neighbors"] == "features"


def _reference_outlier_scores(Xs):
    """What the scan computed before its own neighbour search: cleanlab's score with sklearn's knn."""
    from cleanlab.outlier import OutOfDistribution
    from sklearn.neighbors import NearestNeighbors

    knn = NearestNeighbors(n_neighbors=min(11, len(Xs) - 1))
    return OutOfDistribution(params={"knn": knn}).score(features=Xs)


def _reference_near_pairs(Xs):
    from sklearn.neighbors import NearestNeighbors

    _, first = np.unique(Xs, axis=0, return_index=True)
    unique = np.sort(first)
    dist, idx = NearestNeighbors(n_neighbors=2).fit(Xs[unique]).kneighbors(Xs[unique])
    close = np.flatnonzero(dist[:, 1] < 0.01 * np.median(dist[:, 1]))
    return {tuple(sorted((int(unique[a]), int(unique[idx[a, 1]])))) for a in close}


@pytest.mark.parametrize("copies", [1, 3, 12])  # a group of 12 copies fills a row's 11 nearest with zeros
def test_same_scores_and_pairs_as_sklearn_and_cleanlab(rng, copies):
    from dataaudit.scan.neighbors import _compute_near_duplicates, _compute_outlier_scores, _standardise

    X = np.concatenate([rng.normal(size=(300, 6)) + 5 * rng.integers(0, 3, size=(300, 1)),
                        rng.normal(size=(5, 6)) * 8])
    X[10:10 + copies] = X[200]  # exact copies
    X[150:153] = X[40]
    X[60] = X[61] + 1e-6  # a near copy
    Xs = _standardise(X)
    np.testing.assert_allclose(_compute_outlier_scores(Xs), _reference_outlier_scores(Xs), rtol=1e-9, atol=1e-12)
    pairs = _compute_near_duplicates(Xs)
    assert {(a, b) for a, b, d in pairs if d > 0} == _reference_near_pairs(Xs) == {(60, 61)}
    exact = {(a, b) for a, b, d in pairs if d == 0}
    group = {(10, i) for i in [*range(11, 10 + copies), 200]}  # each copy with the first one
    assert exact == group | {(40, 150), (40, 151), (40, 152)}


def test_all_rows_alike_score_one():
    from dataaudit.scan.neighbors import _compute_outlier_scores

    assert (_compute_outlier_scores(np.zeros((30, 3))) == 1.0).all()
