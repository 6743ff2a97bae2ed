"""Validation noise: is the validation set large enough to call a plateau on?

A validation loss is the mean of m per-sample losses: its standard error is
their standard deviation over sqrt(m). The change from one epoch to the next
is measured on the same samples, so its standard error is that of the paired
per-sample differences (smaller than either epoch's: the samples' difficulty
cancels). A change within 2 standard errors (about 95%) is noise.

- resolution: the smallest change between consecutive epochs the set can tell
  from noise, 2 paired standard errors, as a share of the loss (median over epochs);
- coarse: the resolution is above a tenth of the loss (MEANINGFUL), the change the
  plateau check calls meaningful: then "validation plateaued" (or "overfitting")
  cannot be told from noise. A warning when the plateau check's rules would call
  the validation curve flat or overfitting, or when its last changes are within
  noise on a curve that has not converged; else info.

`paired_change` is what the plateau check uses to leave out an overfitting rise within noise.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from dataaudit.checks.base import CheckResult, Finding, json_number
from dataaudit.checks.curves import MEANINGFUL
from dataaudit.run import Run, Split

NAME = "val_noise"

Z = 2.0
MAX_EPOCHS = 50


def _per_sample(split: Split, epoch: int) -> pd.Series:
    """Finite losses of `epoch`, one per sample id (a sample drawn twice: its mean), sorted by id."""
    rec = split.records
    rows = rec["epoch"].to_numpy() == epoch
    loss = rec["loss"].to_numpy()[rows].astype(np.float64)
    ok = np.isfinite(loss)
    return pd.Series(loss[ok]).groupby(rec["sample_id"].to_numpy()[rows][ok]).mean()


def paired_change(split: Split, before: int, after: int) -> tuple[float, float, int]:
    """(mean change, its standard error, samples) of the loss from epoch `before` to `after`, on the samples
    recorded in both; the standard error is NaN with fewer than 2 of them."""
    a, b = _per_sample(split, before), _per_sample(split, after)
    d = (b - a).dropna().to_numpy()
    if len(d) < 2:
        return (float(d.mean()) if len(d) else math.nan), math.nan, len(d)
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d))), len(d)


def noise_table(split: Split) -> pd.DataFrame:
    """Per complete epoch of `split`: epoch, n, loss, stderr (of the mean), change (from the previous epoch,
    paired), change_stderr. NaN where unknown. Beyond the row budget: the epochs whose records are held."""
    epochs = split.with_records(split.complete_epochs)
    rows = []
    previous = None
    for e in epochs:
        s = _per_sample(split, e)
        n = len(s)
        row = {"epoch": e, "n": n, "loss": float(s.mean()) if n else math.nan,
               "stderr": float(s.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
               "change": math.nan, "change_stderr": math.nan}
        if previous is not None:
            d = (s - previous).dropna().to_numpy()
            if len(d) > 1:
                row.update(change=float(d.mean()), change_stderr=float(d.std(ddof=1) / math.sqrt(len(d))))
        rows.append(row)
        previous = s
    return pd.DataFrame(rows, columns=["epoch", "n", "loss", "stderr", "change", "change_stderr"])


def resolution(table: pd.DataFrame) -> float:
    """The median over epochs of Z paired standard errors of an epoch-to-epoch change, relative to the loss."""
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = Z * table["change_stderr"].to_numpy() / table["loss"].abs().to_numpy()
    rel = rel[np.isfinite(rel)]
    return float(np.median(rel)) if len(rel) else math.nan


def check(run: Run) -> CheckResult:
    val = run.split("val")
    if val is None or len(val.complete_epochs) < 2 or not len(val.records):
        return CheckResult.skipped(NAME, "no validation split with 2 complete epochs (wrap a loader with "
                                         "split='val')")
    table = noise_table(val)
    claims, val_state = _claims(run)
    return _compute_val_noise(table, claims, val_state=val_state)


def gate_plateau(result: CheckResult, val: Split) -> CheckResult:
    """The plateau check's `result` with its validation claims held to the noise of `val`:
    an overfitting rise within 2 paired standard errors is not claimed (details: overfitting_within_noise),
    and a validation plateau on a coarse set says it cannot be told from noise (details: val_within_noise)."""
    details = dict(result.details)
    findings = list(result.findings)
    epochs = val.with_records(val.complete_epochs)
    if details.get("overfitting") and epochs:
        # beyond the row budget the best epoch's records may not be held: the last held one up to it
        before = max([e for e in epochs if e <= details["overfitting_from_epoch"]], default=epochs[0])
        rise, se, _ = paired_change(val, before, epochs[-1])
        if not (rise > Z * se):
            details.update(overfitting=False, overfitting_within_noise=True, overfitting_from_epoch=None)
            findings = [f for f in findings if "best_val_epoch" not in f.evidence]
    flat = next((f for f in findings if "val_onset_epoch" in f.evidence), None)
    if flat is not None:
        res = resolution(noise_table(val))
        if np.isfinite(res) and res > MEANINGFUL:
            details["val_within_noise"] = True
            findings[findings.index(flat)] = Finding(
                flat.check, flat.severity,
                f"Validation loss shows no change beyond its noise since epoch {flat.evidence['val_onset_epoch']}, "
                f"but its set resolves only changes above {res:.0%} of the loss: too small to call a plateau "
                f"(see val_noise).", evidence={**flat.evidence, "val_resolution": json_number(res)})
    if details == result.details and findings == list(result.findings):
        return result
    return CheckResult.from_findings(result.name, findings, score=result.score, details=details,
                                     per_sample=result.per_sample)


def _claims(run: Run) -> tuple[list[str], str | None]:
    """What the plateau check's rules say of the validation curve: "plateau", "overfitting" (or nothing),
    and its state ("plateau", "converging", "converged"...)."""
    from dataaudit.checks import plateau  # the plateau check imports this module

    result = plateau.check(run)
    out = []
    if result.details.get("val_state") == "plateau":
        out.append("plateau")
    if result.details.get("overfitting") or result.details.get("overfitting_within_noise"):
        out.append("overfitting")
    return out, result.details.get("val_state")


def _compute_val_noise(table: pd.DataFrame, claims: list[str], *, val_state: str | None = None) -> CheckResult:
    """The val_noise result from `noise_table` (v epochs), the plateau check's claims on validation and the
    validation curve's state (None: unknown).

    A coarse set is a warning when a claim rests on it, or when its last changes (up to 3) are all within noise
    on a curve that has not converged (it looks flat, and nobody can tell); else info. A converged loss near 0
    makes any set look coarse relative to it, and there is nothing left to call."""
    res = resolution(table)
    with np.errstate(invalid="ignore"):
        within = (table["change"].abs() < Z * table["change_stderr"]).to_numpy()
    judged = np.isfinite(table["change_stderr"].to_numpy())
    n = int(table["n"].median()) if len(table) else 0
    coarse = bool(np.isfinite(res) and res > MEANINGFUL)
    last = within[judged][-3:]
    looks_flat = bool(len(last) and last.all() and val_state != "converged")
    rows = np.unique(np.linspace(0, len(table) - 1, min(len(table), MAX_EPOCHS)).round().astype(int))
    details: dict[str, Any] = {
        "samples": n, "resolution": json_number(res), "coarse": coarse, "claims": claims,
        "last_changes_within_noise": looks_flat,
        "within_noise_share": json_number(within[judged].mean()) if judged.any() else None,
        "epochs": [int(table["epoch"].iloc[i]) for i in rows],
        "loss": [json_number(table["loss"].iloc[i]) for i in rows],
        "stderr": [json_number(table["stderr"].iloc[i]) for i in rows],
        "change_stderr": [json_number(table["change_stderr"].iloc[i]) for i in rows],
    }
    findings = []
    if coarse and val_state == "converged" and not claims:
        findings.append(Finding(
            NAME, "info", f"The validation loss converged near 0 ({table['loss'].iloc[-1]:.3g}); relative to so small "
                          f"a loss, its {n} samples resolve only changes above {res:.0%}, but there is no plateau "
                          f"left to call.", evidence={"samples": n, "resolution": json_number(res)}))
    elif coarse:
        claimed = " and ".join(f'"{c}"' for c in claims)
        need = math.ceil(n * (res / MEANINGFUL) ** 2)
        findings.append(Finding(
            NAME, "warning" if claims or looks_flat else "info",
            f"The validation set ({n} samples) is too small or noisy to call a plateau: changes between epochs "
            f"below {res:.0%} of its loss are within noise (2 standard errors), and "
            f"{within[judged].mean():.0%} of its epoch-to-epoch changes are" +
            (f"; the plateau check's {claimed} on validation rests on noise." if claims else
             "; its recent flatness cannot be told from noise." if looks_flat else "."),
            remedy=f"Validate on more samples (about {need} to resolve a change of a tenth of the loss), or "
                   f"average the validation loss over several epochs before calling it flat; judge the "
                   f"plateau on the training loss.",
            evidence={"samples": n, "resolution": json_number(res), "samples_needed": need, "claims": claims}))
    else:
        findings.append(Finding(
            NAME, "info", (f"The validation set ({n} samples) resolves changes between epochs down to {res:.1%} of "
                           f"its loss: enough to call a plateau." if np.isfinite(res) else
                           "Too few samples recorded in both of two consecutive validation epochs to "
                           "estimate the noise."),
            evidence={"samples": n, "resolution": json_number(res)}))
    score = min(1.0, res / (4 * MEANINGFUL)) if coarse and (claims or looks_flat) else 0.0
    return CheckResult.from_findings(NAME, findings, score=score, details=details)
