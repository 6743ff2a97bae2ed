"""Resume: did a resumed run lose its optimizer state, or start its schedule again?

Reads the fingerprints `Tracker.watch` keeps in the manifest
(`probes.optimizer_state`, see `dataaudit.track.state`): each session's state
before its first step ("start"), and the state at the end of each training
epoch ("end"). At every session that follows an earlier one (a resume), its
start is compared with the last end before it, per param group:

- state_lost: the optimizer had a step count or moment buffers (Adam's
  exp_avg / exp_avg_sq, SGD's momentum_buffer...) and the session started
  without them, or with a step count back below half of it: a checkpoint that
  restored the weights but not `optimizer.state_dict()`. Adam then restarts its
  bias correction and its second-moment estimate from 0 (steps too large for a
  while), momentum starts from rest;
- schedule_restarted: the scheduler's position (`last_epoch`, with
  `watch(scheduler=)`) went back, or without it, the learning rate went back to
  the run's first learning rate after having moved away from it (within 1%, and
  more than 10%, of the largest of the three: a warm-up may start at 0): a
  scheduler that was not restored starts again from its warm-up.

The score is 1 when state was lost, 0.5 for a restarted schedule alone (how
strongly the resume is implicated; 0: nothing found).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from dataaudit.checks.base import CheckResult, Finding, json_number
from dataaudit.checks.curves import epoch_losses
from dataaudit.run import Run

NAME = "resume"

# A step count back below this share of the one before the resume is a reset, not a continuation.
STEP_KEPT = 0.5
# Learning rate "back to the start": within 1% of the run's first lr, after being more than 10% away from it.
LR_SAME = 0.01
LR_MOVED = 0.10
BUFFERS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "square_avg", "sum")


def check(run: Run) -> CheckResult:
    states = (run.meta.get("probes") or {}).get("optimizer_state") or []
    if not states:
        return CheckResult.skipped(NAME, "no optimizer state fingerprints (call tracker.watch(optimizer))")
    table = epoch_losses(run.train)
    losses = dict(zip(table["epoch"].tolist(), table["loss"].tolist(), strict=True))
    return _compute_resume(states, losses)


def _has_state(group: dict[str, Any]) -> bool:
    return bool((group.get("step") or 0) > 0 or any((group.get(k) or 0) > 0 for k in BUFFERS))


def _compare(before: dict[str, Any], start: dict[str, Any], first: dict[str, Any] | None) -> dict[str, Any]:
    """What changed between the last end fingerprint before a resume and the resumed session's start."""
    out: dict[str, Any] = {"lost_groups": [], "lost_buffers": [], "step_before": None, "step_after": None,
                           "restarted": False, "how": None, "lr_before": None, "lr_after": None}
    for i, (b, s) in enumerate(zip(before["groups"], start["groups"], strict=False)):
        step_b, step_s = b.get("step"), s.get("step")
        lost = [k for k in BUFFERS if (b.get(k) or 0) > 0 and not (s.get(k) or 0) > 0]
        step_reset = step_b is not None and step_b > 0 and (step_s is None or step_s < STEP_KEPT * step_b)
        if _has_state(b) and (step_reset or lost):
            out["lost_groups"].append(i)
            out["lost_buffers"] = sorted(set(out["lost_buffers"]) | set(lost))
            if out["step_before"] is None:
                out.update(step_before=step_b, step_after=step_s or 0)
    sched_b, sched_s = before.get("scheduler"), start.get("scheduler")
    lr_b = before["groups"][0].get("lr") if before["groups"] else None
    lr_s = start["groups"][0].get("lr") if start["groups"] else None
    out.update(lr_before=lr_b, lr_after=lr_s)
    if sched_b is not None and sched_s is not None and sched_s["last_epoch"] < sched_b["last_epoch"]:
        out.update(restarted=True, how="scheduler", position_before=sched_b["last_epoch"],
                   position_after=sched_s["last_epoch"])
    elif first is not None and first["groups"] and None not in (lr_b, lr_s, first["groups"][0].get("lr")):
        lr0 = first["groups"][0]["lr"]
        # against the largest of the three: a warm-up from 0 (transformers' schedules) has lr0 = 0
        scale = max(abs(lr0), abs(lr_b), abs(lr_s))
        if scale > 0 and abs(lr_s - lr0) <= LR_SAME * scale and abs(lr_b - lr0) > LR_MOVED * scale:
            out.update(restarted=True, how="learning rate", lr_first=lr0)
    return out


def _compute_resume(states: list[dict[str, Any]], losses: dict[int, float]) -> CheckResult:
    """The resume result from the fingerprints (in the order taken) and the mean training loss per epoch."""
    first = next((s for s in states if s["at"] == "start"), None)
    resumes = []
    for i, entry in enumerate(states):
        if entry["at"] != "start":
            continue
        before = next((s for s in reversed(states[:i]) if s["at"] == "end" and s["session"] != entry["session"]),
                      None)
        if before is None:
            continue
        change = _compare(before, entry, first)
        change["epoch"] = int(entry["epoch"])
        change["loss_before"] = losses.get(int(before["epoch"]))
        change["loss_after"] = losses.get(int(entry["epoch"]))
        resumes.append(change)

    findings = []
    for r in resumes:
        loss_text = ""
        if r["loss_before"] is not None and r["loss_after"] is not None and np.isfinite(
                [r["loss_before"], r["loss_after"]]).all():
            loss_text = f" The training loss went from {r['loss_before']:.3g} to {r['loss_after']:.3g} across it."
        evidence = {k: (json_number(v) if isinstance(v, float) else v) for k, v in r.items()}
        if r["lost_groups"]:
            what = (f"its step count from {r['step_before']:.0f} to {r['step_after']:.0f}"
                    if r["step_before"] is not None else "")
            if r["lost_buffers"]:
                what += (" and " if what else "") + f"its moment buffers ({', '.join(r['lost_buffers'])})"
            findings.append(Finding(
                NAME, "warning",
                f"The run resumed at epoch {r['epoch']} without the optimizer's state: {what} went back to "
                f"zero, as in a fresh optimizer.{loss_text}",
                remedy="Save and restore optimizer.state_dict() (and the scheduler's and GradScaler's) with the "
                       "weights; resuming Adam without its moments takes steps too large for a while and can "
                       "undo progress. If the reset was meant, add a short warm-up after it.",
                evidence=evidence))
        if r["restarted"]:
            how = (f"the scheduler's position went back from {r['position_before']} to {r['position_after']}"
                   if r["how"] == "scheduler" else
                   f"the learning rate went back to {r['lr_after']:.3g}, where the run started")
            findings.append(Finding(
                NAME, "warning",
                f"The learning-rate schedule started again at the resume at epoch {r['epoch']}: {how} "
                f"(it was {r['lr_before']:.3g} before).{loss_text}",
                remedy="Restore scheduler.state_dict() with the checkpoint (or create the scheduler with "
                       "last_epoch set to the epochs done), so that the schedule continues where it stopped.",
                evidence=evidence))
    if not findings:
        findings = [Finding(NAME, "info", f"{len(resumes)} resume(s); the optimizer state and the schedule "
                                          f"continued across each." if resumes else
                            "The run was never resumed: nothing to compare.")]
    lost = any(r["lost_groups"] for r in resumes)
    score = 1.0 if lost else 0.5 if any(r["restarted"] for r in resumes) else 0.0
    details = {
        "resumes": len(resumes),
        "state_lost_at": [r["epoch"] for r in resumes if r["lost_groups"]],
        "schedule_restarted_at": [r["epoch"] for r in resumes if r["restarted"]],
        "fingerprints": len(states),
    }
    return CheckResult.from_findings(NAME, findings, score=score, details=details)
