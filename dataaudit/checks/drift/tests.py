"""Two-sample tests of the drift check: is an epoch's data distributed as the reference epoch's?

- `ks_columns`: the two-sample Kolmogorov-Smirnov test of every column (projected input
  dimension) at once, vectorised over columns, with scipy's p-value (the `kstwo` distribution
  at the effective sample size n m / (n + m), as `scipy.stats.ks_2samp(method="asymp")`);
- `mmd_test`: a maximum mean discrepancy permutation test (Gaussian RBF kernel, bandwidth by the
  median heuristic on the reference), all permutations in one matrix product;
- `chi2_scan`: class counts of each epoch against the first epoch's;
- `holm`: the multiple-testing correction, over dimensions and over epochs.

Two backends compute the KS and MMD p-values: "scipy" (the default: scipy and numpy only) and
"alibi" (alibi-detect's `KSDrift` and `MMDDrift` with `backend="pytorch"`, from the optional
`dataaudit[alibi]` extra, imported on first use). They make the same decisions; the alibi MMD
draws its own permutations (torch's generator), so its p-value differs by permutation noise.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

BACKENDS = ("scipy", "alibi")
# The environment variable that picks the backend when the check is not told (`analyze` runs checks by name).
BACKEND_ENV = "DATAAUDIT_DRIFT_BACKEND"
# Permutations of the MMD test: its smallest p-value is 1 / (1 + permutations), well below alpha = 0.01.
MMD_PERMUTATIONS = 500


def resolve_backend(backend: str | None) -> str:
    """The backend to use: `backend`, else $DATAAUDIT_DRIFT_BACKEND, else "scipy"; an unknown name raises."""
    name = backend if backend is not None else (os.environ.get(BACKEND_ENV) or "scipy")
    name = name.strip().lower()
    if name not in BACKENDS:
        source = "backend" if backend is not None else f"${BACKEND_ENV}"
        raise ValueError(f"drift {source} must be one of {BACKENDS}; got {name!r}")
    if name == "alibi":
        alibi_cd()  # fail here, with the install hint, rather than halfway through the check
    return name


# ------------------------------------------------------------ Kolmogorov-Smirnov


def ks_columns(x_ref: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-sample KS test of each column of `x` against the same column of `x_ref`.

    Parameters
    ----------
    x_ref : (n, d) reference sample; x : (m, d) sample to compare. Finite values, n, m >= 1.

    Returns
    -------
    (statistic, p_value), each (d,): the largest distance between the two empirical CDFs, and its
    two-sided p-value.
    """
    return _ks_sorted(np.sort(np.asarray(x_ref).T, axis=1), x)


def _ks_sorted(ref_rows: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`ks_columns` against a reference already sorted and transposed: ref_rows (d, n), each row ascending
    (a scan sorts its reference once)."""
    from scipy.stats import kstwo

    n, m = ref_rows.shape[1], len(x)
    # (d, n + m): two ascending runs per row, so the stable sort is a linear merge; rows are contiguous
    # (sorting along the strided axis 0 of an (N, d) array was 2-3x slower)
    pooled = np.concatenate([ref_rows, np.sort(np.asarray(x, dtype=ref_rows.dtype).T, axis=1)], axis=1)
    order = np.argsort(pooled, axis=1, kind="stable")
    values = np.take_along_axis(pooled, order, axis=1)
    # the CDF gap times n m after each pooled value, in exact integers; with ties only the last of a run counts
    gap = np.abs(np.cumsum(np.where(order < n, m, -n), axis=1))
    last_of_run = np.ones(values.shape, bool)
    last_of_run[:, :-1] = values[:, 1:] != values[:, :-1]
    statistic = np.where(last_of_run, gap, 0).max(axis=1) / (n * m)
    p_value = np.clip(kstwo.sf(statistic, np.round(n * m / (n + m))), 0.0, 1.0)
    return statistic, p_value


def ks_scan(reservoir: dict[int, tuple[np.ndarray, np.ndarray]], epochs: list[int], *, backend: str = "scipy",
            min_rows: int = 20) -> dict[str, Any]:
    """KS test of each epoch's reservoir against the first usable epoch's, per projected dimension.

    Parameters
    ----------
    reservoir : epoch -> (ids (r,), projected inputs (r, k)).
    epochs : (T,) the epochs judged, ascending.
    backend : "scipy" or "alibi".
    min_rows : reservoirs with fewer finite rows are not tested.

    Returns
    -------
    dict: reference (epoch or None); p_value (T,) Holm-adjusted over the dimensions (for the smallest
    p-value that is min(1, k p_min), Bonferroni's), NaN where untested; statistic (T,) the largest KS
    distance over the dimensions; tested (T,) bool.
    """
    t = len(epochs)
    out = {"reference": None, "p_value": np.full(t, np.nan), "statistic": np.full(t, np.nan),
           "tested": np.zeros(t, bool)}
    samples = {i: _finite_rows(reservoir[e][1]) for i, e in enumerate(epochs) if e in reservoir}
    usable = [i for i in sorted(samples) if len(samples[i]) >= min_rows]
    if len(usable) < 2:
        return out
    # The first epoch is the reference: a change at epoch 1 stays visible, and every later epoch is
    # compared with data that cannot have drifted yet (a rolling window would absorb a slow drift).
    ref_index = usable[0]
    x_ref = samples[ref_index]
    out["reference"] = int(epochs[ref_index])
    alibi_score = _alibi_ks(x_ref) if backend == "alibi" else None
    ref_rows = np.sort(x_ref.T, axis=1)
    for i in usable[1:]:
        statistic, p = alibi_score(samples[i]) if alibi_score else _ks_sorted(ref_rows, samples[i])
        out["p_value"][i] = min(1.0, float(np.min(p)) * len(p))
        out["statistic"][i] = float(np.max(statistic))
        out["tested"][i] = True
    return out


def _finite_rows(x: np.ndarray) -> np.ndarray:
    """The rows of x (r, k) without a non-finite value, as float32 (the feature-scale check reports those)."""
    x = np.asarray(x, dtype=np.float32)
    keep = np.isfinite(x).all(axis=1)
    return x if keep.all() else x[keep]


def _alibi_ks(x_ref: np.ndarray):
    """score(x) -> (statistic (k,), p (k,)) from alibi-detect's KSDrift (scipy's asymptotic KS per feature)."""
    detector = alibi_cd().KSDrift(np.array(x_ref, dtype=np.float32), p_val=0.01, correction="bonferroni")

    def score(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p, dist = detector.score(np.asarray(x, dtype=np.float32))
        return np.asarray(dist, np.float64), np.asarray(p, np.float64)

    return score


# ------------------------------------------------------------------------- MMD


def mmd_test(x_ref: np.ndarray, x: np.ndarray, *, permutations: int = MMD_PERMUTATIONS, seed: int = 0,
             backend: str = "scipy") -> tuple[float, float]:
    """MMD permutation test of `x` against `x_ref`, with a Gaussian RBF kernel.

    Parameters
    ----------
    x_ref : (n, k) reference sample; x : (m, k) sample to compare; n, m >= 2, finite values.
    permutations : how many random relabellings of the pooled sample make the null distribution.
    seed : seeds the permutations (the result is deterministic; no global random state is touched).
    backend : "scipy" (numpy) or "alibi" (alibi-detect's MMDDrift, backend="pytorch").

    Returns
    -------
    (p_value, mmd2): the permutation p-value (1 + #{permuted >= observed}) / (1 + permutations),
    and the unbiased estimate of the squared MMD.

    The bandwidth follows the median heuristic on the reference, as alibi-detect's: the kernel is
    exp(-|a - b|^2 / median squared distance between distinct reference rows).
    """
    if backend == "alibi":
        return _alibi_mmd(x_ref, x, permutations=permutations, seed=seed)
    n, m = len(x_ref), len(x)
    z = np.concatenate([x_ref, x]).astype(np.float64)
    sq_norms = np.einsum("ij,ij->i", z, z)
    dist = np.maximum(sq_norms[:, None] + sq_norms[None, :] - 2.0 * (z @ z.T), 0.0)  # (N, N) squared distances
    ref_pairs = dist[:n, :n][np.triu_indices(n, k=1)]
    bandwidth = float(np.median(ref_pairs))
    if bandwidth <= 0:  # a reference of (mostly) repeated rows: any positive scale of the data will do
        positive = dist[dist > 0]
        bandwidth = float(np.median(positive)) if len(positive) else 1.0
    kernel = np.exp(-dist / bandwidth)
    np.fill_diagonal(kernel, 0.0)  # the unbiased estimate leaves out k(a, a)
    rng = np.random.default_rng(seed)
    # (1 + permutations, N) membership of the first sample: the observed split first, then relabellings
    member = np.zeros((1 + permutations, n + m))
    member[0, :n] = 1.0
    member[1:] = rng.random((permutations, n + m)).argsort(axis=1) < n
    total, row_sums = kernel.sum(), kernel.sum(axis=1)
    within_first = np.einsum("bi,bi->b", member @ kernel, member)
    across = member @ row_sums - within_first
    within_second = total - within_first - 2.0 * across
    mmd2 = within_first / (n * (n - 1)) + within_second / (m * (m - 1)) - 2.0 * across / (n * m)
    p_value = (1.0 + np.count_nonzero(mmd2[1:] >= mmd2[0])) / (1.0 + permutations)
    return float(p_value), float(mmd2[0])


def _alibi_mmd(x_ref: np.ndarray, x: np.ndarray, *, permutations: int, seed: int) -> tuple[float, float]:
    """alibi-detect's MMDDrift (backend="pytorch") on one CPU thread, leaving torch's global random state alone."""
    import torch

    threads = torch.get_num_threads()
    try:
        # A (512, 512) kernel matrix gains nothing from intra-op threads; on a busy CPU they only spin.
        torch.set_num_threads(1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            detector = alibi_cd().MMDDrift(np.array(x_ref, dtype=np.float32), backend="pytorch", p_val=0.01,
                                           n_permutations=permutations, device="cpu")
            result = detector.predict(np.array(x, dtype=np.float32))
    finally:
        torch.set_num_threads(threads)
    return float(result["data"]["p_val"]), float(result["data"]["distance"])


def alibi_cd() -> Any:
    """alibi_detect.cd, imported on first use: it takes seconds (it pulls transformers), which
    `import dataaudit` and the default backend must not pay."""
    import warnings

    try:
        with warnings.catch_warnings():
            # its import scripts functions with torch.jit, deprecated in recent torch: alibi's to fix, not the user's
            warnings.simplefilter("ignore", DeprecationWarning)
            import alibi_detect.cd
    except ImportError as error:
        raise ImportError(f"the drift check's alibi backend needs alibi-detect: pip install \"dataaudit[alibi]\" "
                          f"(or unset ${BACKEND_ENV} for the default scipy backend); importing it failed: {error}"
                          ) from error
    return alibi_detect.cd


# --------------------------------------------------------------- class counts


def chi2_scan(counts: np.ndarray) -> np.ndarray:
    """Chi-square p-value of each epoch's class counts (T, classes) against the first epoch's, shape (T,)
    (NaN: untested)."""
    from scipy.stats import chi2_contingency

    p = np.full(len(counts), np.nan)
    if counts.shape[1] == 0 or counts[0].sum() == 0:
        return p
    for i in range(1, len(counts)):
        table = counts[[0, i]]
        table = table[:, table.sum(0) > 0]
        if table[1].sum() == 0:
            continue
        if table.shape[1] < 2:  # one class in both epochs: nothing can have moved
            p[i] = 1.0
            continue
        p[i] = float(chi2_contingency(table, correction=False)[1])
    return p


# ------------------------------------------------------ multiple testing


def holm(p: np.ndarray, alpha: float) -> np.ndarray:
    """Holm's step-down rejections of p (m,): controls the family-wise error at alpha under any dependence
    (every epoch is compared with the same reference, so the tests are correlated)."""
    m = len(p)
    reject = np.zeros(m, bool)
    for rank, i in enumerate(np.argsort(p, kind="stable")):
        if p[i] > alpha / (m - rank):
            break
        reject[i] = True
    return reject


def rejected(p: np.ndarray, tested: np.ndarray, alpha: float) -> np.ndarray:
    """Holm's rejections among the tested epochs, shape (T,) bool (untested: False)."""
    out = np.zeros(len(p), bool)
    index = np.flatnonzero(tested)
    out[index] = holm(p[index], alpha)
    return out
