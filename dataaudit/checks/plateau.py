"""Loss plateau: has the training loss stopped improving, since when, and at what level?

Judged on the per-epoch mean of the recorded per-sample losses of complete
epochs (and on the validation split's, when one is tracked). The rules are
scale-free, so the same thresholds hold for a cross-entropy near ln(k) and for
a regression loss in the thousands:

- the curve is smoothed with a running median of 3 (one bad epoch, a spike or
  a NaN-heavy epoch, cannot move it) and then fitted with the best
  non-increasing curve (isotonic regression), whose last value is the level;
- the onset is the first epoch from which less than a tenth of the level
  remains to be gained for the rest of the run ("stops improving meaningfully"),
  moved to the knee: past an epoch followed by a cliff, and back over epochs
  that already fall ten times slower than the steepest descent (while less
  than a fifth of the level remains);
- a plateau needs that flat stretch to last at least a fifth of the run (and 3
  epochs), and a knee before it: the loss on the flat stretch falls at least
  ten times slower than in the steepest stretch before it. Without the knee the
  curve is a slow, steady descent ("converging"); a loss that never improved
  by a tenth of its level is flat from epoch 0;
- a loss near zero (train accuracy >= 99%, or without labels a level below 1%
  of the initial loss) is "converged": nothing holds it up;
- a loss that gave back more than a tenth of its progress (or rose a tenth
  above its best) is "diverging"; one that went non-finite is too.

The validation curve gets the same treatment; "overfitting" is a validation
loss that rose meaningfully from its best epoch while the training loss kept
falling.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from dataaudit.checks import val_noise
from dataaudit.checks.base import CheckResult, Finding, json_number
from dataaudit.checks.curves import (
    CONVERGED_ACCURACY,
    CONVERGED_LEVEL,
    MEANINGFUL,
    NONFINITE_EPOCH,
    epoch_losses,
    loss_rise,
    median3,
)
from dataaudit.run import Run

NAME = "plateau"

# Fewer epochs than this cannot tell a plateau from slow convergence: the onset,
# a flat stretch of 3 epochs and the steeper stretch before it need 5 points.
MIN_EPOCHS = 5
# The flat stretch must last a fifth of the run: shorter flat stretches at the end of
# a falling curve are common (between schedule steps, before a restart) and prove little.
MIN_TAIL_SHARE = 0.20
MIN_TAIL_EPOCHS = 3
# A knee: the flat stretch falls at least 10x slower than the steepest earlier stretch.
KNEE_RATIO = 10.0


def check(run: Run) -> CheckResult:
    table = epoch_losses(run.train)
    if table.empty:
        return _skipped("no complete training epoch with recorded losses")
    val = run.split("val")
    val_table = epoch_losses(val) if val is not None else None
    if val_table is not None and val_table.empty:
        val_table = None
    result = _compute_plateau(
        table["epoch"].to_numpy(), table["loss"].to_numpy(),
        train_accuracy=table["accuracy"].to_numpy(), nonfinite_share=table["nonfinite"].to_numpy(),
        val_epochs=None if val_table is None else val_table["epoch"].to_numpy(),
        val_loss=None if val_table is None else val_table["loss"].to_numpy(),
        val_nonfinite_share=None if val_table is None else val_table["nonfinite"].to_numpy())
    if run.task == "regression":
        result = _regression_floor(result)
    # validation claims held to the noise of the validation set (see val_noise)
    return result if val_table is None else val_noise.gate_plateau(result, val)


def _regression_floor(result: CheckResult) -> CheckResult:
    """A regression has no accuracy to tell a loss resting at the targets' noise floor from a stuck one: its
    plateau is a note (info), and the attribution says whether anything found holds the loss up."""
    if result.details.get("state") != "plateau":
        return result
    findings = [dataclasses.replace(
        f, severity="info",
        summary=f.summary + " A regression's loss flattens at the noise of its targets: without an accuracy "
                            "this cannot be told from a stall, so the verdict rests on the other checks.")
        if f.severity == "warning" and "onset_epoch" in f.evidence else f   # the training curve's plateau
        for f in result.findings]
    return CheckResult.from_findings(NAME, findings, score=result.score, details=result.details,
                                     per_sample=result.per_sample)


def _skipped(reason: str) -> CheckResult:
    """A skipped result that still carries the keys the audit's top-level `plateau` reads."""
    details = {"detected": False, "onset_epoch": None, "state": "too_short", "level": None, "slope": None,
               "slope_stderr": None, "train_loss": [], "val_loss": None, "overfitting": False, "skipped": reason}
    return CheckResult(NAME, "skipped", 0.0, details, (Finding(NAME, "info", f"plateau check skipped: {reason}"),))


# ---------------------------------------------------------------- array level


def _isotonic_decreasing(y: np.ndarray) -> np.ndarray:
    """The least-squares non-increasing fit of y (n,) (pool adjacent violators); shape (n,)."""
    values: list[float] = []
    weights: list[int] = []
    for v in y.astype(np.float64):
        values.append(float(v))
        weights.append(1)
        while len(values) > 1 and values[-2] < values[-1]:
            w = weights[-2] + weights[-1]
            values[-2] = (values[-2] * weights[-2] + values[-1] * weights[-1]) / w
            weights[-2] = w
            values.pop()
            weights.pop()
    return np.repeat(values, weights)


def _ols_slope(x: np.ndarray, y: np.ndarray) -> tuple[float, float | None]:
    """OLS slope of y (m,) on x (m,) and its standard error (None with fewer than 3 points)."""
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    if len(x) < 2:
        return 0.0, None
    xc = x - x.mean()
    sxx = float(xc @ xc)
    if sxx == 0:
        return 0.0, None
    slope = float(xc @ (y - y.mean()) / sxx)
    if len(x) < 3:
        return slope, None
    resid = y - y.mean() - slope * xc
    return slope, float(math.sqrt(float(resid @ resid) / (len(x) - 2) / sxx))


def _steepest(fit: np.ndarray, x: np.ndarray, end: int, w: int) -> float:
    """The steepest fall per epoch of the monotone fit (m,) over windows of w epochs within positions [0, end]
    (shorter windows when end < w); x (m,) are the epochs."""
    w = max(1, min(w, end))
    return float(np.max((fit[: end - w + 1] - fit[w: end + 1]) / (x[w: end + 1] - x[: end - w + 1])))


def _compute_curve(epochs: np.ndarray, loss: np.ndarray, *, nonfinite_share: np.ndarray | None = None,
                   accuracy: np.ndarray | None = None) -> dict[str, Any]:
    """The state of one loss curve.

    Parameters
    ----------
    epochs : int array of shape (n,), ascending.
    loss : float array of shape (n,), per-epoch mean losses; NaN where an epoch had no finite loss.
    nonfinite_share : float array of shape (n,), share of non-finite per-sample losses per epoch.
    accuracy : float array of shape (n,), train accuracy per epoch (NaN or None when unknown).

    Returns
    -------
    dict with state ("plateau", "converging", "converged", "diverging", "too_short"), onset_epoch,
    level (median loss on the plateau, else the smoothed last loss), final_loss, slope, slope_stderr
    (per epoch, OLS over the plateau or the last fifth of the run), reason; on a plateau also
    improvement_after_onset (as a share of the level), progress_share_after_onset, tail_epochs.
    """
    out: dict[str, Any] = {"state": "too_short", "onset_epoch": None, "level": None, "slope": None,
                           "slope_stderr": None, "improvement_after_onset": None,
                           "progress_share_after_onset": None, "reason": None}
    n = len(loss)
    bad = ~np.isfinite(loss)
    if nonfinite_share is not None:
        bad |= nonfinite_share > NONFINITE_EPOCH
    good = ~bad
    if n and bad[-1] and good.any():
        # The run ends on non-finite losses: it diverged (whatever the curve did before).
        first_bad = int(np.flatnonzero(good)[-1]) + 1
        out.update(state="diverging", onset_epoch=None, nonfinite_from_epoch=int(epochs[first_bad]),
                   reason="non-finite loss")
        return out
    if good.sum() < MIN_EPOCHS:
        if n and not good.any():
            out.update(state="diverging", nonfinite_from_epoch=int(epochs[0]), reason="non-finite loss")
        else:
            out["reason"] = f"{int(good.sum())} epochs with a finite loss; at least {MIN_EPOCHS} are needed"
        return out
    x = epochs[good].astype(np.float64)
    y = loss[good].astype(np.float64)
    m = len(y)
    smooth = median3(y)
    rise = loss_rise(smooth)
    if rise["rising"]:
        tail = slice(rise["best_pos"], m)
        slope, stderr = _ols_slope(x[tail], y[tail])
        out.update(state="diverging", level=float(smooth[-1]), slope=slope, slope_stderr=stderr,
                   best_epoch=int(x[rise["best_pos"]]), best_level=rise["best"], reason="loss rising")
        return out

    fit = _isotonic_decreasing(smooth)
    level = float(fit[-1])
    progress = float(fit[0] - level)
    # Distances to the level, measured against the level itself; a level of exactly 0 falls
    # back to the progress so that the tolerance never vanishes.
    scale = abs(level) if level != 0 else max(progress, 1e-12)
    remaining = fit - level
    onset = int(np.flatnonzero(remaining <= MEANINGFUL * scale)[0])
    # An epoch followed by a cliff is still part of the descent: 2.10 -> 1.93 -> 1.93 -> ... is flat from
    # the 1.93, though 2.10 is within a tenth. A cliff takes more than half of what remains, is 3x any
    # later one-epoch step (a smooth decay, each step a fraction of the one before, never qualifies) and
    # at least a quarter of the tolerance (2.5% of the level: smaller steps are epoch-to-epoch noise).
    steps = fit[:-1] - fit[1:]
    while (onset < m - 1 and steps[onset] > 0.5 * remaining[onset] and steps[onset] > 0.25 * MEANINGFUL * scale
           and steps[onset] >= 3 * steps[onset + 1:].max(initial=0.0)):
        onset += 1
    # Conversely, a slow drift on the plateau (0.44 -> 0.40 over 45 epochs after a cliff) puts the first
    # epoch within a tenth a few epochs after the knee. Epochs before it that fall as slowly as a plateau
    # must (a tenth of the steepest descent before them, see the knee below) belong to it, as long as less
    # than a fifth of the level remains there.
    w = max(1, round(0.1 * m))
    if onset > 0:
        slow = _steepest(fit, x, onset, w) / KNEE_RATIO
        per_epoch = steps / np.diff(x)
        while onset > 0 and remaining[onset - 1] <= 2 * MEANINGFUL * scale and per_epoch[onset - 1] <= slow:
            onset -= 1
    tail_len = m - onset
    min_tail = max(MIN_TAIL_EPOCHS, math.ceil(MIN_TAIL_SHARE * m))

    last_acc = None
    if accuracy is not None:
        acc = accuracy[good]
        if np.isfinite(acc[-1]):
            last_acc = float(acc[-1])
    converged = (last_acc >= CONVERGED_ACCURACY) if last_acc is not None else (
        fit[0] > 0 and level <= CONVERGED_LEVEL * fit[0])

    flat = slice(onset, m) if tail_len >= min_tail else slice(m - min_tail, m)
    slope, stderr = _ols_slope(x[flat], y[flat])
    out.update(level=float(np.median(y[flat])) if tail_len >= min_tail else float(smooth[-1]),
               final_loss=float(smooth[-1]), slope=slope, slope_stderr=stderr, train_accuracy=last_acc)
    after = {"improvement_after_onset": float(remaining[onset] / scale), "tail_epochs": int(tail_len),
             "progress_share_after_onset": float(remaining[onset] / progress) if progress > 0 else 0.0}

    # A knee: the plateau falls at least KNEE_RATIO times slower than the steepest descent before it.
    knee = None
    if onset > 0:
        early_rate = _steepest(fit, x, onset, w)
        tail_rate = max(-slope, 0.0)
        knee = early_rate / tail_rate if tail_rate > 0 else math.inf
        out["knee_ratio"] = None if math.isinf(knee) else float(knee)

    if converged:
        out.update(state="converged", reason="train accuracy >= 99%" if last_acc is not None else "loss near zero")
    elif tail_len >= min_tail and (onset == 0 or knee >= KNEE_RATIO):
        out.update(state="plateau", onset_epoch=int(x[onset]), **after,
                   reason="flat from the start" if onset == 0 else "flat after a knee")
    else:
        out.update(state="converging", reason="still falling steadily" if tail_len >= min_tail
                   else "flat stretch too short")
    return out


def _compute_overfitting(train_epochs: np.ndarray, train_loss: np.ndarray, val_epochs: np.ndarray,
                         val_loss: np.ndarray) -> dict[str, Any]:
    """Whether the validation loss (v,) rose meaningfully from its best epoch while the training loss (n,)
    kept falling after it. Returns overfitting, from_epoch (the best validation epoch), val_best, val_rise.
    """
    out: dict[str, Any] = {"overfitting": False, "from_epoch": None, "val_best": None, "val_rise": None}
    vg = np.isfinite(val_loss)
    tg = np.isfinite(train_loss)
    if vg.sum() < MIN_EPOCHS or tg.sum() < 2:
        return out
    ve, vy = val_epochs[vg], median3(val_loss[vg])
    # Against the best validation level alone: a held-out loss 10% above its best is overfitting
    # whatever the training made of it.
    rise = loss_rise(vy, of_progress=False)
    best_epoch = int(ve[rise["best_pos"]])
    te, ty = train_epochs[tg], median3(train_loss[tg])
    at_best = ty[te <= best_epoch]
    # The training loss must have fallen since the best validation epoch: a validation loss that
    # rises with the training loss is divergence, not overfitting.
    train_fell = len(at_best) > 0 and ty[-1] < at_best[-1]
    # At least two epochs of rise: one bad validation epoch is noise.
    long_enough = len(vy) - 1 - rise["best_pos"] >= 2
    out.update(overfitting=bool(rise["rising"] and train_fell and long_enough), from_epoch=best_epoch,
               val_best=rise["best"], val_rise=rise["rise"])
    return out


def _compute_plateau(epochs: np.ndarray, train_loss: np.ndarray, *, train_accuracy: np.ndarray | None = None,
                     nonfinite_share: np.ndarray | None = None, val_epochs: np.ndarray | None = None,
                     val_loss: np.ndarray | None = None,
                     val_nonfinite_share: np.ndarray | None = None) -> CheckResult:
    """The plateau result from per-epoch curves.

    Parameters
    ----------
    epochs : int array of shape (n,), the complete training epochs, ascending.
    train_loss : float array of shape (n,), mean training loss per epoch (NaN: no finite loss).
    train_accuracy : float array of shape (n,), optional.
    nonfinite_share : float array of shape (n,), optional share of non-finite losses per epoch.
    val_epochs, val_loss, val_nonfinite_share : arrays of shape (v,) for the validation split, optional.
    """
    curve = _compute_curve(epochs, train_loss, nonfinite_share=nonfinite_share, accuracy=train_accuracy)
    val_curve = over = None
    if val_loss is not None and val_epochs is not None:
        val_curve = _compute_curve(val_epochs, val_loss, nonfinite_share=val_nonfinite_share)
        over = _compute_overfitting(epochs, train_loss, val_epochs, val_loss)
    state = curve["state"]
    detected = state == "plateau"
    findings = [_finding(curve, epochs, train_loss)]
    if over is not None and over["overfitting"]:
        findings.append(Finding(
            NAME, "warning",
            f"Validation loss has risen {_pct(over['val_rise'], over['val_best'])} since epoch {over['from_epoch']} "
            f"(from {over['val_best']:.3g}) while the training loss kept falling: the model overfits.",
            remedy="Stop at the best validation epoch (early stopping), add regularisation (weight decay, dropout, "
                   "augmentation) or data; a training loss that keeps falling below a noisy-label floor "
                   "is the model memorising wrong labels.",
            evidence={"best_val_epoch": over["from_epoch"], "val_best": json_number(over["val_best"]),
                      "val_rise": json_number(over["val_rise"])}))
    if val_curve is not None and val_curve["state"] == "plateau" and not detected:
        findings.append(Finding(
            NAME, "info", f"Validation loss has been flat since epoch {val_curve['onset_epoch']} "
                          f"at {val_curve['level']:.3g}, while the training loss is {state}.",
            evidence={"val_onset_epoch": val_curve["onset_epoch"], "val_level": json_number(val_curve["level"])}))

    n = len(epochs)
    score = (n - int(np.searchsorted(epochs, curve["onset_epoch"]))) / n if detected else 0.0
    details = {
        "detected": detected,
        "onset_epoch": curve["onset_epoch"] if detected else None,
        "state": state,
        "level": json_number(curve["level"]),
        "final_loss": json_number(curve.get("final_loss")),
        "slope": json_number(curve["slope"]),
        "slope_stderr": json_number(curve["slope_stderr"]),
        "improvement_after_onset": json_number(curve["improvement_after_onset"]),
        "plateau_epochs": curve.get("tail_epochs"),
        "progress_share_after_onset": json_number(curve["progress_share_after_onset"]),
        "knee_ratio": json_number(curve.get("knee_ratio")),
        "reason": curve["reason"],
        "epochs": n,
        "train_loss": [json_number(v) for v in train_loss],
        "train_accuracy": json_number(curve.get("train_accuracy")),
        "val_loss": None if val_loss is None else [json_number(v) for v in val_loss],
        "val_state": None if val_curve is None else val_curve["state"],
        "val_onset_epoch": None if val_curve is None else val_curve["onset_epoch"],
        "overfitting": bool(over is not None and over["overfitting"]),
        "overfitting_from_epoch": over["from_epoch"] if over is not None and over["overfitting"] else None,
    }
    for key in ("nonfinite_from_epoch", "best_epoch", "best_level"):
        if key in curve:
            details[key] = json_number(curve[key]) if isinstance(curve[key], float) else curve[key]
    return CheckResult.from_findings(NAME, findings, score=score, details=details)


def _finding(curve: dict[str, Any], epochs: np.ndarray, loss: np.ndarray) -> Finding:
    state = curve["state"]
    slope = curve["slope"]
    se = curve["slope_stderr"]
    slope_text = "" if slope is None else f"slope {slope:+.2g}" + ("" if se is None else f" ± {se:.1g}") + " per epoch"
    keys = ("level", "slope", "slope_stderr", "improvement_after_onset", "progress_share_after_onset", "knee_ratio")
    evidence = {k: json_number(curve[k]) for k in keys if curve.get(k) is not None}
    if state == "plateau":
        onset = curve["onset_epoch"]
        first = loss[np.isfinite(loss)][0]
        if curve["reason"] == "flat from the start":
            summary = (f"Training loss has barely moved from the start: {curve['level']:.3g}, only "
                       f"{curve['improvement_after_onset']:.1%} lower after {curve['tail_epochs']} epochs "
                       f"({slope_text}).")
        else:
            summary = (f"Training loss has been flat since epoch {onset} at {curve['level']:.3g}: only "
                       f"{curve['improvement_after_onset']:.1%} lower over the {curve['tail_epochs']} epochs since "
                       f"({slope_text}); before that it fell from {first:.3g}.")
        return Finding(
            NAME, "warning", summary,
            remedy="See the other checks for the cause: label noise or a data fault sets a floor, a collapsed "
                   "learning rate, tight clipping or too little capacity stall the optimizer.",
            evidence={"onset_epoch": onset, **evidence})
    if state == "converging":
        return Finding(NAME, "info",
                       f"Training loss is still falling ({slope_text}, now {curve['level']:.3g}): "
                       f"slow convergence, not a plateau; training longer should lower it further.",
                       evidence=evidence)
    if state == "converged":
        acc = curve.get("train_accuracy")
        why = f"{acc:.1%} train accuracy" if acc is not None else "near zero"
        return Finding(NAME, "info", f"Training loss converged to {curve['level']:.3g} ({why}): "
                                     f"no plateau to explain.", evidence=evidence)
    if state == "diverging":
        if "nonfinite_from_epoch" in curve:
            summary = f"Training loss went non-finite (NaN/inf) from epoch {curve['nonfinite_from_epoch']} on."
        else:
            summary = (f"Training loss is rising: {curve['best_level']:.3g} at epoch {curve['best_epoch']}, "
                       f"{curve['level']:.3g} at epoch {int(epochs[np.isfinite(loss)][-1])}.")
        return Finding(NAME, "warning", summary,
                       remedy="Lower the learning rate or add warmup; see the optimizer check.", evidence=evidence)
    return Finding(NAME, "info", f"Only {int(np.isfinite(loss).sum())} complete epochs with a finite loss: too few to "
                                 f"tell a plateau from slow convergence (at least {MIN_EPOCHS} are needed).")


def _pct(rise: float, best: float) -> str:
    return f"{rise / abs(best):.0%}" if best else f"by {rise:.3g}"

