"""Noisy regression targets from the per-sample loss dynamics (dataaudit/checks/targets.py)."""
from __future__ import annotations

import numpy as np
import pytest

import dataaudit
from dataaudit.checks import REGISTRY, targets
from fixtures.tasks import regression_data, train_regression


def _losses(residuals: np.ndarray, epochs: int, rng, *, squared: bool = True) -> np.ndarray:
    """(n, E) per-epoch losses of fixed residuals (n,) with a little epoch-to-epoch jitter."""
    r = residuals[:, None] * (1 + 0.05 * rng.normal(size=(len(residuals), epochs)))
    return r**2 if squared else np.abs(r)


@pytest.mark.parametrize("squared", [True, False], ids=["mse", "l1"])
def test_planted_outliers_are_found_with_precision(rng, squared):
    n = 1000
    residual = rng.normal(size=n)
    bad = rng.choice(n, 120, replace=False)
    residual[bad] += rng.choice([-1, 1], 120) * rng.uniform(4, 8, 120)
    result = targets._compute_target_issues(np.arange(n), _losses(residual, 10, rng, squared=squared), list(range(10)))
    found = set(result.details["label_issues"])
    precision = len(found & set(bad)) / len(found)
    recall = len(found & set(bad)) / len(bad)
    assert precision >= 0.95 and recall >= 0.85, (precision, recall)
    assert result.status == "critical" and result.per_sample["flagged"].sum() == len(found)


@pytest.mark.parametrize("noise", ["gaussian", "student_t3", "laplace"])
def test_clean_or_merely_heavy_tailed_residuals_flag_nothing(rng, noise):
    n = 1000
    residual = {"gaussian": rng.normal(size=n), "student_t3": rng.standard_t(3, size=n),
                "laplace": rng.laplace(size=n)}[noise]
    result = targets._compute_target_issues(np.arange(n), _losses(residual, 10, rng), list(range(10)))
    assert result.status == "ok" and result.details["label_issues"] == []
    assert (result.details["bic_gain"] or 0.0) < 10  # None: no sample even passed the bound


def test_a_trained_regression_with_outlier_targets(tmp_path):
    X, y, bad = regression_data(500, outliers=0.15, seed=3)
    train_regression(tmp_path / "run", X, y, epochs=12)
    audit = dataaudit.analyze(tmp_path / "run")
    found = set(audit.label_issues)
    assert audit.run_summary["task"] == "regression"
    assert len(found & set(bad.tolist())) / max(len(found), 1) >= 0.9 and len(found) >= 0.8 * len(bad)
    assert audit.verdict == "data"
    assert audit.results["class_imbalance"].status == "skipped"


def test_a_clean_trained_regression_flags_nothing(tmp_path):
    X, y, _ = regression_data(500, seed=4)
    train_regression(tmp_path / "run", X, y, epochs=12, loss="huber", target_shape="column")
    audit = dataaudit.analyze(tmp_path / "run")
    assert audit.results["targets"].status == "ok" and not audit.label_issues


def test_only_regression_runs_are_judged(rng):
    run = dataaudit.Run.from_arrays(rng.integers(0, 3, 30), rng.dirichlet(np.ones(3), 30))
    result = REGISTRY["targets"](run)
    assert result.status == "skipped" and "classification" in result.details["skipped"]
