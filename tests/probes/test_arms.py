from __future__ import annotations

import pandas as pd
import pytest

from dataaudit.audit import Audit
from dataaudit.checks.base import CheckResult, Finding
from dataaudit.probes import arms


def _audit(**results) -> Audit:
    return Audit("mixed", 0.5, results)


def _optimizer(*signals, **details) -> CheckResult:
    findings = [Finding("optimizer", "critical", f"{s} fired", evidence=details.get(s, {})) for s in signals]
    return CheckResult.from_findings("optimizer", findings, score=0.5,
                                     details={"signals": list(signals), "lr_peak": 0.1, "lr_final": 1e-5})


def _labels(evidence: str = "moderate") -> CheckResult:
    table = pd.DataFrame({"sample_id": [0, 1, 2, 3], "label": [0, 1, 1, 0], "suggested_label": [1, 1, 0, 0],
                          "flagged": [True, False, True, False]})
    return CheckResult.from_findings("labels", [Finding("labels", "critical", "2 wrong labels")], score=0.5,
                                     details={"evidence": evidence}, per_sample=table)


def test_a_collapsed_learning_rate_is_restored_to_its_peak():
    planned, _ = arms.plan(_audit(optimizer=_optimizer("lr_collapsed")))
    restart = next(a for a in planned if a.name == "lr_restart")
    assert restart.params["lr_start"] == restart.params["lr_end"] == pytest.approx(1e4)
    assert "lr_lower" not in {a.name for a in planned}  # lowering a collapsed rate is moot


def test_a_healthy_run_gets_a_restart_and_a_lowered_rate():
    planned, _ = arms.plan(_audit(optimizer=_optimizer()))
    assert [a.name for a in planned] == ["control", "lr_restart", "lr_lower"]
    assert planned[1].params["lr_start"] == 10 and planned[1].params["lr_end"] == 1


def test_findings_choose_the_data_and_optimizer_arms():
    audit = _audit(labels=_labels(), optimizer=_optimizer("clipping_always", "frozen_layers",
                                                          clipping_always={"threshold": 0.01}))
    planned, notes = arms.plan(audit)
    names = [a.name for a in planned]
    assert names == ["control", "relabel_flagged", "lr_restart", "lr_lower", "unclip", "unfreeze"]
    relabel = planned[1]
    assert relabel.params["ids"].tolist() == [0, 2] and relabel.params["labels"].tolist() == [1, 0]
    assert arms.clip_threshold(audit.results, None) == 0.01  # the telemetry's threshold
    assert arms.clip_threshold(audit.results, 0.5) == 0.5  # the user's own
    assert any("clip=" in n for n in notes)


def test_flagged_samples_are_dropped_only_on_strong_evidence():
    names = [a.name for a in arms.plan(_audit(labels=_labels("strong"), optimizer=_optimizer()))[0]]
    assert names[:3] == ["control", "relabel_flagged", "drop_flagged"]
    names = [a.name for a in arms.plan(_audit(labels=_labels("moderate"), optimizer=_optimizer()))[0]]
    assert "drop_flagged" not in names


def test_a_drift_becomes_an_estimated_arm_with_a_note():
    drift = CheckResult.from_findings("drift", [Finding("drift", "critical", "inputs changed")], score=0.9,
                                      details={"first_drift_epoch": 7})
    planned, notes = arms.plan(_audit(drift=drift, optimizer=_optimizer()))
    undo = next(a for a in planned if a.name == "undo_drift")
    assert undo.estimated and undo.params["drift_epoch"] == 7
    assert any("cannot undo" in n for n in notes)


def test_arms_by_name_and_unknown_names():
    planned, notes = arms.plan(_audit(labels=_labels(), optimizer=_optimizer()),
                               arms=["drop_flagged", "reset_state", "balance_classes"])
    assert [a.name for a in planned] == ["control", "drop_flagged", "reset_state"]
    assert any("balance_classes" in n for n in notes)
    with pytest.raises(ValueError, match="arms="):
        arms.plan(_audit(), arms=["warp_drive"])
