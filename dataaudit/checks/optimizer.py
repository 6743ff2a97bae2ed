"""Optimizer: is the optimisation side (learning rate, clipping, gradients, AMP) holding the loss up?

Reads the per-step telemetry of `Tracker.watch` (`run.steps`, `run.layers`)
and the per-sample losses. Each problem found is a named signal in
`details["signals"]` (empty when training looks healthy):

- lr_collapsed: the learning rate spent most of the run at <= 1% of its peak,
  or was cut >= 100x in one step with a tenth of the run still to go. Normal
  schedules do neither: cosine and linear decays reach 1% of the peak only in
  their last ~6%, a StepLR with gamma 0.1 never cuts more than 10x at once.
  Not when the model had already converged (>= 99% train accuracy) before
  the cut: then nothing is left for the learning rate to do;
- diverged: the loss ended non-finite, climbed back above where it started,
  or blew up to 10x its initial value and stayed there;
- lr_too_high: the loss rose by more than a tenth of the progress it had made
  (or of its best level), or blew up 10x and came back;
- update_ratio_tiny: the median ||delta w|| / ||w|| is below 1e-5;
- clipping_always: clipping cut the gradient on >= 90% of the measured steps;
- vanishing_gradients / exploding_gradients: the gradient norm fell 1000x while
  the loss did not halve / grew 100x, or went non-finite on a step taken;
- amp_steps_skipped: > 5% of the steps after the GradScaler's calibration were skipped;
- frozen_layers: parameters that never moved while the others did;
- nonfinite_loss: per-sample losses that were NaN or inf.

The score says how strongly the optimisation side is implicated (0: healthy).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from dataaudit.checks.base import CheckResult, Finding
from dataaudit.checks.curves import CONVERGED_ACCURACY, NONFINITE_EPOCH, epoch_losses, loss_rise, median3
from dataaudit.run import Run

NAME = "optimizer"

# lr_collapsed. "Orders of magnitude": 100x below the peak. Cosine/linear/exponential decays
# reach it only in their last 6-10% of steps, the classic step schedules (ResNet: /10 at 30
# and 60 of 90 epochs; StepLR(15, 0.1) over 50) in their last 33-40%: more than half of the
# run at <= 1% of the peak is no schedule's intent.
LR_COLLAPSE_FACTOR = 100.0
LR_COLLAPSE_SHARE = 0.5
# No standard scheduler cuts more than 10x in one step (StepLR/MultiStepLR/ReduceLROnPlateau
# default to gamma/factor 0.1); a >= 100x cut that stays for a tenth of the run is a bug or a slip.
LR_CUT_REMAINING = 0.1
# lr_too_high: a run of steps with a mean loss 10x the initial loss (see _compute_loss_spike).
LOSS_SPIKE = 10.0
# update_ratio_tiny. ||delta w|| / ||w|| ~ 1e-3 per step is the healthy rule of thumb (cs231n,
# Karpathy); two orders of magnitude below, 1e-5, the weights move < 0.1% in 100 steps.
UPDATE_RATIO_TINY = 1e-5
# clipping_always. Clipping is a safety net for rare spikes; binding on >= 90% of steps it is a
# cap below the typical gradient norm, i.e. a hidden cut of the learning rate.
CLIPPED_SHARE = 0.9
# exploding_gradients: a 100x growth of the gradient norm from the first to the last tenth of the run.
GRAD_GROWTH = 100.0
# vanishing_gradients: a 1000x fall while the loss did not even halve (a healthy decline of the
# gradient follows the loss down), or a norm below Adam's eps (1e-8), under which adaptive
# optimizers stop rescaling it and float32 weights of order 1 no longer register it.
GRAD_FALL = 1e-3
GRAD_TINY = 1e-8
# amp_steps_skipped. After calibrating, a GradScaler skips about 1 step per growth_interval
# (2000 by default), 0.05%: 5% is a scale that cannot settle, i.e. persistent inf/NaN gradients.
SKIPPED_SHARE = 0.05
SKIPPED_MIN = 3
# A tenth of the run (at least this many steps) gives the "early" and "late" windows.
MIN_WINDOW = 3

_WEIGHT = {  # how strongly each signal alone implicates the optimisation side
    "lr_collapsed": 0.9, "diverged": 0.9, "clipping_always": 0.8, "update_ratio_tiny": 0.8,
    "lr_too_high": 0.7, "exploding_gradients": 0.7, "vanishing_gradients": 0.6, "nonfinite_loss": 0.6,
    "amp_steps_skipped": 0.5, "frozen_layers": 0.5,
}


def check(run: Run) -> CheckResult:
    steps = run.steps
    if not len(steps):
        return _skipped("the optimizer was not watched (call tracker.watch(optimizer, model=model))")
    table = epoch_losses(run.train)
    nonfinite, n_losses = _nonfinite_count(run)
    return _compute_optimizer(
        steps, run.layers, epoch_loss=table["loss"].to_numpy(), epoch_nonfinite=table["nonfinite"].to_numpy(),
        epochs=table["epoch"].to_numpy(), epoch_accuracy=table["accuracy"].to_numpy(),
        nonfinite_losses=nonfinite, n_losses=n_losses)


def _skipped(reason: str) -> CheckResult:
    """A skipped result that still carries `signals` (acceptance checks read it)."""
    return CheckResult(NAME, "skipped", 0.0, {"signals": [], "skipped": reason},
                       (Finding(NAME, "info", f"optimizer check skipped: {reason}"),))


def _nonfinite_count(run: Run) -> tuple[int, int]:
    """Non-finite per-sample training losses and losses recorded in all: the larger of what the records
    hold and what the tracker counted per epoch (the manifest also counts epochs whose records were lost)."""
    loss = run.records["loss"].to_numpy(dtype=np.float64)
    in_records = int((~np.isfinite(loss)).sum())
    entries = [e for e in run.meta.get("epochs", []) if e.get("split") == "train"]
    counted = sum(int(e.get("nonfinite_losses") or 0) for e in entries)
    recorded = sum(int(e.get("recorded") or 0) for e in entries)
    return max(in_records, counted), max(len(loss), recorded)


# ---------------------------------------------------------------- array level


def _window(n: int) -> int:
    return max(MIN_WINDOW, n // 10)


def _compute_lr(lr: np.ndarray, epochs: np.ndarray) -> dict[str, Any]:
    """Whether one param group's learning rate collapsed.

    lr : float array of shape (s,), the lr at each step; epochs : int array of shape (s,).
    Returns collapsed, and the evidence: peak, final, low_share (share of the run's steps at <= 1% of the
    peak after it), low_from_epoch, cut (the largest single-step cut >= 100x that held, with its epoch).
    """
    ok = np.isfinite(lr)
    lr, epochs = lr[ok], epochs[ok]
    out: dict[str, Any] = {"collapsed": False, "peak": None, "final": None, "low_share": 0.0,
                           "low_from_epoch": None, "cut": None, "cut_epoch": None}
    n = len(lr)
    if n == 0 or not (lr.max() > 0):
        return out
    peak_pos = int(np.argmax(lr))   # the first step at the peak: a warmup before it is no collapse
    peak = float(lr[peak_pos])
    low = np.zeros(n, bool)
    # The relative slack keeps 0.05 * 0.1 * 0.1 (= 5.000000000000001e-4) at "1% of the peak".
    low[peak_pos:] = lr[peak_pos:] <= peak / LR_COLLAPSE_FACTOR * (1 + 1e-9)
    out.update(peak=peak, final=float(lr[-1]), low_share=float(low.mean()))
    if low.any():
        out["low_from_epoch"] = int(epochs[np.argmax(low)])
    # Single-step cuts of >= 100x that held (<= 1/100 of the lr before the cut) for a tenth of the run.
    before = lr[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        cut_at = np.flatnonzero((before > 0) & (lr[1:] <= before / LR_COLLAPSE_FACTOR * (1 + 1e-9))) + 1
    best = None
    for i in cut_at:
        held = int((lr[i:] <= lr[i - 1] / LR_COLLAPSE_FACTOR * (1 + 1e-9)).sum())
        if held >= LR_CUT_REMAINING * n:
            factor = math.inf if lr[i] == 0 else float(lr[i - 1] / lr[i])
            if best is None or factor > best[0]:
                best = (factor, int(epochs[i]))
    if best is not None:
        out.update(cut=None if math.isinf(best[0]) else best[0], cut_epoch=best[1])
    out["collapsed"] = bool(out["low_share"] > LR_COLLAPSE_SHARE or best is not None)
    return out


def _compute_loss_trend(curve: np.ndarray, nonfinite_share: np.ndarray | None = None, *,
                        labels: np.ndarray | None = None) -> dict[str, Any]:
    """Whether the loss diverged or rose, from a per-epoch (or per-window) mean loss curve (e,);
    nonfinite_share (e,) marks mostly non-finite epochs, labels (e,) names the epochs (best_at).

    diverged: the curve ends non-finite, or climbed back above where it started;
    rising (lr_too_high): it gave back more than a tenth of its progress (see plateau's rule).
    """
    out: dict[str, Any] = {"diverged": False, "rising": False, "nonfinite_end": False}
    bad = ~np.isfinite(curve)
    if nonfinite_share is not None:
        bad |= nonfinite_share > NONFINITE_EPOCH
    if len(curve) and bad[-1]:
        out.update(diverged=True, nonfinite_end=True)
        if (~bad).any():
            out["last_finite"] = int(np.flatnonzero(~bad)[-1])
        return out
    y = curve[~bad]
    if len(y) < 5:   # a rise needs a best point with epochs on either side, after smoothing
        return out
    smooth = median3(y)
    rise = loss_rise(smooth)
    out.update(first=float(smooth[0]), best=rise["best"], end=float(smooth[-1]),
               best_at=None if labels is None else int(labels[~bad][rise["best_pos"]]))
    if rise["rising"]:
        # Back above the start after having improved, or rising from the start by more than the level:
        # the run lost everything it learned.
        if smooth[-1] > smooth[0] and (rise["best"] < smooth[0] or rise["rise"] > abs(rise["best"])):
            out["diverged"] = True
        else:
            out["rising"] = True
    return out


def _compute_loss_spike(step_loss: np.ndarray) -> dict[str, Any]:
    """Whether the loss blew up: a run of steps whose mean loss is >= 10x the loss of the first steps
    (spike), and whether the last run of steps is still there (stayed).
    step_loss : float array of shape (s,), the batch mean losses of the steps taken.

    A data fault raises the loss floor; it does not multiply the loss tenfold for a run of steps: that is
    an optimizer step too large for the curvature (a too-high learning rate, no warmup). Runs of at least
    5 steps (or a fiftieth of the run), so that one bad batch does not count.
    """
    y = step_loss[np.isfinite(step_loss)]
    out: dict[str, Any] = {"spike": False, "stayed": False, "start": None, "peak": None, "end": None}
    if len(y) < 2 * MIN_WINDOW:
        return out
    start = float(np.min(y[:MIN_WINDOW]))   # the lowest of the first steps: a blow-up can begin at step 2
    size = max(5, len(y) // 50)
    means = np.array([c.mean() for c in np.array_split(y, max(1, len(y) // size))])
    peak_pos = int(np.argmax(means))
    spike = bool(start > 0 and means[peak_pos] >= LOSS_SPIKE * start)
    out.update(start=start, peak=float(means[peak_pos]), end=float(means[-1]), spike=spike,
               stayed=bool(spike and means[-1] >= LOSS_SPIKE * start))
    return out


def _compute_update_ratio(ratio: np.ndarray) -> dict[str, Any]:
    """Median update-to-weight ratio over the measured steps (ratio: (m,), NaN where not measured)."""
    r = ratio[np.isfinite(ratio)]
    if len(r) < MIN_WINDOW:
        return {"tiny": False, "median": None, "measured": int(len(r))}
    median = float(np.median(r))
    return {"tiny": median < UPDATE_RATIO_TINY, "median": median, "measured": int(len(r))}


def _compute_clipping(clipped: np.ndarray, norm: np.ndarray, raw: np.ndarray,
                      skipped: np.ndarray, with_norm: np.ndarray | None = None) -> dict[str, Any]:
    """Share of steps whose gradient clipping cut, on the measured steps (exact) when there are enough.

    clipped, skipped : bool arrays of shape (s,); norm, raw : gradient norms after / before clipping (s,);
    with_norm : bool (s,), the steps whose norm was measured (default: all), the only ones judged otherwise.
    """
    measured = np.isfinite(raw) & ~skipped
    pool = measured if measured.sum() >= MIN_WINDOW else ~skipped & (True if with_norm is None else with_norm)
    out: dict[str, Any] = {"always": False, "share": None, "threshold": None, "typical_raw": None,
                           "scaled_down": None}
    if pool.sum() < MIN_WINDOW:
        return out
    share = float(clipped[pool].mean())
    out.update(always=share >= CLIPPED_SHARE, share=share)
    cut = clipped & measured & np.isfinite(norm) & (norm > 0)
    if cut.any():
        out.update(threshold=float(np.median(norm[cut])), typical_raw=float(np.median(raw[cut])),
                   scaled_down=float(np.median(raw[cut] / norm[cut])))
    return out


def _compute_gradients(norm: np.ndarray, raw: np.ndarray, loss: np.ndarray, skipped: np.ndarray,
                       measured: np.ndarray | None = None) -> dict[str, Any]:
    """Vanishing or exploding gradients from the gradient norms of the steps taken.

    norm, raw, loss : float arrays of shape (s,) (raw: before clipping, NaN where not measured;
    loss: the batch mean loss); skipped : bool (s,); measured : bool (s,), the steps whose norm was measured
    (default: all). Early and late are the first and last tenth.
    """
    loss_taken = ~skipped
    taken = loss_taken if measured is None else loss_taken & measured  # steps taken whose norm is known
    out: dict[str, Any] = {"vanishing": False, "exploding": False, "nonfinite_steps": 0,
                           "early": None, "late": None, "median": None}
    # A step taken with a non-finite gradient wrote NaN/inf into the weights (a skipped one did not).
    # All NaN: no gradient telemetry at all (no parameter had a .grad), not a non-finite gradient.
    if not np.isnan(norm[taken]).all():
        out["nonfinite_steps"] = int((taken & ~np.isfinite(norm)).sum())
    use_raw = np.isfinite(raw) & taken
    g = raw[use_raw] if use_raw.sum() >= 2 * MIN_WINDOW else norm[taken & np.isfinite(norm)]
    if len(g) < 2 * MIN_WINDOW:
        out["exploding"] = out["nonfinite_steps"] > 0
        return out
    k = _window(len(g))
    early, late = float(np.median(g[:k])), float(np.median(g[-k:]))
    out.update(early=early, late=late, median=float(np.median(g)))
    lf = loss[loss_taken & np.isfinite(loss)]
    loss_stuck = None
    if len(lf) >= 2 * MIN_WINDOW:
        kl = _window(len(lf))
        first, last = float(np.median(lf[:kl])), float(np.median(lf[-kl:]))
        loss_stuck = last >= 0.5 * first
        out.update(loss_early=first, loss_late=last)
    fell = early > 0 and late <= GRAD_FALL * early
    tiny = out["median"] < GRAD_TINY
    out["vanishing"] = bool(loss_stuck and (fell or tiny))
    out["exploding"] = bool(out["nonfinite_steps"] > 0 or (early > 0 and late >= GRAD_GROWTH * early))
    return out


def _compute_skipped(skipped: np.ndarray) -> dict[str, Any]:
    """Share of AMP-skipped attempts (skipped: bool (s,)) after the GradScaler's calibration, i.e. after
    the leading run of skips while the scale comes down from its initial 2**16."""
    n = len(skipped)
    calibration = int(np.argmax(~skipped)) if (~skipped).any() else n
    rest = skipped[calibration:]
    count = int(rest.sum())
    share = float(rest.mean()) if len(rest) else (1.0 if n else 0.0)
    return {"many": bool((count >= SKIPPED_MIN and share > SKIPPED_SHARE) or (n >= SKIPPED_MIN and calibration == n)),
            "share": share, "skipped": int(skipped.sum()), "calibration": calibration}


def _compute_frozen(layers: pd.DataFrame) -> dict[str, Any]:
    """Parameters whose update norm was exactly 0 on every measured step (at least 2) while others moved.

    layers : one row per (measured step, parameter): param, update_norm, ...
    """
    out: dict[str, Any] = {"frozen": [], "params": 0}
    if not len(layers):
        return out
    table = layers[["param", "update_norm"]].copy()
    table["update_norm"] = table["update_norm"].astype(np.float64)
    grouped = table.groupby("param", sort=True)["update_norm"]
    stats = pd.DataFrame({"n": grouped.count(), "max": grouped.max(), "size": grouped.size()})
    stats = stats[stats["n"] == stats["size"]]      # NaN norms (NaN weights): unknown, not frozen
    out["params"] = int(len(stats))
    moved = (stats["max"] > 0).any()
    frozen = stats.index[(stats["max"] == 0) & (stats["n"] >= 2)].tolist()
    if moved:
        out["frozen"] = [str(p) for p in frozen]
    return out


def _converged_before(epoch: int | None, epochs: np.ndarray | None, accuracy: np.ndarray | None) -> bool:
    """Whether the last complete epoch before `epoch` had already fitted >= 99% of the training samples."""
    if epoch is None or epochs is None or accuracy is None:
        return False
    before = np.flatnonzero(epochs < epoch)
    return bool(len(before) and np.isfinite(accuracy[before[-1]]) and accuracy[before[-1]] >= CONVERGED_ACCURACY)


def _step_curve(steps: pd.DataFrame) -> np.ndarray:
    """The batch mean losses of the steps taken, averaged in up to 20 consecutive windows: shape (w,)."""
    loss = steps.loc[~steps["skipped"].to_numpy(bool), "loss"].to_numpy(np.float64)
    if len(loss) < 5:
        return loss
    return np.array([np.nanmean(c) if np.isfinite(c).any() else np.nan
                     for c in np.array_split(loss, min(20, len(loss) // 5))])


def _compute_optimizer(steps: pd.DataFrame, layers: pd.DataFrame, *, epoch_loss: np.ndarray | None = None,
                       epoch_nonfinite: np.ndarray | None = None, epochs: np.ndarray | None = None,
                       epoch_accuracy: np.ndarray | None = None, nonfinite_losses: int = 0,
                       n_losses: int = 0) -> CheckResult:
    """The optimizer result.

    Parameters
    ----------
    steps : one row per optimizer attempt (s rows): epoch, skipped, loss, grad_norm, grad_norm_raw,
        update_ratio, lr (lr_1...), clipped.
    layers : one row per (measured step, parameter): param, update_norm, ...
    epoch_loss, epoch_nonfinite, epoch_accuracy : float arrays of shape (e,): per complete epoch the mean
        finite training loss, the share of non-finite losses and the train accuracy; epochs (e,) labels them.
    nonfinite_losses, n_losses : non-finite per-sample training losses, and losses recorded in all.
    """
    skipped = steps["skipped"].to_numpy(dtype=bool)
    step_epoch = steps["epoch"].to_numpy(dtype=np.int64)
    norm = steps["grad_norm"].to_numpy(dtype=np.float64)
    raw = steps["grad_norm_raw"].to_numpy(dtype=np.float64)
    # runs captured before the gradient norm could be sampled measured it on every step taken
    measured = (steps["grad_measured"].to_numpy(dtype=bool) if "grad_measured" in steps
                else np.ones(len(steps), dtype=bool))
    step_loss = steps["loss"].to_numpy(dtype=np.float64)
    signals: list[str] = []
    findings: list[Finding] = []
    strength: dict[str, float] = {}

    def fire(signal: str, severity: str, summary: str, remedy: str, evidence: dict, strength_: float = 1.0):
        signals.append(signal)
        strength[signal] = _WEIGHT[signal] * strength_
        findings.append(Finding(NAME, severity, summary, remedy=remedy, evidence=_clean(evidence)))

    # --- learning rate, per param group
    groups = sorted((c for c in steps.columns if c == "lr" or c.startswith("lr_")),
                    key=lambda c: 0 if c == "lr" else int(c.split("_")[1]))
    lrs = {c: _compute_lr(steps[c].to_numpy(dtype=np.float64), step_epoch) for c in groups}
    collapsed = {c: v for c, v in lrs.items() if v["collapsed"]
                 and not _converged_before(v["cut_epoch"] if v["cut_epoch"] is not None else v["low_from_epoch"],
                                           epochs, epoch_accuracy)}
    if collapsed:
        c, v = next(iter(collapsed.items()))
        which = "The learning rate" if len(groups) == 1 else f"The learning rate of param group {groups.index(c)}"
        if v["cut_epoch"] is not None:
            how = (f"was cut {_factor(v['cut'])} in one step at epoch {v['cut_epoch']}" +
                   (f" and stayed at <= 1% of its peak for {v['low_share']:.0%} of the run"
                    if v["low_share"] > 0 else ""))
        else:
            how = (f"fell to <= 1% of its peak ({v['peak']:.3g}) at epoch {v['low_from_epoch']} and stayed there "
                   f"for {v['low_share']:.0%} of the run")
        fire("lr_collapsed", "critical" if v["low_share"] > LR_COLLAPSE_SHARE else "warning",
             f"{which} {how} (now {v['final']:.3g}): the optimizer can barely move the weights.",
             "Restore the learning rate (or restart it: a warm restart) and check the scheduler: a milestone "
             "counted in steps instead of epochs, a ReduceLROnPlateau with a short patience, or a manual "
             "`g['lr'] *= ...` applied too often or with the wrong factor.",
             {"group": c, "peak": v["peak"], "final": v["final"], "low_share": v["low_share"],
              "low_from_epoch": v["low_from_epoch"], "cut_factor": v["cut"], "cut_epoch": v["cut_epoch"],
              "groups_collapsed": sorted(collapsed)})

    # --- loss trend: the per-epoch curve when there are enough complete epochs, else step windows
    if epoch_loss is not None and np.isfinite(epoch_loss).sum() >= 5:
        labels = epochs if epochs is not None else np.arange(len(epoch_loss))
        trend = _compute_loss_trend(epoch_loss, epoch_nonfinite, labels=labels)
        unit = "epoch"
    else:
        trend = _compute_loss_trend(_step_curve(steps))
        unit = "window"
        if epoch_loss is not None and len(epoch_loss):
            # A run too short for a trend still diverged when its last epoch is mostly non-finite.
            end = _compute_loss_trend(epoch_loss, epoch_nonfinite)
            if end["nonfinite_end"]:
                trend = end
    where = f"epoch {trend['best_at']}" if trend.get("best_at") is not None else "earlier"
    spike = _compute_loss_spike(step_loss[~skipped])
    if trend["diverged"] or spike["stayed"]:
        if trend["nonfinite_end"]:
            summary = "The training loss went non-finite (NaN/inf) and stayed there: training diverged."
        elif spike["stayed"]:
            summary = (f"The training loss blew up from {spike['start']:.3g} at the start to {spike['peak']:.3g} "
                       f"and is still at {spike['end']:.3g}: training diverged.")
        else:
            summary = (f"The training loss diverged: it rose from {trend['best']:.3g} ({where}) "
                       f"to {trend['end']:.3g}, above where it started ({trend['first']:.3g}).")
        fire("diverged", "critical", summary,
             "Lower the learning rate (2-10x) and add warmup; keep gradient clipping as a safety net; check the "
             "inputs and the loss for inf/NaN (log(0), division by zero, labels out of range).",
             {k: trend.get(k) for k in ("first", "best", "end", "nonfinite_end")} | {"unit": unit,
              "best_epoch": trend.get("best_at") if unit == "epoch" else None, "blew_up": bool(spike["stayed"]),
              "spike_start": spike["start"], "spike_peak": spike["peak"], "spike_end": spike["end"]})
    elif trend["rising"] or spike["spike"]:
        fire("lr_too_high", "warning",
             (f"The training loss rose from {trend['best']:.3g} ({where}) to {trend['end']:.3g}: "
              f"the optimizer is undoing its progress." if trend["rising"] else
              f"The training loss blew up to {spike['peak']:.3g} (averaged over a run of steps) from "
              f"{spike['start']:.3g} at the start: the steps are too large."),
             "Lower the learning rate or add warmup; with Adam, a lower beta2 (0.95) or a larger eps also steadies "
             "late-training instability.",
             {k: trend.get(k) for k in ("first", "best", "end")} | {"unit": unit, "spike_start": spike["start"],
                                                                    "spike_peak": spike["peak"],
                                                                    "best_epoch": trend.get("best_at")
                                                                    if unit == "epoch" and trend["rising"] else None})

    # --- update-to-weight ratio
    ratio = _compute_update_ratio(steps["update_ratio"].to_numpy(dtype=np.float64))
    if ratio["tiny"]:
        fire("update_ratio_tiny", "warning",
             f"The median update-to-weight ratio is {ratio['median']:.1e} per step over {ratio['measured']} measured "
             f"steps, far below the healthy ~1e-3: the weights barely change.",
             "Raise the learning rate (aim for an update/weight ratio near 1e-3), loosen gradient clipping, and "
             "check the learning-rate schedule.",
             {"median_update_ratio": ratio["median"], "measured_steps": ratio["measured"]},
             strength_=min(1.0, math.log10(UPDATE_RATIO_TINY / max(ratio["median"], 1e-30)) / 2 + 0.5))

    # --- clipping
    clip = _compute_clipping(steps["clipped"].to_numpy(dtype=bool), norm, raw, skipped, measured)
    if clip["always"]:
        scaled = "" if clip["scaled_down"] is None else (
            f": a threshold of {clip['threshold']:.3g} against a typical norm of {clip['typical_raw']:.3g} "
            f"scales every gradient down {_factor(clip['scaled_down'])}")
        fire("clipping_always", "critical" if (clip["scaled_down"] or 1) >= 10 else "warning",
             f"Gradient clipping cut the gradient on {clip['share']:.0%} of the steps{scaled}.",
             "Raise max_norm to about the typical gradient norm (or above), or remove clipping: it should only "
             "trim rare spikes, not every step.",
             {"clipped_share": clip["share"], "threshold": clip["threshold"], "typical_raw_norm": clip["typical_raw"],
              "scaled_down": clip["scaled_down"]})

    # --- gradients
    grads = _compute_gradients(norm, raw, step_loss, skipped, measured)
    if grads["vanishing"]:
        fire("vanishing_gradients", "warning",
             f"The gradient norm fell from {grads['early']:.2g} to {grads['late']:.2g} while the loss stayed at "
             f"{grads.get('loss_late', float('nan')):.3g}: the gradients vanish before the model has learned.",
             "Check saturating activations (sigmoid/tanh), dead ReLUs, the initialisation, and add normalisation "
             "layers or residual connections.",
             {"early_grad_norm": grads["early"], "late_grad_norm": grads["late"], "median_grad_norm": grads["median"]})
    if grads["exploding"]:
        what = (f"{grads['nonfinite_steps']} steps were taken with a non-finite gradient"
                if grads["nonfinite_steps"] else
                f"the gradient norm grew from {grads['early']:.2g} to {grads['late']:.2g}")
        fire("exploding_gradients", "critical" if grads["nonfinite_steps"] else "warning",
             f"Exploding gradients: {what}.",
             "Lower the learning rate, add warmup and gradient clipping at about the typical norm; check "
             "normalisation layers and the loss for inf/NaN.",
             {"early_grad_norm": grads["early"], "late_grad_norm": grads["late"],
              "nonfinite_steps": grads["nonfinite_steps"]})

    # --- AMP
    amp = _compute_skipped(skipped)
    if amp["many"]:
        fire("amp_steps_skipped", "warning",
             f"The GradScaler skipped {amp['skipped']} of {len(skipped)} steps ({amp['share']:.1%} after its "
             f"{amp['calibration']} calibration step(s)): the gradients keep overflowing to inf/NaN.",
             "Use bf16 instead of fp16, keep the loss and softmax in float32, lower the learning rate, or look "
             "for inf/NaN in the inputs.",
             {"skipped": amp["skipped"], "attempts": len(skipped), "share_after_calibration": amp["share"],
              "calibration_steps": amp["calibration"]},
             strength_=min(1.0, amp["share"] / 0.2 + 0.25))

    # --- frozen parameters
    frozen = _compute_frozen(layers)
    if frozen["frozen"]:
        names = frozen["frozen"]
        fire("frozen_layers", "warning",
             f"{len(names)} of {frozen['params']} parameters never changed on any measured step while the others "
             f"did: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}.",
             "Check requires_grad on these parameters, that the optimizer's param groups include them with a "
             "non-zero learning rate, and that they are used in forward (unused parameters get no gradient).",
             {"frozen_params": names, "params": frozen["params"]},
             strength_=min(1.0, 0.5 + len(names) / max(frozen["params"], 1)))

    # --- non-finite losses
    if nonfinite_losses > 0:
        share = nonfinite_losses / max(n_losses, 1)
        fire("nonfinite_loss", "critical" if share > 0.01 else "warning",
             f"{nonfinite_losses} per-sample training losses ({share:.2%}) were NaN or inf.",
             "Find the samples (NaN/inf inputs, labels out of range, log(0)); compute the loss from logits "
             "(cross_entropy, log_softmax) and clamp probabilities; lower the learning rate if the loss blew up.",
             {"nonfinite_losses": nonfinite_losses, "losses": n_losses, "share": share},
             strength_=min(1.0, 0.5 + share * 10))

    score = 1.0 - math.prod(1.0 - s for s in strength.values())
    details = {
        "signals": signals,
        "steps": int((~skipped).sum()),
        "attempts": len(skipped),
        "lr_peak": lrs[groups[0]]["peak"] if groups else None,
        "lr_final": lrs[groups[0]]["final"] if groups else None,
        "lr_low_share": lrs[groups[0]]["low_share"] if groups else None,
        "median_update_ratio": ratio["median"],
        "clipped_share": clip["share"],
        "grad_norm_early": grads["early"],
        "grad_norm_late": grads["late"],
        "skipped_share": amp["share"],
        "frozen_params": frozen["frozen"],
        "nonfinite_losses": int(nonfinite_losses),
    }
    return CheckResult.from_findings(NAME, findings, score=score, details=_clean(details))


def _factor(f: float | None) -> str:
    return "to zero" if f is None else f"{f:,.0f}x" if f >= 10 else f"{f:.1f}x"


def _clean(obj: Any) -> Any:
    """JSON-able copies: numpy scalars to Python, NaN/inf to None, floats to 4 significant digits."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        v = float(obj)
        return float(f"{v:.4g}") if math.isfinite(v) else None
    return obj
