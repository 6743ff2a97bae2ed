"""Scan's near-duplicates and outliers at 50,000 samples: the neighbour search against the one it replaced.

Data: 10 Gaussian classes in d dimensions (centres 3 apart per axis, unit noise), with planted copies: 100
exact duplicates, 50 near ones (1e-4 noise), and 20 far outliers (12x the spread). For each d the same
process times

- reference: what the scan did before, a k=2 sklearn search for near-duplicates and cleanlab's
  OutOfDistribution with a k=11 sklearn knn for the outliers (two searches, sklearn picking its algorithm);
- dataaudit: `dataaudit.scan.neighbors` (one exact search, `dataaudit.scan.knn`),

and checks that both give the same near-duplicate pairs, the same outliers and the same scores, and that the
planted ones are found. Then one full `scan(--pred-probs)` of the same data. Ratios come from one process,
so a busy machine slows both arms alike.

    python benchmarks/bench_neighbors.py [--n 50000] [--dims 10 32 64]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dataaudit.scan import neighbors  # noqa: E402

CLASSES, EXACT, NEAR, OUTLIERS = 10, 100, 50, 20


def make(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """(features (n, d) float32, labels (n,), the planted rows)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n)
    X = rng.normal(size=(CLASSES, d))[labels] * 3 + rng.normal(size=(n, d))
    rows = rng.choice(n, 2 * EXACT + 2 * NEAR + OUTLIERS, replace=False)
    copy, of = rows[:EXACT], rows[EXACT:2 * EXACT]
    X[copy] = X[of]
    near, near_of = rows[2 * EXACT:2 * EXACT + NEAR], rows[2 * EXACT + NEAR:2 * EXACT + 2 * NEAR]
    X[near] = X[near_of] + 1e-4 * rng.normal(size=(NEAR, d))
    far = rows[2 * EXACT + 2 * NEAR:]
    X[far] = rng.normal(size=(OUTLIERS, d)) * 12
    planted = {"exact": {tuple(sorted(p)) for p in zip(copy.tolist(), of.tolist(), strict=True)},
               "near": {tuple(sorted(p)) for p in zip(near.tolist(), near_of.tolist(), strict=True)},
               "outliers": set(far.tolist())}
    return X.astype(np.float32), labels, planted


def reference(Xs: np.ndarray) -> tuple[list[tuple[int, int, float]], np.ndarray]:
    """The scan's search before dataaudit.scan.knn: (near-duplicate pairs, outlier scores)."""
    from cleanlab.outlier import OutOfDistribution
    from sklearn.neighbors import NearestNeighbors

    _, first, inverse = np.unique(Xs, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    pairs = [(int(first[g]), i, 0.0) for i, g in enumerate(inverse) if first[g] != i]
    unique = np.sort(first)
    dist, idx = NearestNeighbors(n_neighbors=2).fit(Xs[unique]).kneighbors(Xs[unique])
    nearest = dist[:, 1]
    cutoff = neighbors.NEAR_RELATIVE * np.median(nearest)
    seen = set()
    for a in np.flatnonzero(nearest < cutoff):
        key = (int(unique[min(a, idx[a, 1])]), int(unique[max(a, idx[a, 1])]))
        if key not in seen:
            seen.add(key)
            pairs.append((*key, float(nearest[a])))
    knn = NearestNeighbors(n_neighbors=min(neighbors.OUTLIER_K + 1, len(Xs) - 1))
    scores = np.asarray(OutOfDistribution(params={"knn": knn}).score(features=Xs), dtype=np.float64)
    return sorted(pairs, key=lambda p: (p[2], p[0], p[1])), scores


def ours(Xs: np.ndarray) -> tuple[list[tuple[int, int, float]], np.ndarray]:
    near = neighbors._neighbors(Xs)
    return neighbors._compute_near_duplicates(Xs, near), neighbors._compute_outlier_scores(Xs, near)


def bench(n: int, d: int) -> dict:
    X, labels, planted = make(n, d)
    Xs = neighbors._standardise(X.astype(np.float64))
    t = time.perf_counter()
    ref_pairs, ref_scores = reference(Xs)
    ref_s = time.perf_counter() - t
    t = time.perf_counter()
    pairs, scores = ours(Xs)
    ours_s = time.perf_counter() - t
    ref_out, out = set(neighbors.find_outliers(ref_scores).tolist()), set(neighbors.find_outliers(scores).tolist())
    found = {(a, b) for a, b, _ in pairs}
    with tempfile.TemporaryDirectory() as tmp:
        from dataaudit.scan import scan

        np.savez(Path(tmp) / "data.npz", X=X, y=labels)
        probs = np.full((n, CLASSES), 0.02)
        probs[np.arange(n), labels] = 1 - 0.02 * (CLASSES - 1)
        t = time.perf_counter()
        scan(tmp, pred_probs=probs)
        scan_s = time.perf_counter() - t
    return {"d": d, "ref_s": ref_s, "ours_s": ours_s, "scan_s": scan_s,
            "same_pairs": [(a, b) for a, b, _ in pairs] == [(a, b) for a, b, _ in ref_pairs],
            "same_outliers": out == ref_out, "pairs": len(pairs), "outliers": len(out),
            "score_diff": float(np.abs(scores - ref_scores).max()),
            "planted_found": planted["exact"] <= found and planted["near"] <= found and planted["outliers"] <= out}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--dims", type=int, nargs="+", default=[10, 32, 64])
    args = ap.parse_args()
    print(f"near-duplicates and outliers among {args.n:,} samples x {CLASSES} classes "
          f"({EXACT} exact copies, {NEAR} near ones, {OUTLIERS} outliers planted)")
    print(f"{'dims':>4} {'before':>8} {'after':>7} {'ratio':>6} {'scan':>7}  same pairs, outliers; max score diff; "
          "planted found")
    failed = False
    for d in args.dims:
        r = bench(args.n, d)
        ratio = r["ref_s"] / r["ours_s"]
        print(f"{d:>4} {r['ref_s']:>7.2f}s {r['ours_s']:>6.2f}s {ratio:>5.1f}x {r['scan_s']:>6.2f}s  "
              f"{r['same_pairs']} ({r['pairs']}), {r['same_outliers']} ({r['outliers']}); {r['score_diff']:.1e}; "
              f"{r['planted_found']}", flush=True)
        failed |= not (r["same_pairs"] and r["same_outliers"] and r["planted_found"])
    print("target: a 50,000-sample scan with --pred-probs in 10 s or less, with the same results")
    if failed:
        sys.exit("the neighbour search disagrees with the reference")


if __name__ == "__main__":
    main()
