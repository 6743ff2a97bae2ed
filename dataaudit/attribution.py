"""What holds the training loss up: the data, the optimisation side, both, or nothing.

The data share is defined by a counterfactual (``zoo/counterfactual.py``): train the
run as it was (bb), with the data fixed (fb), with the optimisation side fixed (bf)
and with both fixed (ff); the loss that fixing removes, L_bb - L_ff, is split between
the two sides by Shapley value,

    phi_data = ((L_bb - L_fb) + (L_bf - L_ff)) / 2,   share = phi_data / (L_bb - L_ff),

and is 0 when fixing removes less than 5% of the first epoch's loss. The audit
cannot train those runs, so it estimates the three missing levels from the run's own
records (method, also in the README and the report):

1. Level. L is the mean per-sample training loss over the last third of the complete
   epochs; eps is 5% of the first epoch's loss. A run that converged (plateau check),
   or whose L is below eps, has nothing removable: share 0, verdict "none", whatever
   its data findings say (they stay in the findings).
2. What fixing the data removes, per fault, over the same epochs:
   - label noise (labels check at warning or above): what the flagged samples add
     above the rest, f (L_flagged - L_rest), plus what the noise costs the clean rest
     (an ideal model gives their label only 1 - f: a loss of -ln(1 - f) each, at most
     L_rest);
   - class imbalance: the loss the named classes hold above the other classes,
     weighted by their share of the samples (often ~0: the share then stays 0 while
     the finding stays);
   - drift: the mean rise of the epoch loss after the first drift epoch above the
     epochs just before it (~0 once the model recovered);
   - coverage: nothing; samples never drawn carry no training loss.
   This is L_bb - L_fb. The residual R = L_fb is the clean remainder's own misfit.
3. Whether the optimisation side holds anything: an optimizer signal fires, or R and
   the loss of the unflagged samples the model still mispredicts both exceed eps (a
   clean remainder the model does not fit; label noise lowers confidence on clean
   samples, it does not make the model mispredict them). Samples without a class label
   (regression, mixed soft targets) are never "mispredicted": there only a signal
   implicates the optimisation side, and a clean regression resting at its noise floor
   has nothing removable. Corrupted regression targets remove what the flagged samples
   add, without the -ln(1 - f) floor of wrong class labels. Then L_ff = 0 and the levels
   are taken as additive (what fixing the data removes from this run it would remove
   under a healthy optimiser too: L_bf - L_ff = L_bb - L_fb), so phi_data = L_bb - L_fb
   and the share is (L_bb - L_fb) / L. The run cannot show how a healthy optimiser
   would have dealt with the data (memorised the wrong labels, say), so no interaction
   is guessed. When the optimisation side holds nothing, fixing it changes nothing:
   share 1 when the data parts remove at least eps, else 0.
4. Unscaled features and a changed pipeline (feature-scale or drift check at warning
   or above) slow the whole fit and have no per-sample loss beyond the rise: without an
   optimizer signal the remainder's misfit R is theirs; with one, both sides slow the
   same fit and neither can be told apart from the run, so R is split evenly (the
   Shapley value under that symmetry), and the interval spans all of R.
5. Interval: 90% bootstrap over samples (plus the even split's full range).
6. Verdict: "data" when the share is at least 0.6 and the optimisation side holds
   nothing; "optimizer" when the share is at most 0.3 and it holds something;
   "none" when nothing is removable or nothing was found to remove it; else "mixed".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dataaudit.checks import flagging
from dataaudit.checks.base import CheckResult
from dataaudit.checks.curves import epoch_losses
from dataaudit.run import Run

# Fixing removes "nothing" below this share of the first epoch's loss (the counterfactual's own threshold).
_REMOVABLE = 0.05
# Findings at these severities are faults to estimate; info-level findings are notes.
_FAULT = ("warning", "critical")
# Epochs before the first drift epoch that give the level it rose from.
_PRE_DRIFT_EPOCHS = 3
_BOOTSTRAP_DRAWS = 200
_BOOTSTRAP_SAMPLES = 20000

METHOD = ("Shapley split of the loss that fixing would remove (L = mean training loss over the last third of "
          "the epochs), from levels estimated on the run itself and taken as additive: fixing the data removes "
          "what the flagged samples add above the rest plus -ln(1 - f) on the clean rest, the loss the named "
          "minority classes hold above the others weighted by their share, and the loss rise after the first "
          "drift epoch; coverage faults remove no training loss. The rest, R, is the misfit of the clean "
          "remainder: the optimisation side holds it when a signal fires or when the model still mispredicts "
          "unflagged samples; unscaled features or a changed pipeline hold it when found without a signal, and "
          "share it evenly with one. Share 0 and verdict none when the run converged or less than 5% of the loss "
          "of the first epoch is removable.")


@dataclass(frozen=True)
class Attribution:
    verdict: str
    data_share: float
    interval: tuple[float, float]
    details: dict[str, Any]


@dataclass(frozen=True)
class _Samples:
    """Per sample of the share's epochs: loss (n,) its mean loss there, misfit (n,) its mean loss on the
    epochs it was mispredicted (counted over all of them), label (n,) and flagged (n,) by the labels check."""

    loss: np.ndarray
    misfit: np.ndarray
    label: np.ndarray
    flagged: np.ndarray

    def take(self, rows: np.ndarray) -> _Samples:
        return _Samples(*(getattr(self, f)[rows] for f in self.__dataclass_fields__))


def attribute(run: Run, results: dict[str, CheckResult], *, seed: int = 0) -> Attribution:
    """The verdict and the data's share of the plateau, from a run and its check results."""
    epochs = run.train.with_records(run.train.complete_epochs or run.train.epochs)  # beyond the row budget: held
    if not epochs or run.records.empty:
        return Attribution("none", 0.0, (0.0, 0.0), {"method": "no recorded epoch to attribute"})
    window = [e for e in epochs if e >= epochs[int(len(epochs) * 2 / 3)]]
    samples, first = _samples(run, results, window, epochs[0])
    eps = _REMOVABLE * max(first, 0.0)
    state = (results["plateau"].details.get("state") if "plateau" in results else None)
    signals = list(results["optimizer"].details.get("signals", [])) if "optimizer" in results else []
    faults = {name: results[name].status for name in ("class_imbalance", "drift", "coverage", "feature_scale")
              if name in results and results[name].status in _FAULT}
    flagged = flagging(results)   # noisy labels, or noisy targets on a regression run
    if flagged is not None and flagged.status in _FAULT:
        faults = {"labels": flagged.status, **faults}
    minority = list(results["class_imbalance"].details.get("classes", [])) if "class_imbalance" in faults else []
    drift = _drift_rise(run, window, results["drift"].details.get("first_drift_epoch")) if "drift" in faults else 0.0
    use_labels = "labels" in faults
    # unscaled features and a changed pipeline slow the whole fit and have no per-sample loss of their own
    slows = "feature_scale" in faults or "drift" in faults

    def estimate(s: _Samples) -> dict[str, float]:
        return _estimate(s, eps=eps, drift=drift, minority=minority, use_labels=use_labels, slows=slows,
                         signals=bool(signals))

    parts = estimate(samples)
    level = parts["level"]
    details: dict[str, Any] = {
        "method": METHOD,
        "plateau_epochs": [int(window[0]), int(window[-1])],
        "plateau_loss": _r(level),
        "first_epoch_loss": _r(first),
        "removable_threshold": _r(eps),
        **{k: _r(v) for k, v in parts.items() if k not in ("level", "share")},
        "label_share": _r(parts["label_loss"] / level) if level > 0 else 0.0,
        "flagged_samples": int(samples.flagged.sum()) if use_labels else 0,
        "data_evidence": {k: v for k, v in faults.items() if k != "labels"},
        "optimizer_signals": signals,
    }
    if state == "converged" or level < eps:
        details.update(optimizer_implicated=False, interval=[0.0, 0.0],
                       reason="converged" if state == "converged" else "less than 5% of the first epoch's loss "
                                                                       "is removable")
        details["formula"] = [f"L = {level:.4g}, eps = 5% of the first epoch's loss = {eps:.4g}",
                              "converged (plateau check): nothing removable" if state == "converged" else
                              "L < eps: nothing removable", "data share = 0"]
        return Attribution("none", 0.0, (0.0, 0.0), details)
    implicated = bool(parts["optimizer_implicated"])
    share = parts["share"]
    lo, hi = _interval(samples, estimate, share, seed)
    if slows and signals:  # the even split is a symmetry, not a measurement: any split of R is possible
        spread = parts["residual"] / 2 / max(level, 1e-12)
        lo, hi = max(0.0, min(lo, share - spread)), min(1.0, max(hi, share + spread))
    if share == 0.0 and not implicated:
        verdict = "none"   # something may be listed, but nothing found holds the loss up
    elif share >= 0.6 and not implicated:
        verdict = "data"
    elif share <= 0.3 and implicated:
        verdict = "optimizer"
    else:
        verdict = "mixed"
    details.update(optimizer_implicated=implicated, interval=[_r(lo), _r(hi)])
    details["formula"] = _formula(parts, eps=eps, slows=slows, signals=signals, share=share)
    return Attribution(verdict, round(float(share), 4), (float(lo), float(hi)), details)


def _formula(parts: dict[str, float], *, eps: float, slows: bool, signals: list[str], share: float) -> list[str]:
    """The estimate as formula lines with the run's numbers plugged in (the report shows them)."""
    L, D, R = parts["level"], parts["data_removable"], parts["residual"]
    lines = [f"L = {L:.4g} (mean training loss over the last third), eps = 5% of the first epoch's loss = {eps:.4g}",
             f"D = labels {parts['label_loss']:.4g} + minority excess {parts['minority_excess']:.4g} + drift rise "
             f"{parts['drift_rise']:.4g} = {D:.4g}   (what fixing the data removes)",
             f"R = L - D = {L:.4g} - {D:.4g} = {R:.4g}   (the clean remainder's misfit)"]
    why = (f"signals {', '.join(signals)}" if signals else
           f"mispredicted loss {parts['mispredicted_loss']:.4g} {'>' if parts['optimizer_implicated'] else '<='} "
           f"eps {eps:.4g}" + (" (not judged: a slowing data fault was found)" if slows else ""))
    if parts["optimizer_implicated"]:
        lines.append(f"optimisation side implicated ({why})")
        num = f"D + R/2 = {D:.4g} + {R / 2:.4g}" if slows else f"D = {D:.4g}"
        lines.append(f"data share = ({num}) / L = {share:.2f}")
    else:
        lines.append(f"optimisation side not implicated ({why})")
        removable = D + (R if slows else 0.0)
        lines.append(f"data share = {'1' if share else '0'}: the data's removable {removable:.4g} "
                     f"{'>=' if share else '<'} eps {eps:.4g}")
    return lines


def _r(x: float) -> float:
    return round(float(x), 4)


def _samples(run: Run, results: dict[str, CheckResult], window: list[int], first_epoch: int) -> tuple[_Samples, float]:
    """The per-sample table over the `window` epochs, and the mean loss of the first epoch."""
    records = run.records
    # on the columns, not the table: a copy of the rows is about 1 GB at 10^6 samples x 20 epochs
    rec_epoch, loss = records["epoch"].to_numpy(), records["loss"].to_numpy()
    finite = np.isfinite(loss)
    first_rows = (rec_epoch == first_epoch) & finite
    first = float(loss[first_rows].astype(np.float64).mean()) if first_rows.any() else 0.0
    keep = np.isin(rec_epoch, window) & finite
    ids = records["sample_id"].to_numpy()[keep]
    label = records["label"].to_numpy()[keep]
    # a sample without a class label (regression, a mixed soft target, targets not recorded) is not judged
    # mispredicted: only a model that gets known labels wrong shows a misfit of its own
    wrong = (records["pred"].to_numpy()[keep] != label) & (label >= 0)
    x = loss[keep].astype(np.float64)
    sample_ids, index = np.unique(ids, return_inverse=True)
    count = np.bincount(index, minlength=len(sample_ids))
    mean_loss = np.bincount(index, weights=x, minlength=len(sample_ids)) / np.maximum(count, 1)
    misfit = np.bincount(index, weights=x * wrong, minlength=len(sample_ids)) / np.maximum(count, 1)
    last_label = np.full(len(sample_ids), -1, np.int64)
    last_label[index] = label
    return _Samples(mean_loss, misfit, last_label, _flagged(results, sample_ids)), first


def _estimate(s: _Samples, *, eps: float, drift: float, minority: list[int], use_labels: bool, slows: bool,
              signals: bool) -> dict[str, float]:
    """The estimated parts of the loss (see the module docstring) and the share, for one sample table."""
    n = len(s.loss)
    level = float(s.loss.mean()) if n else 0.0
    flagged = s.flagged if use_labels else np.zeros(n, bool)
    f = float(flagged.mean()) if n else 0.0
    rest = s.loss[~flagged]
    rest_loss = float(rest.mean()) if len(rest) else 0.0
    label_fixed = 0.0
    if flagged.any():
        flagged_loss = float(s.loss[flagged].mean())
        # wrong class labels keep an ideal model unsure of the clean rest; corrupted regression targets have
        # no such floor on the clean samples (s.label < 0 everywhere: no class labels)
        clean_cost = -np.log(max(1.0 - f, 1e-6)) if (s.label >= 0).any() else 0.0
        label_fixed = f * max(flagged_loss - rest_loss, 0.0) + (1 - f) * min(rest_loss, clean_cost)
    imbalance = _minority_excess(s.loss[~flagged], s.label[~flagged], minority) * (1 - f)
    data_fixed = min(level, label_fixed + imbalance + drift)   # L_bb - L_fb
    residual = level - data_fixed                               # L_fb: what fixing the data leaves
    mispredicted = float(s.misfit[~flagged].sum() / n) if n else 0.0
    implicated = signals or (not slows and residual > eps and mispredicted > eps)
    if not implicated:
        # fixing the optimiser removes nothing: all that is removable is the data's (the remainder's misfit
        # too when a fault that slows the whole fit was found)
        removable = data_fixed + (residual if slows else 0.0)
        share = 1.0 if removable >= eps else 0.0
    else:
        # additive levels: what fixing the data removes here it would remove under a healthy optimiser too
        phi_data = data_fixed + (residual / 2 if slows else 0.0)
        share = float(np.clip(phi_data / level, 0.0, 1.0)) if level > 0 else 0.0
    return {"level": level, "share": share, "label_loss": label_fixed, "unflagged_loss": rest_loss,
            "minority_excess": imbalance, "drift_rise": drift, "data_removable": data_fixed, "residual": residual,
            "mispredicted_loss": mispredicted, "optimizer_implicated": float(implicated)}


def _minority_excess(loss: np.ndarray, label: np.ndarray, minority: list[int]) -> float:
    """Sum over the named classes of (their share of the samples) x (their mean loss above the other
    classes' mean loss), over samples with losses loss (m,) and labels label (m,)."""
    named = np.isin(label, minority) & (label >= 0)
    others = ~named & (label >= 0)
    if not named.any() or not others.any():
        return 0.0
    base = float(loss[others].mean())
    total = 0.0
    for c in np.unique(label[named]):
        members = label == c
        total += members.mean() * max(float(loss[members].mean()) - base, 0.0)
    return total


def _drift_rise(run: Run, window: list[int], drift_epoch: int | None) -> float:
    """Mean over the window's epochs of the epoch loss's rise above its level just before the drift epoch
    (0 for epochs before the drift and where the loss is back down)."""
    if drift_epoch is None:
        return 0.0
    table = epoch_losses(run.train)
    epochs, loss = table["epoch"].to_numpy(), table["loss"].to_numpy()
    before = loss[(epochs < drift_epoch) & np.isfinite(loss)][-_PRE_DRIFT_EPOCHS:]
    in_window = np.isin(epochs, window) & np.isfinite(loss)
    if not len(before) or not in_window.any():
        return 0.0
    rise = np.where(epochs[in_window] >= drift_epoch, np.maximum(loss[in_window] - before.mean(), 0.0), 0.0)
    return float(rise.mean())


def _interval(s: _Samples, estimate, share: float, seed: int) -> tuple[float, float]:
    """90% bootstrap interval of the share over samples, kept around the estimate."""
    n = len(s.loss)
    if not n:
        return share, share
    rng = np.random.default_rng(seed)
    if n > _BOOTSTRAP_SAMPLES:  # a subsample keeps the bootstrap cheap; its interval is, if anything, wider
        s = s.take(rng.choice(n, _BOOTSTRAP_SAMPLES, replace=False))
        n = _BOOTSTRAP_SAMPLES
    boot = [estimate(s.take(rng.integers(0, n, n)))["share"] for _ in range(_BOOTSTRAP_DRAWS)]
    return min(float(np.quantile(boot, 0.05)), share), max(float(np.quantile(boot, 0.95)), share)


def _flagged(results: dict[str, CheckResult], ids: np.ndarray) -> np.ndarray:
    """Per sample of `ids` (n,): whether the labels (or, on regression, the targets) check flagged it."""
    labels = flagging(results)
    table = labels.per_sample if labels is not None else None
    if table is None or table.empty:
        return np.zeros(len(ids), bool)
    return table.set_index("sample_id")["flagged"].reindex(ids).fillna(False).to_numpy(bool)

