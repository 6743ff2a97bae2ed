"""The measured data share: a Shapley split of what the best arms remove, and the verdict resting on it.

The yardstick is the counterfactual's (`zoo/counterfactual.py`): the mean
training loss on the arm's own training data, here over the last half of the
continuation. Against the control of the same seed (same model, same draws),
each arm removes ``r = L_control - L_arm``. With d the best data arm, o the best
optimizer arm and b both together:

    phi_data = (r_d + (r_b - r_o)) / 2          phi_opt = (r_o + (r_b - r_d)) / 2
    share    = clip(phi_data / r_b, 0, 1)       (0 when r_b is under 5% of the first epoch's loss)

computed per seed (the interval is the range over seeds) and on the seeds' mean
reductions (the estimate). An arm read from the records (a fault the probe
cannot undo) removes the run's plateau level minus its level before the fault;
with it, both together remove the larger of the two sides.

Nothing here imports torch: `analyze` reads a probe's result through `apply`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd

NEGLIGIBLE = 0.05  # of the first epoch's mean loss, as in the counterfactual


def reductions(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (arm, seed) the loss the arm removes against the control of its seed.

    runs : one row per (arm, seed): arm, seed, level (and any other columns, kept).
    Returns the rows of the arms other than control, with a `reduction` column.
    """
    control = runs.loc[runs["arm"] == "control"].set_index("seed")["level"]
    out = runs.loc[runs["arm"] != "control"].copy()
    out["reduction"] = control.reindex(out["seed"]).to_numpy() - out["level"].to_numpy()
    return out


def best(table: pd.DataFrame, kind: str) -> str | None:
    """The arm of `kind` ("data" or "optimizer") with the largest mean reduction, or None."""
    rows = table.loc[table["kind"] == kind]
    if rows.empty:
        return None
    means = rows.groupby("arm")["reduction"].mean()
    return str(means.idxmax())


def shapley(r_d: float, r_o: float, r_b: float, first_loss: float) -> tuple[float, float, float]:
    """(share, phi_data, phi_opt) from the reductions of the data arm, the optimizer arm and both.

    A fix that raises the loss within the continuation would not be kept: its reduction counts as 0, and
    both together remove at least what the better one alone does (one could keep only that one).
    """
    r_d, r_o = max(r_d, 0.0), max(r_o, 0.0)
    r_b = max(r_b, r_d, r_o) if np.isfinite(r_b) else r_b
    phi_data = (r_d + (r_b - r_o)) / 2
    phi_opt = (r_o + (r_b - r_d)) / 2
    if not np.isfinite(r_b) or r_b < NEGLIGIBLE * first_loss:
        return 0.0, phi_data, phi_opt
    return float(np.clip(phi_data / r_b, 0.0, 1.0)), phi_data, phi_opt


def measure(table: pd.DataFrame, *, data_arm: str | None, opt_arm: str | None, first_loss: float,
            control_level: float) -> dict[str, Any]:
    """The measured share with its interval over seeds.

    table : `reductions` output with `kind` (the arm's kind) for every arm run or estimated.
    control_level : the control's mean loss over the continuation's last half.
    Returns share, interval [low, high], phi_data, phi_opt, removable (r_b), negligible, conclusive, seeds.
    A probe whose arms remove a negligible part of a loss that is not itself negligible is inconclusive
    (the continuation may be too short for the fix to show): its share is not to be used.
    """
    seeds = sorted(table["seed"].unique())

    def at(arm: str | None, seed=None) -> float:
        if arm is None:
            return 0.0
        rows = table.loc[table["arm"] == arm]
        if seed is not None:
            rows = rows.loc[rows["seed"] == seed]
        return float(rows["reduction"].mean()) if len(rows) else float("nan")

    def both(seed=None) -> float:
        if data_arm is None or opt_arm is None:
            return max(at(data_arm, seed), at(opt_arm, seed))
        return at("both", seed)

    per_seed = [shapley(at(data_arm, s), at(opt_arm, s), both(s), first_loss)[0] for s in seeds]
    r_d, r_o, r_b = at(data_arm), at(opt_arm), both()
    share, phi_data, phi_opt = shapley(r_d, r_o, r_b, first_loss)
    negligible = bool(not np.isfinite(r_b) or max(r_b, r_d, r_o) < NEGLIGIBLE * first_loss)
    return {
        "share": round(share, 4),
        "interval": [round(min(per_seed + [share]), 4), round(max(per_seed + [share]), 4)],
        "per_seed": [round(s, 4) for s in per_seed],
        "phi_data": round(phi_data, 5), "phi_opt": round(phi_opt, 5),
        "removable": round(r_b, 5), "reduction_data": round(r_d, 5), "reduction_optimizer": round(r_o, 5),
        "negligible": negligible,
        "negligible_below": round(NEGLIGIBLE * first_loss, 5),
        "control_level": round(control_level, 5),
        "conclusive": bool(not negligible or control_level < NEGLIGIBLE * first_loss),
        "data_arm": data_arm, "optimizer_arm": opt_arm, "seeds": [int(s) for s in seeds],
    }


def verdict(measured: dict[str, Any]) -> str:
    """The verdict a measured share gives: the same bands as the passive attribution's; "inconclusive" when
    nothing measurable was removed from a loss that is not negligible."""
    if not measured.get("conclusive", True):
        return "inconclusive"
    if measured["negligible"]:
        return "none"
    if measured["share"] >= 0.6:
        return "data"
    if measured["share"] <= 0.3:
        return "optimizer"
    return "mixed"


def apply(attribution, probe: dict[str, Any] | None):
    """The attribution (`attribution.Attribution`, or any frozen dataclass with verdict, data_share, interval
    and details) once a probe of the run exists: with a conclusive measured share, the verdict and the data
    share rest on it and the passive estimate moves to details["passive"]; otherwise it is returned as it was,
    its details saying why the probe was not used.
    """
    measured = (probe or {}).get("share")
    if not measured:
        return attribution
    details = dict(attribution.details)
    if not measured.get("conclusive", True):
        details["rests_on"] = ("passive: the probe was inconclusive (no arm removed a measurable part of the "
                               "loss within its continuation, which may be too short for the fix to show)")
        return dataclasses.replace(attribution, details=details)
    new_verdict = verdict(measured)
    details = {
        **details,
        "passive": {"verdict": attribution.verdict, "data_share": attribution.data_share,
                    "interval": list(attribution.interval), "method": details.get("method")},
        "method": "measured by probe: short continuations of training from the run's end state (arms), the data "
                  "share being the Shapley split of the loss the best data arm and the best optimizer arm remove "
                  "(apart and together) against a control; the passive estimate from the records is kept under "
                  "'passive'" + ("" if probe.get("complete", True) else " (the probe was cut short)"),
        "rests_on": "probe",
        "interval": measured["interval"],
        "formula": _formula(measured, attribution.data_share),
    }
    return dataclasses.replace(attribution, verdict=new_verdict, data_share=float(measured["share"]),
                               interval=tuple(measured["interval"]), details=details)


def _formula(measured: dict[str, Any], passive: float) -> list[str]:
    """The measured share as formula lines with the probe's numbers plugged in."""
    lines = []
    if "reduction_data" in measured:
        lines.append(f"removed against control: r_d = {measured['reduction_data']:.4g} (best data arm), r_o = "
                     f"{measured['reduction_optimizer']:.4g} (best optimizer arm), r_b = {measured['removable']:.4g} "
                     "(both)")
    if "phi_data" in measured:
        lines.append(f"phi_data = (r_d + (r_b - r_o)) / 2 = {measured['phi_data']:.4g}")
    low, high = measured["interval"]
    lines.append(f"data share = phi_data / r_b = {measured['share']:.2f} (over seeds {low:.2f} to {high:.2f}); "
                 f"the passive estimate was {passive:.2f}")
    return lines


def section(probe: dict[str, Any] | None) -> dict[str, Any] | None:
    """The `probes` section of audit.json: each arm's measured effect and the measured share, or None."""
    if not probe:
        return None
    keep = ("id", "created", "complete", "share", "arms", "notes", "cost", "passive")
    return {**{k: probe.get(k) for k in keep}, "plan": {k: v for k, v in probe.get("plan", {}).items()
                                                        if k != "arms"}}
