"""Every registered check honours the shared contract (in the spirit of sklearn's estimator_checks)."""
from __future__ import annotations

import json

import numpy as np
import pytest

import dataaudit
from dataaudit.checks import REGISTRY, CheckResult
from dataaudit.checks.base import SEVERITIES, STATUSES
from dataaudit.run import Run
from fixtures.tasks import regression_data, train_regression
from fixtures.training import blobs, train

N = 240


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Run]:
    root = tmp_path_factory.mktemp("conformance")
    X, y = blobs(n=N, d=6, k=3, seed=1)
    train(root / "tracked", X, y, epochs=4, batch_size=32)
    Xr, yr, _ = regression_data(N, d=6, outliers=0.1, seed=1)
    train_regression(root / "regression", Xr, yr, epochs=4, batch_size=32)
    dataaudit.Tracker(root / "empty").close()
    rng = np.random.default_rng(0)
    return {
        "tracked": dataaudit.load_run(root / "tracked"),
        "regression": dataaudit.load_run(root / "regression"),
        "empty": dataaudit.load_run(root / "empty"),
        "one_class": Run.from_arrays(np.zeros(50, int), rng.dirichlet(np.ones(3), 50),
                                     features=rng.normal(size=(50, 4))),
        "scan": Run.from_arrays(y, rng.dirichlet(np.ones(3), N), features=X),
    }


@pytest.mark.parametrize("name", sorted(REGISTRY))
@pytest.mark.parametrize("case", ["tracked", "regression", "empty", "one_class", "scan"])
def test_check_contract(runs, name, case):
    run = runs[case]
    result = REGISTRY[name](run)
    assert isinstance(result, CheckResult) and result.name == name
    assert result.status in STATUSES and 0.0 <= result.score <= 1.0
    assert all(f.severity in SEVERITIES and f.check == name for f in result.findings)
    json.dumps(result.details)                      # details go into audit.json as they are
    if result.per_sample is not None and case in ("tracked", "regression", "scan"):
        assert result.per_sample["sample_id"].is_unique
        assert len(result.per_sample) == N          # one row per sample of the dataset
    again = REGISTRY[name](run)                     # deterministic
    assert json.dumps(again.details, sort_keys=True) == json.dumps(result.details, sort_keys=True)
    assert again.status == result.status
