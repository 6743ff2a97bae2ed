"""Reconcile checks that see one event from two sides.

The checks run independently on the `Run`; some events show in more than one. A
pipeline that changes at some epoch (augmentation switched on, a new normalisation)
makes the training loss rise from that epoch on: the drift check dates the change,
and the optimizer check, seeing only the loss, reads the rise as divergence and
prescribes a lower learning rate. A rise that starts at the drift epoch belongs to
the drift: the optimizer's rise signals ("diverged", "lr_too_high") are withdrawn
into an info finding that names the drift, and the plateau check's remedy for a
rising loss points at the pipeline. A rise to non-finite values, or a tenfold
blow-up, is the optimizer's whatever the data did.
"""
from __future__ import annotations

import dataclasses

from dataaudit.checks.base import CheckResult, Finding

_RISE_SIGNALS = ("diverged", "lr_too_high")
# The rise starts the epoch after the best one; median-of-3 smoothing can move that best epoch by one.
_SLACK_EPOCHS = 1


def reconcile(results: dict[str, CheckResult]) -> dict[str, CheckResult]:
    """`results` with the optimizer's and the plateau's reading of a drift's loss rise given to the drift."""
    drift = results.get("drift")
    epoch = drift.details.get("first_drift_epoch") if drift is not None and drift.status != "skipped" else None
    if epoch is None:
        return results
    out = dict(results)
    if "optimizer" in results:
        out["optimizer"] = _optimizer(results["optimizer"], int(epoch))
    if "plateau" in results:
        out["plateau"] = _plateau(results["plateau"], int(epoch))
    return out


def _starts_at(best_epoch, drift_epoch: int) -> bool:
    return best_epoch is not None and abs(int(best_epoch) + 1 - drift_epoch) <= _SLACK_EPOCHS


def _optimizer(result: CheckResult, drift_epoch: int) -> CheckResult:
    signals = list(result.details.get("signals", []))
    moved, findings = [], []
    for f in result.findings:
        ev = f.evidence or {}
        signal = next((s for s in _RISE_SIGNALS if s in signals and _is_rise_finding(f, s)), None)
        if (signal is not None and not ev.get("nonfinite_end") and not ev.get("blew_up")
                and _starts_at(ev.get("best_epoch"), drift_epoch)):
            moved.append(signal)
            findings.append(Finding(
                result.name, "info",
                f"The training loss rose from epoch {int(ev['best_epoch']) + 1}, where the drift check found the "
                f"data changed (epoch {drift_epoch}): the rise belongs to that change, not to the optimizer.",
                remedy="See the drift finding: if the change was intended (augmentation switched on), the higher "
                       "loss is expected; otherwise restore the pipeline.",
                evidence={**ev, "drift_epoch": drift_epoch, "withdrawn_signal": signal}))
        else:
            findings.append(f)
    if not moved:
        return result
    kept = [s for s in signals if s not in moved]
    details = {**result.details, "signals": kept, "signals_given_to_drift": moved}
    status = max((f.severity for f in findings), key=("info", "warning", "critical").index, default=None)
    # the score says how strongly the optimisation side is implicated: only the kept signals count
    score = result.score if kept else 0.0
    return dataclasses.replace(result, status=status or "ok", score=score, details=details, findings=tuple(findings))


def _is_rise_finding(f: Finding, signal: str) -> bool:
    ev = f.evidence or {}
    if signal == "diverged":
        return "nonfinite_end" in ev
    return "spike_peak" in ev and "nonfinite_end" not in ev


def _plateau(result: CheckResult, drift_epoch: int) -> CheckResult:
    if result.details.get("state") != "diverging" or not _starts_at(result.details.get("best_epoch"), drift_epoch):
        return result
    remedy = (f"The rise starts at epoch {drift_epoch}, where the drift check found the data changed: see the drift "
              "finding (an augmentation switched on raises the training loss by design).")
    findings = tuple(dataclasses.replace(f, remedy=remedy) if f.remedy and "learning rate" in f.remedy else f
                     for f in result.findings)
    return dataclasses.replace(result, findings=findings)
