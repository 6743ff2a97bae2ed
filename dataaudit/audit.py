"""`analyze()`: run the checks on a run and gather them into one `Audit`."""
from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dataaudit import probes, store
from dataaudit.attribution import attribute
from dataaudit.checks import REGISTRY, CheckResult, Finding, get_check
from dataaudit.run import Run, load_run

VERDICTS = ("data", "optimizer", "mixed", "none")


@dataclass(frozen=True)
class Audit:
    """Everything `analyze` concluded about a run; renders to JSON and HTML.

    verdict : what holds the training loss up: "data", "optimizer", "mixed" or "none".
    data_share : the part of the plateau traced to the data, in [0, 1].
    results : check name -> CheckResult.
    thumbnails : sample id -> base64 PNG (32x32) of the most suspicious images, for the HTML report only
        (image-folder scans); never written to audit.json.
    """

    verdict: str
    data_share: float
    results: dict[str, CheckResult]
    plateau: dict[str, Any] = field(default_factory=lambda: {"detected": False, "onset_epoch": None})
    label_issues: tuple[int, ...] = ()
    attribution: dict[str, Any] = field(default_factory=dict)
    run_summary: dict[str, Any] = field(default_factory=dict)
    probes: dict[str, Any] | None = None
    run: Run | None = field(default=None, repr=False, compare=False)
    thumbnails: dict[int, str] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"Audit verdict must be one of {VERDICTS}; got {self.verdict!r}")
        if not 0.0 <= self.data_share <= 1.0:
            raise ValueError(f"Audit data_share must be in [0, 1]; got {self.data_share!r}")

    @property
    def findings(self) -> list[Finding]:
        """All findings, the most severe first."""
        order = {"critical": 0, "warning": 1, "info": 2}
        found = [f for r in self.results.values() for f in r.findings]
        return sorted(found, key=lambda f: order[f.severity])

    @property
    def checks(self) -> dict[str, dict[str, Any]]:
        # the label issues are written once, at the top level of audit.json
        return {name: {"status": r.status, "score": round(r.score, 4),
                       **{k: v for k, v in r.details.items() if k != "label_issues"}}
                for name, r in self.results.items()}

    def to_dict(self) -> dict[str, Any]:
        from dataaudit import __version__
        return {
            "dataaudit_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "verdict": self.verdict,
            "data_share": round(self.data_share, 4),
            "attribution": self.attribution,
            "plateau": self.plateau,
            "label_issues": list(self.label_issues),
            "findings": [f.to_dict() for f in self.findings],
            "checks": self.checks,
            "run": self.run_summary,
            **({"probes": self.probes} if self.probes else {}),
        }

    def write_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        store.write_json_atomic(path, self.to_dict())
        return path

    def write_html(self, path: str | Path) -> Path:
        from dataaudit.report import render_html
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        store.write_text_atomic(path, render_html(self))
        return path


def analyze(run: str | Path | Run, *, checks: Iterable[str] | None = None) -> Audit:
    """Run the checks (default: every registered one) on a run directory or a `Run`."""
    if not isinstance(run, Run):
        run = load_run(run)
    names = list(REGISTRY) if checks is None else list(checks)
    results = {name: get_check(name)(run) for name in names}
    labels = results.get("labels")
    attribution = attribute(run, results)
    probed = probes.latest(run.path)  # a probe of the run measured the share: the verdict rests on it
    attribution = probes.apply(attribution, probed)
    plateau = results.get("plateau")
    return Audit(
        verdict=attribution.verdict,
        data_share=attribution.data_share,
        results=results,
        plateau=dict(plateau.details) if plateau is not None else {"detected": False, "onset_epoch": None},
        label_issues=tuple(labels.details.get("label_issues", [])) if labels else (),
        attribution={**attribution.details, "verdict": attribution.verdict, "data_share": attribution.data_share},
        run_summary=_summary(run),
        probes=probes.section(probed),
        run=run,
    )


def _summary(run: Run) -> dict[str, Any]:
    train = run.train
    return {
        "path": str(run.path) if run.path else None,
        "epochs": len(train.epochs),
        "complete_epochs": len(train.complete_epochs),
        "samples": train.dataset_size,
        "num_classes": run.num_classes,
        "splits": sorted(run.splits),
        "steps": int(len(run.steps)),
    }
