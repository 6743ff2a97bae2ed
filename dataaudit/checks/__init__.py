"""The checks: each reads a `Run` and returns a `CheckResult`. Registered by name, explicitly.

Each check module declares the tasks it applies to (`TASKS`, default: every task); the registry
skips it, with the reason, on a run of another task (`Run.task`), so no check guesses the task.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from types import ModuleType

from dataaudit.checks import (
    accumulation,
    class_imbalance,
    coverage,
    drift,
    feature_scale,
    labels,
    layer_gradients,
    optimizer,
    plateau,
    resume,
    subsets,
    targets,
    units,
    val_noise,
)
from dataaudit.checks.base import CheckResult, Finding
from dataaudit.run import Run

Check = Callable[[Run], CheckResult]

TASKS = ("classification", "binary", "regression")


def _for_its_tasks(module: ModuleType) -> Check:
    """`module.check`, skipped with a reason on runs whose task is not in `module.TASKS`."""
    tasks = tuple(getattr(module, "TASKS", TASKS))

    @functools.wraps(module.check)
    def check(run: Run, *args, **kwargs) -> CheckResult:
        if run.task not in tasks:
            return CheckResult.skipped(module.NAME, f"it applies to {' and '.join(tasks)} runs; "
                                                    f"this run is {run.task}")
        return module.check(run, *args, **kwargs)

    check.tasks = tasks
    return check


REGISTRY: dict[str, Check] = {m.NAME: _for_its_tasks(m) for m in (
    coverage, labels, targets, drift, class_imbalance, feature_scale, plateau, optimizer,
    subsets, layer_gradients, val_noise, resume, accumulation, units)}


def flagging(results: dict[str, CheckResult]) -> CheckResult | None:
    """The result whose flagged samples are the run's suspicious ones: the labels check, else (a regression) the
    targets check; None when neither ran."""
    for name in ("labels", "targets"):
        result = results.get(name)
        if result is not None and result.status != "skipped":
            return result
    return None


def get_check(name: str) -> Check:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown check {name!r}; valid checks are {sorted(REGISTRY)}") from None


__all__ = ["REGISTRY", "TASKS", "Check", "CheckResult", "Finding", "get_check"]
