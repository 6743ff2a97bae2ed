from __future__ import annotations

from dataaudit.checks.base import CheckResult, Finding
from dataaudit.reconcile import reconcile


def _results(*, best_epoch=6, drift_epoch=7, signal="diverged", **evidence) -> dict[str, CheckResult]:
    ev = {"first": 0.5, "best": 0.1, "end": 0.9, "best_epoch": best_epoch, "spike_peak": 0.9, **evidence}
    if signal == "diverged":
        ev.setdefault("nonfinite_end", False)
    optimizer = CheckResult("optimizer", "critical", 0.9, {"signals": [signal]},
                            (Finding("optimizer", "critical", "The training loss diverged.",
                                     remedy="Lower the learning rate", evidence=ev),))
    plateau = CheckResult("plateau", "warning", 0.0, {"state": "diverging", "best_epoch": best_epoch},
                          (Finding("plateau", "warning", "Training loss is rising.",
                                   remedy="Lower the learning rate or add warmup; see the optimizer check."),))
    drift = CheckResult("drift", "critical", 1.0, {"first_drift_epoch": drift_epoch},
                        (Finding("drift", "critical", "The inputs changed at epoch 7."),))
    return {"optimizer": optimizer, "plateau": plateau, "drift": drift}


def test_a_rise_that_starts_at_the_drift_epoch_is_the_drifts():
    for signal in ("diverged", "lr_too_high"):
        out = reconcile(_results(signal=signal))
        assert out["optimizer"].details["signals"] == []
        assert out["optimizer"].details["signals_given_to_drift"] == [signal]
        assert out["optimizer"].status == "info" and out["optimizer"].score == 0.0
        assert "drift" in out["optimizer"].findings[0].summary
        assert "learning rate" not in out["plateau"].findings[0].remedy


def test_a_rise_elsewhere_or_a_blow_up_stays_the_optimizers():
    for results in (_results(best_epoch=2), _results(nonfinite_end=True), _results(blew_up=True)):
        out = reconcile(results)
        assert out["optimizer"].details["signals"] == ["diverged"] and out["optimizer"].status == "critical"
    no_drift = _results()
    no_drift["drift"] = CheckResult("drift", "ok", 0.0, {"first_drift_epoch": None})
    assert reconcile(no_drift) == no_drift
