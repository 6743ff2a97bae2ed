"""Noisy targets (regression): samples whose target the model persistently cannot come near.

A corrupted target (a wrong unit, a swapped row, a sensor spike) leaves its sample with a
loss far above the rest epoch after epoch, while the model fits the others; the labels check
finds the same in classification. Read from the per-sample losses over a window of the
complete epochs (several windows are tried, as a memorising model slowly fits the outliers):

1. The per-sample mean loss L over the window is put on a residual scale a = L^p, with p
   chosen so that the bulk looks like |Gaussian residual|: the ratio of the 75th to the 50th
   percentile of a half-normal is 1.705, so p = log(1.705) / log(q75(L) / q50(L)), clipped to
   [1/2, 1] (1/2 for a squared loss (MSE), 1 for an absolute one (L1); Huber in between).
2. Two accounts of a are compared by BIC: one heavy-tailed population (a half Student-t,
   its degrees of freedom fitted: noise that is merely heavy-tailed), against a clean bulk
   (half-normal) plus a separate group of larger residuals (a normal), fitted by EM from the
   split at the Bonferroni bound of the bulk (a > s * z, z the half-normal quantile of
   1 - 0.05 / n, s the bulk's scale from its median). A group is found when the two-population
   account wins by more than 10 (very strong evidence on Kass and Raftery's scale), so a
   smooth heavy tail, however long, names nothing.
3. The samples more likely in the group than in the bulk (posterior > 0.5), above the bulk's
   median, are flagged, most suspicious (largest residual) first.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from dataaudit.checks.base import CheckResult, Finding, json_number
from dataaudit.run import Run, unique_ids

NAME = "targets"
TASKS = ("regression",)

# The two-population account must beat one heavy-tailed population by this much BIC ("very strong").
_MIN_BIC_GAIN = 10.0
# Family-wise false-alarm rate of the bound that seeds the split (Bonferroni over the samples).
_ALPHA = 0.05
# q75 / q50 of a half-normal: what the bulk's residual scale is matched to.
_HALF_NORMAL_RATIO = 1.7054
# The mixture and the Student-t are fitted on at most this many samples (then applied to all).
_FIT_ROWS = 20000
_WINDOW_CANDIDATES = 6
_T_DOF = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 10.0, 20.0, 50.0, 200.0)


def check(run: Run) -> CheckResult:
    """Flag the samples whose targets look corrupted, from the per-sample losses of the complete epochs.

    Reads `run.records` (epoch, sample_id, loss). Skipped with fewer than 20 samples or no finite loss.
    """
    split = run.train
    epochs = split.with_records(split.complete_epochs or split.epochs)  # beyond the row budget: the held ones
    records = split.records
    if not epochs or records.empty:
        return CheckResult.skipped(NAME, "no recorded epoch")
    ids, losses = _loss_matrix(records, epochs)
    if len(ids) < 20 or not np.isfinite(losses).any():
        return CheckResult.skipped(NAME, f"too few samples with a finite loss ({len(ids)}) to tell a group apart")
    return _compute_target_issues(ids, losses, epochs)


def _loss_matrix(records: pd.DataFrame, epochs: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(ids (n,), loss (n, E)): each sample's mean loss per epoch, NaN where it was not drawn."""
    epoch_col = records["epoch"].to_numpy()
    keep = np.isin(epoch_col, epochs) & np.isfinite(records["loss"].to_numpy())
    ids, index = unique_ids(records["sample_id"].to_numpy()[keep], return_inverse=True)
    col = np.searchsorted(epochs, epoch_col[keep])
    cell = index * len(epochs) + col
    size = len(ids) * len(epochs)
    total = np.bincount(cell, weights=records["loss"].to_numpy()[keep].astype(np.float64), minlength=size)
    count = np.bincount(cell, minlength=size)
    with np.errstate(invalid="ignore"):
        return ids, (total / count).reshape(len(ids), len(epochs))


def _compute_target_issues(ids: np.ndarray, losses: np.ndarray, epochs: list[int]) -> CheckResult:
    """ids : (n,); losses : (n, E) mean loss per sample and epoch (NaN: not drawn)."""
    n, n_epochs = losses.shape
    first = 1 if n_epochs > 1 else 0
    best = None
    for end in _window_ends(first, n_epochs):
        with np.errstate(invalid="ignore"):
            window = np.nanmean(losses[:, first:end], axis=1) if end > first else losses[:, 0]
        fit = _fit(np.where(np.isfinite(window), np.maximum(window, 0.0), np.nan))
        if best is None or fit["gain"] > best[1]["gain"]:
            best = (end, fit)
    end, fit = best
    flagged = fit["flagged"]
    order = np.flatnonzero(flagged)[np.argsort(-fit["residual"][flagged], kind="stable")]
    window = [int(epochs[first]), int(epochs[end - 1])]
    found = fit["gain"] > _MIN_BIC_GAIN and flagged.any()
    share = float(flagged.mean())
    details = {
        "label_issues": ids[order].tolist(),
        "n_flagged": int(flagged.sum()),
        "estimated_noise_rate": round(share, 4),
        "window": window,
        "residual_power": round(fit["power"], 3),
        "bic_gain": json_number(fit["gain"]),
        "heavy_tail_dof": fit["dof"],
        "bulk_scale": json_number(fit["scale"]),
        "method": ("per-sample mean loss over the window on a residual scale (loss^p, p matching the bulk to a "
                   "half-normal); a half-normal bulk plus a separate group (EM) against one half Student-t, "
                   f"by BIC (a group needs a gain above {_MIN_BIC_GAIN:g}); flagged: posterior of the group > 0.5"),
    }
    per_sample = pd.DataFrame({"sample_id": ids, "loss": fit["loss"], "residual": fit["residual"],
                               "group_probability": fit["posterior"], "flagged": flagged})
    findings = []
    if found:
        severity = "critical" if share > 0.05 else ("warning" if share > 0.01 else "info")
        findings.append(Finding(
            NAME, severity,
            f"{int(flagged.sum())} samples ({share:.1%}) have targets the model persistently cannot come near: "
            f"their loss over epochs {window[0]}-{window[1]} stands apart from the rest "
            f"(a separate group, not a heavy tail).",
            remedy="Check the listed ids' targets (label_issues, most suspicious first) for corruption: units, "
                   "swapped rows, sentinel values, sensor spikes; fix or drop them, or train with a robust loss "
                   "(Huber, L1) while they are checked.",
            evidence={"flagged": int(flagged.sum()), "window": window, "bic_gain": json_number(fit["gain"])},
            ids=tuple(int(i) for i in ids[order])))
    return CheckResult.from_findings(NAME, findings, score=min(1.0, share * 2) if found else 0.0,
                                     details=details, per_sample=per_sample)


def _window_ends(first: int, n_epochs: int) -> list[int]:
    """Window ends (exclusive) to try, from a few epochs in to the last."""
    lo = min(first + 2, n_epochs)
    ends = np.unique(np.linspace(lo, n_epochs, num=min(_WINDOW_CANDIDATES, max(n_epochs - lo + 1, 1))).round())
    return [int(e) for e in ends if e > first] or [n_epochs]


def _fit(loss: np.ndarray) -> dict:
    """Both accounts of the per-sample losses (n,) (NaN: not drawn), and the flagged samples."""
    n = len(loss)
    known = np.isfinite(loss)
    out = {"loss": loss, "residual": np.full(n, np.nan), "posterior": np.zeros(n), "flagged": np.zeros(n, bool),
           "gain": -np.inf, "power": 1.0, "dof": None, "scale": None}
    values = loss[known]
    q50, q75 = np.quantile(values, [0.5, 0.75]) if len(values) else (0.0, 0.0)
    if len(values) < 20 or q50 <= 0 or q75 <= q50:
        return out  # the bulk fits exactly (or a handful of samples): no scale to judge a group by
    power = float(np.clip(np.log(_HALF_NORMAL_RATIO) / np.log(q75 / q50), 0.5, 1.0))
    a = np.power(values, power)
    scale = float(np.median(a) / 0.6745)
    a = a / scale  # the bulk's half-normal scale is 1
    sample = a if len(a) <= _FIT_ROWS else np.random.default_rng(0).choice(a, _FIT_ROWS, replace=False)
    nll_t, dof = _fit_half_t(sample)
    mix = _fit_mixture(sample)
    residual = np.full(n, np.nan)
    residual[known] = a
    out.update(residual=residual, power=power, dof=dof, scale=scale)
    if mix is None:
        return out
    m = len(sample)
    gain = (2 * nll_t + 2 * np.log(m)) - (2 * mix["nll"] + 4 * np.log(m))
    posterior = np.zeros(n)
    posterior[known] = _posterior(a, mix)
    out.update(gain=float(gain), posterior=posterior)
    if gain > _MIN_BIC_GAIN:
        out["flagged"] = (posterior > 0.5) & (residual > np.nanmedian(residual))
    return out


def _fit_half_t(a: np.ndarray) -> tuple[float, float]:
    """(negative log-likelihood, degrees of freedom) of the best half Student-t for a (m,) > 0."""
    from scipy import optimize, stats

    best = (np.inf, _T_DOF[-1])
    centre = float(np.log(np.median(a) + 1e-12))
    for dof in _T_DOF:
        def nll(log_s: float, dof: float = dof) -> float:
            return float(-(np.log(2) + stats.t.logpdf(a / np.exp(log_s), dof) - log_s).sum())
        r = optimize.minimize_scalar(nll, bounds=(centre - 6, centre + 4), method="bounded")
        if r.fun < best[0]:
            best = (float(r.fun), dof)
    return best


def _fit_mixture(a: np.ndarray, iterations: int = 200) -> dict | None:
    """A half-normal bulk (scale sigma) plus a normal group (mu, tau), weight pi of the group, by EM on a (m,),
    seeded by the Bonferroni bound of the bulk; None when no sample passes it."""
    m = len(a)
    from scipy import stats

    bound = stats.norm.ppf(1 - _ALPHA / (2 * m))
    w = (a > bound).astype(np.float64)
    if w.sum() < 2:
        return None
    params = None
    ll = np.zeros(m)
    for _ in range(iterations):
        pi = float(np.clip(w.mean(), 1e-6, 1 - 1e-6))
        sigma = float(np.sqrt(((1 - w) * a**2).sum() / max((1 - w).sum(), 1e-9)))
        mu = float((w * a).sum() / max(w.sum(), 1e-9))
        tau = float(np.sqrt((w * (a - mu) ** 2).sum() / max(w.sum(), 1e-9))) + 1e-6 * sigma
        new = (pi, sigma, mu, tau)
        w, ll = _responsibilities(a, new)
        if params is not None and np.allclose(new, params, rtol=1e-6, atol=0):
            break
        params = new
        if w.sum() < 1:  # the group emptied: one population after all
            return None
    pi, sigma, mu, tau = params
    return {"nll": float(-ll.sum()), "pi": pi, "sigma": sigma, "mu": mu, "tau": tau}


def _responsibilities(a: np.ndarray, params: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(posterior of the group (m,), log-likelihood per sample (m,)) under (pi, sigma, mu, tau)."""
    pi, sigma, mu, tau = params
    l0 = np.log1p(-pi) + np.log(2) - 0.5 * (a / sigma) ** 2 - np.log(sigma) - 0.5 * np.log(2 * np.pi)
    l1 = np.log(pi) - 0.5 * ((a - mu) / tau) ** 2 - np.log(tau) - 0.5 * np.log(2 * np.pi)
    top = np.maximum(l0, l1)
    ll = top + np.log(np.exp(l0 - top) + np.exp(l1 - top))
    return np.exp(l1 - ll), ll


def _posterior(a: np.ndarray, mix: dict) -> np.ndarray:
    return _responsibilities(a, (mix["pi"], mix["sigma"], mix["mu"], mix["tau"]))[0]
