"""The checks: each reads a `Run` and returns a `CheckResult`. Registered by name, explicitly."""
from __future__ import annotations

from collections.abc import Callable

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
    units,
    val_noise,
)
from dataaudit.checks.base import CheckResult, Finding
from dataaudit.run import Run

Check = Callable[[Run], CheckResult]

REGISTRY: dict[str, Check] = {
    coverage.NAME: coverage.check,
    labels.NAME: labels.check,
    drift.NAME: drift.check,
    class_imbalance.NAME: class_imbalance.check,
    feature_scale.NAME: feature_scale.check,
    plateau.NAME: plateau.check,
    optimizer.NAME: optimizer.check,
    subsets.NAME: subsets.check,
    layer_gradients.NAME: layer_gradients.check,
    val_noise.NAME: val_noise.check,
    resume.NAME: resume.check,
    accumulation.NAME: accumulation.check,
    units.NAME: units.check,
}


def get_check(name: str) -> Check:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown check {name!r}; valid checks are {sorted(REGISTRY)}") from None


__all__ = ["REGISTRY", "Check", "CheckResult", "Finding", "get_check"]
