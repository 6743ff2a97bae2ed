"""The checks: each reads a `Run` and returns a `CheckResult`. Registered by name, explicitly."""
from __future__ import annotations

from collections.abc import Callable

from dataaudit.checks import coverage, labels
from dataaudit.checks.base import CheckResult, Finding
from dataaudit.run import Run

Check = Callable[[Run], CheckResult]

REGISTRY: dict[str, Check] = {
    coverage.NAME: coverage.check,
    labels.NAME: labels.check,
}


def get_check(name: str) -> Check:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown check {name!r}; valid checks are {sorted(REGISTRY)}") from None


__all__ = ["REGISTRY", "Check", "CheckResult", "Finding", "get_check"]
