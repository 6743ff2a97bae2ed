"""Accumulation: were the gradients cleared between steps, and were accumulated micro-batches averaged?

Reads what `Tracker.watch` counts per training epoch (`probes.backward` in
the manifest, see `dataaudit.track.backward`): backward passes per optimizer
step, what `.grad` held at the first pass after each step, and the weight
backward gave the recorded losses.

- grads_not_cleared: at more than a tenth of the steps (at least 3), the first
  backward pass found the previous step's gradient still in `.grad` (neither
  None nor zero): `zero_grad()` is missing or misplaced, so each step adds up
  every gradient since the last clear and its norm grows until one;
- unscaled_accumulation: the steps accumulate k > 1 micro-batches and the
  recorded losses got a weight of about k per step (each micro-batch's mean
  loss added, not averaged): the step is k times one micro-batch's, as if
  the learning rate had been raised k-fold, unless it was lowered to match.

A step of k passes whose losses got a weight of about 1 (`loss / k`) is
accumulation done right: info. The score is 1 for gradients never cleared,
0.6 for unscaled accumulation (how strongly the cause is implicated).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from dataaudit.checks.base import CheckResult, Finding, json_number
from dataaudit.run import Run

NAME = "accumulation"

NOT_CLEARED_SHARE = 0.1
MIN_STEPS = 3
# A loss weight within this of k (or of 1) per step is "added up" (or "averaged").
WEIGHT_TOLERANCE = 0.25


def check(run: Run) -> CheckResult:
    entries = (run.meta.get("probes") or {}).get("backward") or []
    if not entries:
        return CheckResult.skipped(NAME, "no backward-pass counts (call tracker.watch(optimizer))")
    return _compute_accumulation(entries, run.steps)


def _growth(steps: pd.DataFrame) -> float | None:
    """The median gradient norm of the last tenth of the steps over the first tenth's."""
    if not len(steps) or "grad_norm" not in steps:
        return None
    g = steps.loc[~steps["skipped"].to_numpy(bool), "grad_norm"].to_numpy(np.float64)
    g = g[np.isfinite(g)]
    k = max(3, len(g) // 10)
    if len(g) < 2 * k or np.median(g[:k]) <= 0:
        return None
    return float(np.median(g[-k:]) / np.median(g[:k]))


def _compute_accumulation(entries: list[dict[str, Any]], steps: pd.DataFrame) -> CheckResult:
    """The accumulation result from the per-epoch backward summaries and the steps table."""
    per_step: dict[int, int] = {}
    for e in entries:
        for k, count in e["passes_per_step"].items():
            per_step[int(k)] = per_step.get(int(k), 0) + int(count)
    n_steps = sum(per_step.values())
    typical = max(per_step, key=lambda k: (per_step[k], k)) if per_step else 0
    checked = sum(int(e["grad_checked"]) for e in entries)
    left = sum(int(e["grad_left"]) for e in entries)
    weights = [e["loss_weight"] for e in entries if e.get("loss_weight") is not None]
    weight = float(np.median(weights)) if weights else None
    left_share = left / checked if checked else 0.0
    growth = _growth(steps)
    details: dict[str, Any] = {
        "steps": n_steps, "passes_per_step": {str(k): v for k, v in sorted(per_step.items())},
        "typical_passes": typical, "grad_checked": checked, "grad_not_cleared": left,
        "not_cleared_share": json_number(left_share), "loss_weight": json_number(weight),
        "grad_norm_growth": json_number(growth), "signals": [],
    }
    findings = []
    score = 0.0
    if left >= MIN_STEPS and left_share > NOT_CLEARED_SHARE:
        details["signals"].append("grads_not_cleared")
        grew = f"; the gradient norm grew {growth:.3g}x from the first tenth of the run to the last" if growth else ""
        findings.append(Finding(
            NAME, "critical" if left_share >= 0.9 else "warning",
            f"The gradients were not cleared between optimizer steps: at {left} of {checked} steps "
            f"({left_share:.0%}) backward added to the previous step's gradient{grew}. Each step sums "
            f"every gradient since the last clear.",
            remedy="Call optimizer.zero_grad() (or model.zero_grad()) once per optimizer step, after "
                   "optimizer.step() and before the next backward; with gradient accumulation, after the "
                   "step that ends each accumulation window.",
            evidence={"not_cleared": left, "checked": checked, "share": json_number(left_share),
                      "grad_norm_growth": json_number(growth)}))
        score = 1.0
    if typical > 1:
        share = per_step[typical] / n_steps
        if weight is not None and abs(weight / typical - 1) <= WEIGHT_TOLERANCE:
            details["signals"].append("unscaled_accumulation")
            findings.append(Finding(
                NAME, "warning",
                f"{share:.0%} of the optimizer steps accumulate {typical} backward passes, and the recorded losses "
                f"got a weight of {weight:.3g} per step: the micro-batch losses are added, not averaged, so each "
                f"step is {typical}x one micro-batch's, like a {typical}x higher learning rate.",
                remedy=f"Divide each micro-batch's loss by {typical} before backward (loss / accumulation_steps), "
                       f"or lower the learning rate {typical}-fold if it was tuned without accumulation.",
                evidence={"passes": typical, "share": json_number(share), "loss_weight": json_number(weight)}))
            score = max(score, 0.6)
        else:
            how = ("averaged (each micro-batch's loss divided by the number of passes)"
                   if weight is not None and abs(weight - 1) <= WEIGHT_TOLERANCE else
                   f"weighted {weight:.3g} per step" if weight is not None else
                   "of unknown scaling (record the losses before .detach() to see it)")
            findings.append(Finding(NAME, "info", f"{share:.0%} of the optimizer steps accumulate {typical} "
                                                  f"backward passes, {how}.",
                                    evidence={"passes": typical, "loss_weight": json_number(weight)}))
    if not findings:
        findings.append(Finding(NAME, "info", f"One backward pass per optimizer step, gradients cleared between "
                                              f"steps ({checked} steps checked)."))
    return CheckResult.from_findings(NAME, findings, score=score, details=details)
