"""dataaudit: how much of a training-loss plateau comes from the data, and which samples, classes,
features or epochs are to blame.

    tracker = dataaudit.Tracker(run_dir)
    loader = tracker.wrap(train_loader)
    tracker.watch(optimizer, model=model)
    ...
    audit = dataaudit.analyze(run_dir)
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Public names and the module each lives in. They load on first use: the tracker needs torch
# (seconds to import), analysis needs pandas and pyarrow, and `dataaudit --help` needs neither.
_EXPORTS = {
    "Tracker": "dataaudit.track",
    "Audit": "dataaudit.audit",
    "analyze": "dataaudit.audit",
    "Run": "dataaudit.run",
    "Split": "dataaudit.run",
    "load_run": "dataaudit.load",
    "RunFormatError": "dataaudit.store",
    "probe": "dataaudit.probes",
}

__all__ = ["Audit", "Run", "RunFormatError", "Split", "Tracker", "__version__", "analyze", "load_run", "probe"]

if TYPE_CHECKING:
    from dataaudit.audit import Audit, analyze
    from dataaudit.load import load_run
    from dataaudit.probes import probe
    from dataaudit.run import Run, Split
    from dataaudit.store import RunFormatError
    from dataaudit.track import Tracker


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dataaudit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
