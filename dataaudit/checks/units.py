"""Units: dead ReLUs and saturated sigmoid or tanh units, from the optional activation probe.

Reads what `Tracker.watch(activations=...)` keeps per training epoch
(`probes.activations` in the manifest, see `dataaudit.track.activations`):
per activation module, the share of units never active (> 0) on the probed
batches (rectifiers: ReLU, GELU, SiLU...) or pinned at a limit on 95% of
them (sigmoid, tanh). Judged on the median share over the last three probed
epochs, on layers with at least 32 probed outputs per unit in each (a unit that never fires on 32
samples, in a layer where half the units do the same, is no sparse code):

- dead_units: half of a rectifier layer's units or more never fire: they pass
  no gradient and never recover (a learning rate too high, a large negative bias);
- saturated_units: half of a sigmoid or tanh layer's units or more are pinned:
  their gradient is about zero.

A quarter or more is only info. The score is the largest flagged share.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from dataaudit.checks.base import CheckResult, Finding, json_number
from dataaudit.run import Run

NAME = "units"

WARN_SHARE = 0.5
INFO_SHARE = 0.25
LAST_EPOCHS = 3
MIN_OUTPUTS = 32


def check(run: Run) -> CheckResult:
    entries = (run.meta.get("probes") or {}).get("activations") or []
    if not entries:
        return CheckResult.skipped(NAME, "no activation probe (call tracker.watch(optimizer, model=model, "
                                         "activations=True))")
    return _compute_units(entries)


def _compute_units(entries: list[dict[str, Any]]) -> CheckResult:
    """The units result from the per-epoch probe entries ({"epoch", "layers": [...]}, in epoch order)."""
    last = entries[-LAST_EPOCHS:]
    by_layer: dict[str, list[dict[str, Any]]] = {}
    for e in last:
        for layer in e["layers"]:
            if layer["outputs"] >= MIN_OUTPUTS:
                by_layer.setdefault(layer["layer"], []).append(layer)
    layers = []
    for name, rows in by_layer.items():
        key = "dead" if rows[0]["kind"] == "rectifier" else "saturated"
        layers.append({"layer": name, "kind": rows[0]["kind"], "units": rows[0]["units"], "measure": key,
                       "share": float(np.median([r[key] for r in rows])), "epochs": len(rows)})
    details: dict[str, Any] = {
        "layers": [{**lay, "share": json_number(lay["share"])} for lay in layers],
        "from_epoch": int(last[0]["epoch"]), "probe_every": last[-1].get("every"), "signals": [],
    }
    findings = []
    for measure, signal, what, remedy in (
            ("dead", "dead_units", "never fire (dead ReLUs)",
             "Lower the learning rate, initialise biases at 0 or slightly positive (Kaiming init for the weights), "
             "use LeakyReLU/GELU, or add normalisation before the activation."),
            ("saturated", "saturated_units", "are pinned at their limits (saturated)",
             "Normalise the layer's inputs (BatchNorm/LayerNorm before the activation), initialise for it (Xavier), "
             "lower the learning rate, or use ReLU/GELU in hidden layers.")):
        hit = sorted((lay for lay in layers if lay["measure"] == measure and lay["share"] >= INFO_SHARE),
                     key=lambda lay: -lay["share"])
        if not hit:
            continue
        warn = [lay for lay in hit if lay["share"] >= WARN_SHARE]
        if warn:
            details["signals"].append(signal)
        shown = ", ".join(f"{lay['layer']} {lay['share']:.0%} of {lay['units']}" for lay in hit[:6])
        findings.append(Finding(
            NAME, "warning" if warn else "info",
            f"Units that {what} since epoch {details['from_epoch']}: {shown}"
            f"{'...' if len(hit) > 6 else ''}. They pass almost no gradient, so the layer learns with a fraction "
            f"of its width.", remedy=remedy,
            evidence={"layers": [{"layer": lay["layer"], "share": json_number(lay["share"]), "units": lay["units"]}
                                 for lay in hit[:20]]}))
    if not findings:
        findings.append(Finding(NAME, "info", f"No dead or saturated units above {INFO_SHARE:.0%} of a layer in "
                                              f"the {len(layers)} probed activation layers."))
    score = max((lay["share"] for lay in layers if lay["share"] >= WARN_SHARE), default=0.0)
    return CheckResult.from_findings(NAME, findings, score=score, details=details)
