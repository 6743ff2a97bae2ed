"""What holds the training loss up: the data, the optimisation side, both, or nothing.

Method (also in the README and the report):

1. The plateau level L is the mean training loss over the plateau epochs (from
   the plateau check's onset to the end; the last third of training when no
   plateau was found).
2. Label share: over those epochs, the loss the flagged (suspected mislabeled)
   samples add above what the rest of the data averages,
   ``share_labels = (L - L_rest) / L``, where L_rest is the mean loss of the
   unflagged samples. It is the part of the plateau that would go if those
   labels were fixed and the rest trained as it does. A 90% bootstrap interval
   over samples goes with it.
3. Other data faults have no per-sample loss to split, so they enter as
   evidence, not as a decomposition: a critical finding of the feature-scale,
   class-imbalance, drift or coverage check makes the data share at least 0.5,
   a warning at least 0.25 (the method says so in audit.json).
4. The optimisation side is implicated when the optimizer check raises a signal,
   or when the clean remainder has not converged (L_rest stays well above zero
   while the model has stopped improving). The label share already counts only
   what flagged samples add beyond the remainder's own misfit, so samples that
   are merely hard for a stuck model do not count as the data's fault (and the
   label check itself flags nothing when the model learnt too little).
5. Verdict: "none" when there is no plateau (or the loss converged) and no data
   finding at warning level or above; otherwise "data" when the data share is at
   least 0.6 and the optimisation side is not implicated, "optimizer" when the
   data share is at most 0.3 and it is, "mixed" in between.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dataaudit.checks.base import CheckResult
from dataaudit.run import Run

_DATA_CHECKS = ("feature_scale", "class_imbalance", "drift", "coverage")
_EVIDENCE_FLOOR = {"critical": 0.5, "warning": 0.25}
# The remainder is "converged" when its loss is below this share of the loss at the start of training.
_CONVERGED = 0.05


@dataclass(frozen=True)
class Attribution:
    verdict: str
    data_share: float
    interval: tuple[float, float]
    details: dict[str, Any]


def attribute(run: Run, results: dict[str, CheckResult], *, seed: int = 0) -> Attribution:
    """The verdict and the data's share of the plateau, from a run and its check results."""
    plateau = results.get("plateau")
    plateau_details = plateau.details if plateau is not None else {}
    state = plateau_details.get("state")
    detected = bool(plateau_details.get("detected"))
    epochs = run.train.complete_epochs or run.train.epochs
    records = run.records
    if not epochs or records.empty:
        return Attribution("none", 0.0, (0.0, 0.0), {"method": "no recorded epoch to attribute"})

    onset = plateau_details.get("onset_epoch")
    start = onset if detected and onset is not None else epochs[int(len(epochs) * 2 / 3)]
    window = records[records["epoch"].isin([e for e in epochs if e >= start]) & records["loss"].notna()]
    per_sample = window.groupby("sample_id")["loss"].mean()
    first = records[records["epoch"] == epochs[0]]["loss"].mean()

    flagged = _flagged(results)
    is_flagged = per_sample.index.isin(list(flagged))
    losses = per_sample.to_numpy()
    level = float(losses.mean()) if len(losses) else 0.0
    rest = float(losses[~is_flagged].mean()) if (~is_flagged).any() else 0.0
    label_share, interval = _label_share(losses, is_flagged, seed)

    signals = list(results["optimizer"].details.get("signals", [])) if "optimizer" in results else []
    rest_converged = rest <= _CONVERGED * max(first, 1e-12)
    stuck = bool(signals) or (detected and not rest_converged)
    evidence = {}
    for name in _DATA_CHECKS:
        result = results.get(name)
        if result is not None and result.status in _EVIDENCE_FLOOR:
            evidence[name] = result.status
    floor = max((_EVIDENCE_FLOOR[s] for s in evidence.values()), default=0.0)
    data_share = float(np.clip(max(label_share, floor), 0.0, 1.0))
    interval = (float(max(interval[0], floor)), float(max(interval[1], floor)))
    label_result = results.get("labels")
    data_finding = bool(evidence) or (label_result is not None and label_result.status in _EVIDENCE_FLOOR)

    if (not detected or state == "converged") and not data_finding and not signals:
        verdict = "none"
    elif data_share >= 0.6 and not stuck:
        verdict = "data"
    elif data_share <= 0.3 and (stuck or not data_finding):
        verdict = "optimizer" if stuck else "none"
    else:
        verdict = "mixed"

    details = {
        "method": "data share = (plateau loss - loss of the unflagged samples) / plateau loss over the plateau "
                  "epochs, at least 0.5 (0.25) for a critical (warning) finding of the feature-scale, "
                  "class-imbalance, drift or coverage checks; the optimisation side is implicated by optimizer "
                  "signals or an unconverged clean remainder",
        "plateau_epochs": [int(start), int(epochs[-1])],
        "plateau_loss": round(level, 4),
        "unflagged_loss": round(rest, 4),
        "first_epoch_loss": round(float(first), 4),
        "label_share": round(label_share, 4),
        "interval": [round(interval[0], 4), round(interval[1], 4)],
        "flagged_samples": int(is_flagged.sum()),
        "data_evidence": evidence,
        "optimizer_signals": signals,
        "remainder_converged": bool(rest_converged),
        "optimizer_implicated": bool(stuck),
    }
    return Attribution(verdict, round(data_share, 4), interval, details)


def _flagged(results: dict[str, CheckResult]) -> set[int]:
    labels = results.get("labels")
    if labels is None:
        return set()
    return set(int(i) for i in labels.details.get("label_issues", []))


def _label_share(losses: np.ndarray, flagged: np.ndarray, seed: int, draws: int = 200) -> tuple[float, tuple]:
    """(L - L_rest) / L and its 90% bootstrap interval over samples."""
    if not len(losses) or not flagged.any() or losses.sum() <= 0:
        return 0.0, (0.0, 0.0)

    def share(x: np.ndarray, f: np.ndarray) -> float:
        total = x.mean()
        rest = x[~f].mean() if (~f).any() else 0.0
        return float(np.clip((total - rest) / total, 0.0, 1.0)) if total > 0 else 0.0

    rng = np.random.default_rng(seed)
    if len(losses) > 20000:  # a subsample keeps the bootstrap cheap; its interval is, if anything, wider
        keep = rng.choice(len(losses), 20000, replace=False)
        losses, flagged = losses[keep], flagged[keep]
    picks = rng.integers(0, len(losses), size=(draws, len(losses)))
    boot = [share(losses[p], flagged[p]) for p in picks]
    return share(losses, flagged), (float(np.quantile(boot, 0.05)), float(np.quantile(boot, 0.95)))
