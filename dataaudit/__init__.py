"""dataaudit: how much of a training-loss plateau comes from the data, and which samples, classes,
features or epochs are to blame.

    tracker = dataaudit.Tracker(run_dir)
    loader = tracker.wrap(train_loader)
    tracker.watch(optimizer, model=model)
    ...
    audit = dataaudit.analyze(run_dir)
"""
from __future__ import annotations

__version__ = "0.1.0"

from dataaudit.audit import Audit, analyze
from dataaudit.run import Run, Split, load_run
from dataaudit.store import RunFormatError

__all__ = ["Audit", "Run", "RunFormatError", "Split", "Tracker", "analyze", "load_run", "__version__"]


def __getattr__(name: str):
    # The tracker needs torch, which takes seconds to import; analysis and the CLI do not.
    if name == "Tracker":
        from dataaudit.track import Tracker
        return Tracker
    raise AttributeError(f"module 'dataaudit' has no attribute {name!r}")
