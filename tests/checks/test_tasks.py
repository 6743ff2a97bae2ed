"""Each check runs on the tasks it declares and is skipped, with the reason, on the others."""
from __future__ import annotations

import numpy as np

from dataaudit.checks import REGISTRY, TASKS
from dataaudit.run import Run


def _as(run: Run, kind: str) -> Run:
    return Run(run.splits, run.steps, run.layers, {**run.meta, "task": {"kind": kind}})


def test_every_check_declares_known_tasks():
    for name, check in REGISTRY.items():
        assert check.tasks and set(check.tasks) <= set(TASKS), name


def test_class_based_checks_skip_regression(rng):
    run = _as(Run.from_arrays(rng.integers(0, 3, 30), rng.dirichlet(np.ones(3), 30)), "regression")
    for name in ("labels", "class_imbalance"):
        result = REGISTRY[name](run)
        assert result.status == "skipped"
        assert "this run is regression" in result.details["skipped"] and "classification" in result.details["skipped"]
    assert REGISTRY["coverage"](run).status != "skipped"


def test_binary_runs_get_the_class_checks(rng):
    run = _as(Run.from_arrays(rng.integers(0, 2, 30), rng.dirichlet(np.ones(2), 30)), "binary")
    for name in ("labels", "class_imbalance"):
        assert "this run is" not in REGISTRY[name](run).details.get("skipped", "")
    assert REGISTRY["targets"](run).status == "skipped"
