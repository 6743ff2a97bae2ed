"""Probes: measure the data's share of a plateau by experiment.

`probe` continues training from copies of the user's model, optimizer and
scheduler for a few epochs per arm (control, data fixes, optimizer fixes, the
best of both together; `arms.plan` chooses them from the audit's findings),
and splits what the best arms remove by Shapley value (`share`). The results
go into the run directory (`results`), where `analyze` finds them.

Torch is imported by `probe` itself: `share` and `results` serve `analyze` without it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from dataaudit.probes.results import latest
from dataaudit.probes.share import apply, section

__all__ = ["Probe", "apply", "latest", "probe", "section"]

if TYPE_CHECKING:
    from dataaudit.probes.probing import Probe, probe


def __getattr__(name: str):
    if name in ("Probe", "probe"):
        from dataaudit.probes import probing as module
        return getattr(module, name)
    raise AttributeError(f"module 'dataaudit.probes' has no attribute {name!r}")
