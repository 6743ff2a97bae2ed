"""Label-issue precision, recall and F1: dataaudit against cleanlab's standard usage and AUM alone.

Each case trains a tracked MLP (hidden 128 x 2, Adam 1e-3, batch 64, 50 epochs) on a bundled or
generated dataset with planted label noise, then compares, on the same data in the same run:

- dataaudit: `dataaudit.checks.labels` on the tracked run (no extra training);
- cleanlab standard: 5-fold cross-validated logistic regression + cleanlab.filter.find_label_issues;
- AUM alone: samples whose area under the margin (mean margin over epochs 1..) is below zero.

    python benchmarks/bench_labels.py [--cache DIR] [--quick]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fixtures.label_noise import Case, cleanlab_standard, prf, run_case  # noqa: E402

CASES = [
    Case("digits", "symmetric", 0.2), Case("digits", "symmetric", 0.4), Case("digits", "pairwise", 0.2),
    Case("digits", "pairwise", 0.35), Case("wine", "symmetric", 0.3), Case("wine", "pairwise", 0.2),
    Case("breast_cancer", "symmetric", 0.2), Case("synthetic", "symmetric", 0.3),
    Case("synthetic", "pairwise", 0.2),
]


def aum_alone(run) -> np.ndarray:
    r = run.records[run.records["epoch"] >= 1]
    aum = r.groupby("sample_id")["margin"].mean()
    return aum.index[aum.to_numpy() < 0].to_numpy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default=None, help="keep the tracked runs here and reuse them")
    ap.add_argument("--quick", action="store_true", help="the first four cases only")
    args = ap.parse_args()

    import dataaudit
    from dataaudit.checks import labels

    root = Path(args.cache or tempfile.mkdtemp(prefix="bench-labels-"))
    cases = CASES[:4] if args.quick else CASES
    header = f"{'case':28s} {'method':18s} {'flagged':>7s} {'precision':>9s} {'recall':>7s} {'F1':>6s}"
    print(header)
    print("-" * len(header))
    wins = 0
    for case in cases:
        run_dir, X, y, flipped = run_case(case, root)
        run = dataaudit.load_run(run_dir)
        start = time.perf_counter()
        ours = labels.check(run).details["label_issues"]
        took = time.perf_counter() - start
        rows = {"dataaudit": ours, "cleanlab standard": cleanlab_standard(X, y), "AUM alone": aum_alone(run)}
        scores = {}
        for method, found in rows.items():
            p, r, f = prf(np.asarray(found), flipped)
            scores[method] = f
            print(f"{case.name:28s} {method:18s} {len(found):7d} {p:9.3f} {r:7.3f} {f:6.3f}")
        wins += scores["dataaudit"] > scores["cleanlab standard"]
        print(f"{'':28s} (dataaudit's check took {took:.2f} s)")
    print(f"dataaudit's F1 beats cleanlab's standard usage on {wins} of {len(cases)} cases")


if __name__ == "__main__":
    main()
