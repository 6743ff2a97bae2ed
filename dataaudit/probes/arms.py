"""The arms of a probe, chosen from an audit's findings.

An arm is one change to how training continues: a data change (which samples,
which labels, which inputs, how they are drawn), an optimisation change (the
learning rate, the optimizer's state, clipping, frozen parameters), or both.
The control changes nothing. A fault the probe cannot undo by itself (a data
pipeline that changed at some epoch lives in the user's loop, not in the
dataset) becomes an *estimated* arm: its effect is read from the run's records
(the loss before the change), and the result says so.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from dataaudit.audit import Audit

DATA_CHANGES = ("drop_flagged", "relabel_flagged", "balance_classes", "standardise_features", "every_sample",
                "undo_drift")
OPT_CHANGES = ("lr_restart", "lr_lower", "reset_state", "unclip", "unfreeze")
KINDS = ("control", "data", "optimizer", "both")
# lr_restart: the peak of the restart over the current learning rate when the run's lr did not collapse
RESTART_FACTOR = 10.0
LOWER_FACTOR = 0.1
_FINDING = ("warning", "critical")
# Signals after which the optimizer's state (momentum, moment estimates) may itself hold training back.
_STALE_STATE = {"vanishing_gradients", "exploding_gradients", "amp_steps_skipped",
                "lr_too_high", "diverged", "nonfinite_loss"}


@dataclass(frozen=True)
class Arm:
    """One continuation of training.

    name : unique within a probe ("control", "relabel_flagged", "lr_restart", "both", ...).
    kind : "control", "data", "optimizer" or "both".
    data : the data change (one of DATA_CHANGES) or None.
    optimizer : the optimisation change (one of OPT_CHANGES) or None.
    description : one sentence for the report.
    params : what the change needs: flagged ids and suggested labels, features and their statistics,
        the learning-rate factors, the clipping threshold...
    estimated : True for an arm that is not run but read from the records (a fault the probe cannot undo).
    """

    name: str
    kind: str
    description: str
    data: str | None = None
    optimizer: str | None = None
    params: dict[str, Any] = field(default_factory=dict, repr=False)
    estimated: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Arm kind must be one of {KINDS}; got {self.kind!r}")
        if self.data is not None and self.data not in DATA_CHANGES:
            raise ValueError(f"Arm data change must be one of {DATA_CHANGES}; got {self.data!r}")
        if self.optimizer is not None and self.optimizer not in OPT_CHANGES:
            raise ValueError(f"Arm optimizer change must be one of {OPT_CHANGES}; got {self.optimizer!r}")


def control() -> Arm:
    return Arm("control", "control", "training continued as it was")


def both(data_arm: Arm, opt_arm: Arm) -> Arm:
    """The best data arm and the best optimizer arm together."""
    return Arm("both", "both", f"{data_arm.name} and {opt_arm.name} together", data=data_arm.data,
               optimizer=opt_arm.optimizer, params={**data_arm.params, **opt_arm.params},
               estimated=data_arm.estimated)


def plan(audit: Audit, *, clip: float | None = None, arms: str | list[str] = "auto") -> tuple[list[Arm], list[str]]:
    """The arms to run for `audit`, and notes on faults no arm can undo.

    Parameters
    ----------
    audit : the audit of the run being probed (its check results name the faults).
    clip : the max_norm of the user's gradient clipping, if any (None: read from the run's telemetry).
    arms : "auto" (chosen from the findings), or the names of the arms to run (control is always run).

    Returns
    -------
    arms : control first, then the data arms, then the optimizer arms ("both" is added once the best of
        each is known).
    notes : one sentence per fault the probe cannot undo, or arm left out for want of what it needs.
    """
    results = audit.results
    notes: list[str] = []
    extra: list[Arm] = []
    data_arms = _data_arms(audit, notes, extra)
    opt_arms = _optimizer_arms(results, clip, notes, extra)
    candidates = data_arms + opt_arms
    if arms != "auto":
        candidates = sorted(data_arms + opt_arms + extra, key=lambda a: a.kind != "data")
        wanted = [arms] if isinstance(arms, str) else list(arms)
        known = {a.name for a in candidates} | {"control"}
        valid = set(DATA_CHANGES) | set(OPT_CHANGES) | {"control"}
        bad = [w for w in wanted if w not in valid]
        if bad:
            raise ValueError(f"probe(arms=) takes 'auto' or arm names from {sorted(valid)}; got {bad}")
        for w in wanted:
            if w not in known:
                notes.append(f"arm {w} was asked for but the audit gives it nothing to change; it was not run")
        candidates = [a for a in candidates if a.name in wanted]
    return [control(), *candidates], notes


def _data_arms(audit: Audit, notes: list[str], extra: list[Arm]) -> list[Arm]:
    """The data arms the findings call for; `extra` receives those run only when asked for by name."""
    results, run = audit.results, audit.run
    arms = []
    labels = results.get("labels")
    if labels is not None and labels.status in _FINDING and labels.per_sample is not None:
        table = labels.per_sample
        flagged = table.loc[table["flagged"].astype(bool)]
        if len(flagged):
            ids = flagged["sample_id"].to_numpy(np.int64)
            suggested = flagged["suggested_label"].to_numpy(np.int64)
            ok = suggested >= 0
            drop = Arm("drop_flagged", "data", f"the {len(ids)} samples flagged as mislabeled left out",
                       data="drop_flagged", params={"ids": ids})
            relabel = Arm("relabel_flagged", "data",
                          f"the {int(ok.sum())} flagged samples relabelled to their suggested class",
                          data="relabel_flagged", params={"ids": ids[ok], "labels": suggested[ok]})
            # Dropping lowers the rest's mean loss by selection alone (the flagged are the samples with the
            # highest loss): a fair fix only when the flags are trustworthy (strong evidence: a model that fit
            # its clean samples). Relabelling can only help where the model did not memorise the wrong labels.
            strong = labels.details.get("evidence") == "strong" or not ok.any()
            arms += [a for a, use in ((relabel, ok.any()), (drop, strong)) if use]
            extra += [a for a, use in ((relabel, ok.any()), (drop, strong)) if not use]
    imbalance = results.get("class_imbalance")
    if imbalance is not None and imbalance.status in _FINDING:
        classes = [int(c) for c in imbalance.details.get("classes", [])]
        arms.append(Arm("balance_classes", "data",
                        f"classes drawn equally often (under-represented: {classes})", data="balance_classes"))
    scale = results.get("feature_scale")
    if scale is not None and scale.status in _FINDING and scale.details.get("features"):
        stats = _feature_stats(run, scale.details)
        if stats is None:
            notes.append("feature_scale named features, but the run has no input sketch to standardise them with")
        else:
            arms.append(Arm("standardise_features", "data",
                            f"{len(stats['features'])} badly scaled input {scale.details.get('unit', 'feature')}s "
                            f"standardised with the run's sketch statistics", data="standardise_features",
                            params=stats))
    coverage = results.get("coverage")
    if coverage is not None and coverage.status in _FINDING:
        arms.append(Arm("every_sample", "data", "every sample drawn once per epoch, in a fresh order",
                        data="every_sample"))
    drift = results.get("drift")
    drift_epoch = drift.details.get("first_drift_epoch") if drift is not None and drift.status in _FINDING else None
    if drift_epoch is not None:
        notes.append(f"the inputs changed at epoch {drift_epoch} (drift): a pipeline change lives in the training "
                     f"loop, which the probe cannot undo; its effect is estimated from the records (the loss "
                     f"before the change), not measured")
        arms.append(Arm("undo_drift", "data", f"the pipeline as it was before epoch {drift_epoch} (estimated from "
                        f"the records, not run)", data="undo_drift", params={"drift_epoch": int(drift_epoch)},
                        estimated=True))
    return arms


def _feature_stats(run, details: dict) -> dict | None:
    """Mean and standard deviation (over the sketch of the epoch the check judged) of the named features."""
    sketches = run.train.features if run is not None else {}
    if not sketches:
        return None
    epoch = details.get("epoch")
    table = sketches.get(epoch) if epoch in sketches else sketches[max(sketches)]
    table = table.set_index("feature")
    features = [int(f) for f in details["features"] if int(f) in table.index]
    if not features or details.get("unit", "feature") != "feature":
        return None  # per-channel statistics of images would need the channel layout: not done here
    rows = table.loc[features]
    std = np.sqrt(rows["m2"].to_numpy(np.float64) / np.maximum(rows["count"].to_numpy(np.float64), 1.0))
    return {"features": np.asarray(features, np.int64), "mean": rows["mean"].to_numpy(np.float64),
            "std": np.where(std > 0, std, 1.0)}


def _optimizer_arms(results: dict, clip: float | None, notes: list[str], extra: list[Arm]) -> list[Arm]:
    """The optimizer arms: always the learning-rate restart; lowering the rate unless it collapsed (then it
    is moot; run when asked for by name); the others where a signal calls for them."""
    opt = results.get("optimizer")
    signals = list(opt.details.get("signals", [])) if opt is not None else []
    details = opt.details if opt is not None else {}
    peak, final = details.get("lr_peak"), details.get("lr_final")
    # A collapsed lr is restored to its peak (the fix), a healthy one restarted at 10x and decayed back.
    restore = "lr_collapsed" in signals and peak and final and final > 0
    factor = float(peak / final) if restore else RESTART_FACTOR
    arms = [Arm("lr_restart", "optimizer",
                f"learning rate restored to the run's peak ({peak:.3g}, {factor:.3g}x the current)" if restore else
                f"learning rate raised {RESTART_FACTOR:g}x, decayed back over the first half of the continuation",
                optimizer="lr_restart",
                params={"lr_start": factor, "lr_end": factor if restore else 1.0, "warmup": 0.25 if restore else 0.0})]
    lower = Arm("lr_lower", "optimizer", f"learning rate lowered {1 / LOWER_FACTOR:g}x", optimizer="lr_lower",
                params={"lr_start": LOWER_FACTOR, "lr_end": LOWER_FACTOR})
    (extra if restore else arms).append(lower)
    reset = Arm("reset_state", "optimizer", "the optimizer's state (momentum, moment estimates) reset",
                optimizer="reset_state")
    (arms if set(signals) & _STALE_STATE else extra).append(reset)
    if clip is not None or "clipping_always" in signals:
        arms.append(Arm("unclip", "optimizer", "gradient clipping removed", optimizer="unclip"))
    unfreeze = Arm("unfreeze", "optimizer", "frozen parameters unfrozen (and added to the optimizer)",
                   optimizer="unfreeze")
    (arms if "frozen_layers" in signals else extra).append(unfreeze)
    if "clipping_always" in signals and clip is None:
        notes.append("clipping binds (telemetry) but probe() was not given clip=: the control continues with the "
                     "threshold the telemetry revealed")
    return arms


def clip_threshold(results: dict, clip: float | None) -> float | None:
    """The max_norm the continuation clips at: the user's `clip`, else the one the run's telemetry revealed."""
    if clip is not None:
        return float(clip)
    opt = results.get("optimizer")
    if opt is None or "clipping_always" not in opt.details.get("signals", []):
        return None
    for finding in opt.findings:
        threshold = finding.evidence.get("threshold")
        if threshold:
            return float(threshold)
    return None
