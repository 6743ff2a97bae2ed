"""What every check returns: a frozen, validated result with findings."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

SEVERITIES = ("info", "warning", "critical")
STATUSES = ("ok", "info", "warning", "critical", "skipped")


@dataclass(frozen=True)
class Finding:
    """One thing a check found, with its evidence and what to do about it.

    check : name of the check that found it.
    severity : "info", "warning" or "critical".
    summary : one sentence a practitioner reads first.
    remedy : what to do, from practice.
    evidence : small JSON-able facts behind the summary.
    ids : sample ids the finding is about, most relevant first.
    """

    check: str
    severity: str
    summary: str
    remedy: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    ids: tuple[int, ...] = ()

    def __post_init__(self):
        if self.severity not in SEVERITIES:
            raise ValueError(f"Finding severity must be one of {SEVERITIES}; got {self.severity!r}")
        if not self.summary:
            raise ValueError("Finding needs a summary")

    def to_dict(self) -> dict[str, Any]:
        out = {"check": self.check, "severity": self.severity, "summary": self.summary}
        if self.remedy:
            out["remedy"] = self.remedy
        if self.evidence:
            out["evidence"] = self.evidence
        if self.ids:
            out["ids"] = list(self.ids)  # every one: tools act on the list, and the count alone hides which
            out["n_ids"] = len(self.ids)
        return out


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check on one run.

    name : the check's registered name.
    status : "ok", "info", "warning" or "critical" (the worst finding), or "skipped" (not applicable).
    score : in [0, 1], how strongly this check implicates the data (0: nothing found).
    details : JSON-able fields written under `checks.<name>` in audit.json.
    findings : what to tell the user.
    per_sample : optional table with a `sample_id` column and per-sample scores.
    """

    name: str
    status: str
    score: float
    details: dict[str, Any] = field(default_factory=dict)
    findings: tuple[Finding, ...] = ()
    per_sample: pd.DataFrame | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"CheckResult status must be one of {STATUSES}; got {self.status!r}")
        if not 0.0 <= float(self.score) <= 1.0:
            raise ValueError(f"CheckResult score must be in [0, 1]; got {self.score!r}")
        if self.per_sample is not None and "sample_id" not in self.per_sample.columns:
            raise ValueError("CheckResult per_sample needs a sample_id column")

    @classmethod
    def from_findings(cls, name: str, findings: list[Finding], *, score: float,
                      details: dict[str, Any], per_sample: pd.DataFrame | None = None) -> CheckResult:
        """A result whose status is its worst finding ("ok" when there is none)."""
        worst = max((SEVERITIES.index(f.severity) for f in findings), default=-1)
        status = SEVERITIES[worst] if worst >= 0 else "ok"
        return cls(name, status, float(min(max(score, 0.0), 1.0)), details, tuple(findings), per_sample)

    @classmethod
    def skipped(cls, name: str, reason: str) -> CheckResult:
        return cls(name, "skipped", 0.0, {"skipped": reason},
                   (Finding(name, "info", f"{name} check skipped: {reason}"),))


def json_number(value: Any, digits: int = 4) -> float | None:
    """`value` as a JSON-able float with `digits` significant digits; None for None, NaN and inf."""
    if value is None:
        return None
    value = float(value)
    if not math.isfinite(value):
        return None
    return float(f"{value:.{digits}g}")
