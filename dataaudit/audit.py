"""`analyze()`: run the checks on a run and gather them into one `Audit`."""
from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dataaudit import probes, store
from dataaudit.attribution import attribute
from dataaudit.checks import REGISTRY, CheckResult, Finding, flagging, get_check
from dataaudit.load import load_run
from dataaudit.reconcile import reconcile
from dataaudit.run import Run

if TYPE_CHECKING:
    import pandas as pd

VERDICTS = ("data", "optimizer", "mixed", "none")
# The version of audit.json's layout (dataaudit/audit.schema.json): bumped when a field changes meaning or goes.
SCHEMA_VERSION = "1.0"


@dataclass(frozen=True)
class Audit:
    """Everything `analyze` concluded about a run; renders to JSON and HTML.

    verdict : what holds the training loss up: "data", "optimizer", "mixed" or "none".
    data_share : the part of the plateau traced to the data, in [0, 1].
    results : check name -> CheckResult.
    thumbnails : sample id -> base64 PNG (32x32) of the most suspicious images, for the HTML report only
        (image-folder scans, or `analyze(..., dataset=)`); never written to audit.json.

    `issues()` is the per-sample table (one row per sample), `issue_summary()` the per-check one.
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

    def __repr__(self) -> str:
        counts = {s: sum(f.severity == s for f in self.findings) for s in ("critical", "warning", "info")}
        found = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no findings"
        where = f" of {self.run_summary['path']}" if self.run_summary.get("path") else ""
        return (f"<Audit{where}: verdict {self.verdict!r}, data share {self.data_share:.0%}, "
                f"{len(self.label_issues):,} label issues, {found}>")

    def _repr_html_(self) -> str:
        """The notebook display: the verdict card, the findings and the loss plot."""
        from dataaudit.report.notebook import render_card
        return render_card(self)

    def issues(self) -> pd.DataFrame:
        """One row per sample of the run, flagged or not (see `dataaudit.issues.issues_table` for the columns):
        sample_id, given_label, suggested_label, label_score, is_label_issue, label_rank, plateau_loss,
        loss_trend, aum, times_drawn, times_missing, and further per-sample columns of the checks that ran."""
        from dataaudit.issues import issues_table
        return issues_table(self)

    def issue_summary(self) -> pd.DataFrame:
        """One row per check: check, status, score, findings, flagged (sample ids named), worst, summary."""
        from dataaudit.issues import summary_table
        return summary_table(self)

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
            "schema_version": SCHEMA_VERSION,
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


def analyze(run: str | Path | Run, *, checks: Iterable[str] | None = None, progress: bool | None = False,
            dataset: Any = None) -> Audit:
    """Run the checks (default: every registered one) on a run directory or a `Run`.

    progress : True draws a progress line on stderr (each check, time spent, time left), None draws it
        only when stderr is a terminal (what the CLI does), False (the default) stays silent.
    dataset : the training dataset (indexable: dataset[sample_id] -> image or (image, label)), or an image
        folder; when its inputs are images, the report shows thumbnails of the flagged samples.
    """
    from dataaudit.progress import Progress

    names = list(REGISTRY) if checks is None else list(checks)
    for name in names:
        get_check(name)  # an unknown name fails before the run is read
    bar = Progress(len(names) + 2, "analyze", enabled=progress, unit="steps")
    try:
        if not isinstance(run, Run):
            bar.step("reading the run")
            run = load_run(run)
        else:
            bar.count += 1
        results = {}
        for name in names:
            bar.step(f"check {name}")
            results[name] = get_check(name)(run)
        results = reconcile(results)
        bar.step("attribution")
        labels = results.get("labels")
        flagged = flagging(results)  # noisy labels, or noisy targets on a regression: one list of suspicious ids
        attribution = attribute(run, results)
        probed = probes.latest(run.path)  # a probe of the run measured the share: the verdict rests on it
        attribution = probes.apply(attribution, probed)
        plateau = results.get("plateau")
    except BaseException:
        bar.clear()  # an error message starts on a clean line, and the line stops ticking
        raise
    bar.done(f"{len(names)} checks")
    thumbnails = {}
    if dataset is not None and labels is not None:
        from dataaudit.thumbnails import dataset_thumbnails
        thumbnails = dataset_thumbnails(dataset, labels.details.get("label_issues", []))
    return Audit(
        verdict=attribution.verdict,
        data_share=attribution.data_share,
        results=results,
        plateau=dict(plateau.details) if plateau is not None else {"detected": False, "onset_epoch": None},
        label_issues=tuple(flagged.details.get("label_issues", [])) if flagged is not None else (),
        attribution={**attribution.details, "verdict": attribution.verdict, "data_share": attribution.data_share},
        run_summary=_summary(run),
        probes=probes.section(probed),
        run=run,
        thumbnails=thumbnails,
    )


def _summary(run: Run) -> dict[str, Any]:
    train = run.train
    return {
        "path": str(run.path) if run.path else None,
        "epochs": len(train.epochs),
        "complete_epochs": len(train.complete_epochs),
        "samples": train.dataset_size,
        "task": run.task,
        "soft_targets": run.soft_targets,
        "num_classes": run.num_classes,
        "splits": sorted(run.splits),
        "steps": int(len(run.steps)),
        # beyond the row budget (dataaudit.budget): whose records were held, said rather than hidden
        **({"records_held": held} if (held := [{"split": name, **split.held_note}
                                                for name, split in run.splits.items() if split.held_note]) else {}),
    }
