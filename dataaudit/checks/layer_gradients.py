"""Layer gradients: do the gradients vanish or explode through the depth of the network?

Reads the per-parameter norms `Tracker.watch` measures every `every` steps
(`run.layers`: grad_norm, update_norm, weight_norm). Per weight matrix (a
parameter of 2+ dimensions that is not an embedding table, in the optimizer's
order, which is the model's for `model.parameters()`), the median over the
measured steps of ||grad|| / ||w|| and ||delta w|| / ||w||.

- vanishing: the first layer's gradient-to-weight ratio is at least 100x
  (FACTOR, two orders of magnitude) below the last layer's, and the ratios rise
  with depth toward the output (Spearman correlation of log ratio and position
  >= 0.7): a deep sigmoid or tanh stack without normalisation;
- exploding: the mirror image, the first layer 100x above the last, ratios
  falling toward the output.

Layers named in the finding are those 100x off the last layer. Under an adaptive
optimizer (Adam, RMSprop...) whose update-to-weight ratios stay within 10x
across the layers, the per-parameter rescaling has already compensated: the
finding is then only info. Biases, norm scales and embedding tables are not judged
(their gradients are naturally small or sparse).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from dataaudit.checks.base import CheckResult, Finding, json_number
from dataaudit.run import Run

NAME = "layer_gradients"

FACTOR = 100.0
MIN_CORRELATION = 0.7
MIN_LAYERS = 3
# Adaptive optimizers rescale per parameter: update ratios within this spread mean they compensated.
BALANCED_UPDATES = 10.0
_ADAPTIVE = ("Adam", "AdamW", "Adamax", "NAdam", "RAdam", "RMSprop", "Adagrad", "Adadelta", "Adafactor", "Lion")
_NOT_JUDGED_MODULES = ("Embedding", "EmbeddingBag")


def check(run: Run) -> CheckResult:
    layers = run.layers
    if not len(layers):
        return CheckResult.skipped(NAME, "no per-layer norms (call tracker.watch(optimizer, model=model) "
                                         "with every > 0)")
    optimizer = run.meta.get("optimizer") or {}
    return _compute_layer_gradients(layers, params=optimizer.get("params"),
                                    adaptive=optimizer.get("class") in _ADAPTIVE)


def _judged(names: list[str], params: list[dict[str, Any]] | None) -> list[str]:
    """The weight matrices among `names`, in the optimizer's order."""
    if params:
        info = {p["name"]: p for p in params}
        order = [p["name"] for p in params if p["name"] in set(names)]
        return [n for n in order if len(info[n]["shape"]) >= 2 and info[n].get("module") not in _NOT_JUDGED_MODULES]
    # a run without shapes: by name (the layers table keeps the optimizer's order)
    return [n for n in names if not n.endswith("bias") and "norm" not in n.lower() and "emb" not in n.lower()]


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    if rx.std() == 0 or ry.std() == 0:
        return 0.0
    return float(np.corrcoef(rx, ry)[0, 1])


def _compute_layer_gradients(layers: pd.DataFrame, *, params: list[dict[str, Any]] | None = None,
                             adaptive: bool = False) -> CheckResult:
    """The layer_gradients result.

    layers : one row per (measured step, parameter): param, grad_norm, update_norm, weight_norm.
    params : per parameter of the optimizer, in order: name, shape, module (the manifest's); optional.
    adaptive : the optimizer rescales per parameter (Adam...).
    """
    table = layers[["param", "grad_norm", "update_norm", "weight_norm"]].astype(
        {"grad_norm": float, "update_norm": float, "weight_norm": float})
    w = table["weight_norm"].to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        table = table.assign(g=np.where(w > 0, table["grad_norm"].to_numpy() / w, np.nan),
                             u=np.where(w > 0, table["update_norm"].to_numpy() / w, np.nan))
    medians = table.groupby("param", sort=False)[["g", "u"]].median()
    names = [n for n in _judged(list(dict.fromkeys(table["param"])), params)
             if n in medians.index and np.isfinite(medians.at[n, "g"]) and medians.at[n, "g"] > 0]
    ratios = medians.loc[names, "g"].to_numpy() if names else np.empty(0)
    updates = medians.loc[names, "u"].to_numpy() if names else np.empty(0)
    details: dict[str, Any] = {
        "layers": [{"param": n, "grad_to_weight": json_number(g), "update_to_weight": json_number(u)}
                   for n, g, u in zip(names, ratios, updates, strict=True)],
        "vanishing": False, "exploding": False, "spread": None,
    }
    if len(names) < MIN_LAYERS:
        finding = Finding(NAME, "info", f"{len(names)} weight matrices with measured gradients; at least "
                                        f"{MIN_LAYERS} are needed to judge gradients through the depth.")
        return CheckResult.from_findings(NAME, [finding], score=0.0, details=details)

    log_r = np.log10(ratios)
    corr = _spearman(np.arange(len(ratios)), log_r)
    last = ratios[-1]
    spread = float(ratios[0] / last)
    vanishing = spread <= 1 / FACTOR and corr >= MIN_CORRELATION
    exploding = spread >= FACTOR and corr <= -MIN_CORRELATION
    details.update(vanishing=bool(vanishing), exploding=bool(exploding), spread=json_number(spread),
                   depth_correlation=json_number(corr))
    findings = []
    if vanishing or exploding:
        off_by = ratios <= last / FACTOR if vanishing else ratios >= last * FACTOR
        off = [n for n, is_off in zip(names, off_by, strict=True) if is_off]
        u = updates[np.isfinite(updates) & (updates > 0)]
        compensated = adaptive and len(u) == len(updates) and u.max() / u.min() < BALANCED_UPDATES
        factor = 1 / spread if vanishing else spread
        summary = (f"Gradients {'vanish toward the input' if vanishing else 'explode toward the input'}: "
                   f"the gradient-to-weight ratio of {names[0]} is {ratios[0]:.2g}, {factor:.3g}x "
                   f"{'below' if vanishing else 'above'} the last layer's ({names[-1]}, {last:.2g}); "
                   f"{len(off)} of {len(names)} weight matrices are {FACTOR:.0f}x or more off it "
                   f"({', '.join(off[:6])}{'...' if len(off) > 6 else ''}).")
        if compensated:
            summary += " The adaptive optimizer rescales them: the updates stay within 10x across layers."
        details["off_layers"] = off
        findings.append(Finding(
            NAME, "info" if compensated else "warning", summary,
            remedy=("Add normalisation (BatchNorm/LayerNorm) or residual connections, use ReLU/GELU instead of "
                    "sigmoid/tanh in hidden layers, and initialise for the activation (Kaiming for ReLU, Xavier "
                    "for tanh)." if vanishing else
                    "Lower the learning rate, add normalisation or gradient clipping, and initialise for the "
                    "activation (smaller initial weights: Kaiming/Xavier with the right gain)."),
            evidence={"first": names[0], "last": names[-1], "first_ratio": json_number(ratios[0]),
                      "last_ratio": json_number(last), "factor": json_number(factor), "off_layers": off[:20],
                      "depth_correlation": json_number(corr), "adaptive_compensated": bool(compensated)}))
        score = 0.3 if compensated else min(1.0, abs(np.log10(spread)) / 4)
    else:
        findings.append(Finding(NAME, "info", f"Gradient-to-weight ratios across the {len(names)} weight matrices "
                                              f"span {np.ptp(log_r):.1f} orders of magnitude; the first layer is "
                                              f"{spread:.2g}x the last: no vanishing or exploding gradients."))
        score = 0.0
    return CheckResult.from_findings(NAME, findings, score=score, details=details)
