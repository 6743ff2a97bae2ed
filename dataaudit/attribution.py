"""What holds the training loss up: the data, the optimisation side, both, or nothing.

Method (also in the README and the report):

1. The plateau level L is the mean training loss over the plateau epochs (from
   the plateau check's onset to the end; the last third of training when no
   plateau was found).
2. Label share, the larger of two estimates, with a 90% bootstrap interval over
   samples:
   - measured: ``(L - L_rest) / L``, where L_rest is the mean loss of the
     unflagged samples: what the flagged samples add above the rest;
   - the floor wrong labels impose: even a perfect model cannot go below the
     conditional entropy of the given labels given the true ones,
     ``H = sum_c p(c) H(given | true = c)``, estimated from the flagged samples
     and their suggested labels; ``min(1, H / L)``. It counts what noise does
     to the clean samples too (it keeps the model from being confident on any
     sample), which the measured split misses. It presumes a model that fit its
     clean samples, so it is left out when an optimizer signal fires.
3. Other data faults have no per-sample loss to split, so they enter as
   evidence, not as a decomposition: a critical finding of the feature-scale,
   class-imbalance, drift or coverage check makes the data share at least 0.5,
   a warning at least 0.25 (the method says so in audit.json).
4. The optimisation side is implicated when the optimizer check raises a signal,
   or when a plateau's clean remainder has not converged: L_rest stays above what
   the label noise alone leaves on clean samples (about -ln(1 - rho) for a share
   rho of wrong labels, with slack) plus 5% of the first epoch's loss. The label share already counts only
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
import pandas as pd

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
    # on the columns, not the table: a copy of the rows is about 1 GB at 10^6 samples x 20 epochs
    rec_epoch, loss = records["epoch"].to_numpy(), records["loss"].to_numpy()
    keep = np.isin(rec_epoch, [e for e in epochs if e >= start]) & pd.notna(loss)
    per_sample = pd.Series(loss[keep], name="loss").groupby(records["sample_id"].to_numpy()[keep]).mean()
    first = pd.Series(loss[rec_epoch == epochs[0]]).mean()

    given, suggested, is_flagged = _label_table(results, per_sample.index.to_numpy())
    losses = per_sample.to_numpy()
    level = float(losses.mean()) if len(losses) else 0.0
    rest = float(losses[~is_flagged].mean()) if (~is_flagged).any() else 0.0
    signals = list(results["optimizer"].details.get("signals", [])) if "optimizer" in results else []
    # Label noise keeps even an ideal model unsure of the clean samples: with a share rho of labels
    # wrong it gives the true class about 1 - rho, a loss of -ln(1 - rho) on each clean sample.
    rho = float(is_flagged.mean()) if len(is_flagged) else 0.0
    clean_floor = -np.log(max(1.0 - rho, 1e-6))
    rest_converged = rest <= _CONVERGED * max(first, 1e-12) + 1.5 * clean_floor
    stuck = bool(signals) or (detected and not rest_converged)
    # The noise floor presumes a model that fit its clean samples; a stuck one may flag hard, not wrong, ones.
    label_result = _flagging(results)
    if label_result is not None and label_result.status in _EVIDENCE_FLOOR:
        label_share, interval = _label_share(losses, is_flagged, given, suggested, seed, noise_floor=not signals)
    else:  # a handful of flagged samples (an info finding) is no share of a plateau
        label_share, interval = 0.0, (0.0, 0.0)
    evidence = {}
    for name in _DATA_CHECKS:
        result = results.get(name)
        if result is not None and result.status in _EVIDENCE_FLOOR:
            evidence[name] = result.status
    floor = max((_EVIDENCE_FLOOR[s] for s in evidence.values()), default=0.0)
    data_share = float(np.clip(max(label_share, floor), 0.0, 1.0))
    interval = (float(max(interval[0], floor)), float(max(interval[1], floor)))
    data_finding = bool(evidence) or (label_result is not None and label_result.status in _EVIDENCE_FLOOR)

    if (not detected or state == "converged") and not data_finding and not signals:
        verdict = "none"
        data_share, interval = 0.0, (0.0, 0.0)  # no plateau: nothing to share out
    elif data_share >= 0.6 and not stuck:
        verdict = "data"
    elif data_share <= 0.3 and (stuck or not data_finding):
        verdict = "optimizer" if stuck else "none"
    else:
        verdict = "mixed"

    details = {
        "method": "data share over the plateau epochs = the larger of (plateau loss - loss of the unflagged "
                  "samples) / plateau loss and (entropy of the given labels given the suggested ones) / plateau "
                  "loss; at least 0.5 (0.25) for a critical (warning) finding of the feature-scale, "
                  "class-imbalance, drift or coverage checks; the optimisation side is implicated by optimizer "
                  "signals or an unconverged clean remainder",
        "label_noise_entropy": round(_noise_entropy(given, suggested, is_flagged), 4),
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


def _label_table(results: dict[str, CheckResult], ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per sample of `ids`: given label, suggested label, flagged (from the labels or targets check)."""
    labels = _flagging(results)
    table = labels.per_sample if labels is not None else None
    if table is None or table.empty:
        zeros = np.zeros(len(ids), np.int64)
        return zeros, zeros, np.zeros(len(ids), bool)
    table = table.set_index("sample_id").reindex(ids)
    flagged = table["flagged"].fillna(False).to_numpy(bool)
    # the targets check (regression) has no labels: -1, so the label-noise entropy is 0
    given = table["label"].fillna(-1).to_numpy(np.int64) if "label" in table else np.full(len(ids), -1)
    suggested = (table["suggested_label"].fillna(-1).to_numpy(np.int64) if "suggested_label" in table
                 else np.full(len(ids), -1))
    return given, suggested, flagged


def _flagging(results: dict[str, CheckResult]) -> CheckResult | None:
    """The check that flags samples: noisy labels (classification), else noisy targets (regression)."""
    for name in ("labels", "targets"):
        result = results.get(name)
        if result is not None and result.status != "skipped":
            return result
    return results.get("labels")


def _noise_entropy(given: np.ndarray, suggested: np.ndarray, flagged: np.ndarray) -> float:
    """H(given | true) in nats, the true label taken as the suggested one for flagged samples."""
    true = np.where(flagged, suggested, given)
    ok = (true >= 0) & (given >= 0)
    if not ok.any():
        return 0.0
    true, given = true[ok], given[ok]
    k = int(max(true.max(), given.max())) + 1
    joint = np.zeros((k, k))
    np.add.at(joint, (true, given), 1)
    joint /= joint.sum()
    p_true = joint.sum(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        cond = np.where(joint > 0, joint / p_true, 1.0)
        return float(-(joint * np.log(cond)).sum())


def _label_share(losses: np.ndarray, flagged: np.ndarray, given: np.ndarray, suggested: np.ndarray, seed: int,
                 *, noise_floor: bool = True, draws: int = 200) -> tuple[float, tuple]:
    """The label share (see the module docstring) and its 90% bootstrap interval over samples."""
    if not len(losses) or not flagged.any() or losses.sum() <= 0:
        return 0.0, (0.0, 0.0)

    def share(x: np.ndarray, f: np.ndarray, g: np.ndarray, s: np.ndarray) -> float:
        total = x.mean()
        if total <= 0:
            return 0.0
        rest = x[~f].mean() if (~f).any() else 0.0
        floor = _noise_entropy(g, s, f) / total if noise_floor else 0.0
        return float(np.clip(max((total - rest) / total, floor), 0.0, 1.0))

    rng = np.random.default_rng(seed)
    if len(losses) > 20000:  # a subsample keeps the bootstrap cheap; its interval is, if anything, wider
        keep = rng.choice(len(losses), 20000, replace=False)
        losses, flagged, given, suggested = losses[keep], flagged[keep], given[keep], suggested[keep]
    picks = rng.integers(0, len(losses), size=(draws, len(losses)))
    boot = [share(losses[p], flagged[p], given[p], suggested[p]) for p in picks]
    estimate = share(losses, flagged, given, suggested)
    # the larger of two estimates is biased upward against its resamples: keep the estimate inside
    return estimate, (min(float(np.quantile(boot, 0.05)), estimate), max(float(np.quantile(boot, 0.95)), estimate))
