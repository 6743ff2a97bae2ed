"""Scale: capture time per epoch, and `analyze` time, peak memory and report size, on large synthetic runs.

No model is trained: a loop over batches of 4096 drawn by a shuffling DataLoader
(wrapped by the tracker, so ids, draws and coverage are real) records synthetic
per-sample losses, logits, targets and 32-feature inputs. The logits sharpen
over the epochs towards each sample's true class (learning), and late in the run
towards its given label (memorisation); 10% of the labels are flipped, so the
label check has work to do. `analyze` then runs in a fresh subprocess, whose
wall time and peak resident memory (the child's VmHWM) are measured, along
with the size of the HTML report.

    python benchmarks/bench_scale.py [--sizes 100000 1000000] [--epochs 20] [--keep DIR]
    python benchmarks/bench_scale.py --curve [--large] [--keep DIR]

--curve measures analyze against samples (10^5 and 10^6 at 20 epochs) and against
epochs (20, 50 and 100 at 10^5 samples, under a row budget of a tenth of the default,
DATAAUDIT_MAX_ROWS=2,500,000: the same shape as 10^6 samples under the default budget,
in a few minutes). --large adds the points at the default budget that take long to
capture (10^6 x 50, 10^6 x 100, 10^7 x 20: about 10 GB of disk and half an hour);
capture them once with --keep DIR and they are reused.

Targets (issue 14): at 10^6 samples x 20 epochs x 10 classes analyze <= 30 s, peak memory
<= 2 GB, report <= 1 MB; 10^6 x 100 within 3 GB; 10^7 x 20 within 16 GB.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

CLASSES = 10
FEATURES = 32
BATCH = 4096
NOISE = 0.1

# Run in a fresh interpreter, so that its peak memory is analyze's alone (plus imports).
_CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import dataaudit
t1 = time.perf_counter()
audit = dataaudit.analyze(sys.argv[1])
t2 = time.perf_counter()
audit.write_html(sys.argv[2])
t3 = time.perf_counter()
held = [h for h in audit.run_summary.get("records_held", []) if h["split"] == "train"]
try:  # VmHWM: this process's own peak; ru_maxrss may carry the parent's over from the fork
    with open("/proc/self/status") as f:
        peak_kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
except (OSError, StopIteration):
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"import_s": t1 - t0, "analyze_s": t2 - t1, "html_s": t3 - t2, "peak_rss_mb": peak_kb / 1024,
                  "verdict": audit.verdict, "label_issues": len(audit.label_issues),
                  "held_epochs": len(held[0]["epochs"]) if held else None}))
"""


def capture(run_dir: Path, n: int, epochs: int, seed: int = 0) -> dict:
    """Write a tracked synthetic run of n samples x `epochs` epochs; returns capture timings (s per epoch)."""
    import dataaudit

    g = torch.Generator().manual_seed(seed)
    true = torch.randint(0, CLASSES, (n,), generator=g)
    flip = torch.rand(n, generator=g) < NOISE
    given = torch.where(flip, (true + torch.randint(1, CLASSES, (n,), generator=g)) % CLASSES, true)
    centers = torch.randn(CLASSES, FEATURES, generator=g) * 2
    inputs = centers[true] + torch.randn(n, FEATURES, generator=g)  # fixed per sample: a deterministic pipeline
    difficulty = torch.rand(n, generator=g)  # some samples are learnt later than others
    loader = DataLoader(TensorDataset(torch.arange(n)), batch_size=BATCH, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))

    def batch_logits(idx: torch.Tensor, epoch: int) -> torch.Tensor:
        learnt = (epoch / epochs * 10 - difficulty[idx] * 2).clamp(0, 5)  # sharper as the run goes on
        memorised = max(0.0, epoch / epochs - 0.7) * 16  # the given labels win late in the run
        logits = torch.randn(len(idx), CLASSES) * 0.7
        logits[torch.arange(len(idx)), true[idx]] += learnt
        logits[torch.arange(len(idx)), given[idx]] += memorised
        return logits

    def one_epoch(batches, epoch: int, tracker=None) -> float:
        start = time.perf_counter()
        for (idx,) in batches:
            logits = batch_logits(idx, epoch)
            losses = F.cross_entropy(logits, given[idx], reduction="none")
            if tracker is not None:
                tracker.record(losses, logits=logits, targets=given[idx], inputs=inputs[idx])
        return time.perf_counter() - start

    one_epoch(loader, 0)  # warm-up
    untracked = one_epoch(loader, 0)
    tracked = []
    with dataaudit.Tracker(run_dir) as tracker:
        wrapped = tracker.wrap(loader)
        for epoch in range(epochs):
            tracked.append(one_epoch(wrapped, epoch, tracker))
    return {"untracked_epoch_s": untracked, "tracked_epoch_s": float(np.median(tracked))}


def measure(run_dir: Path, html: Path, max_rows: int | None = None) -> dict:
    """analyze() in a fresh subprocess: its timings, peak RSS, and the report's size.

    max_rows : the row budget the child loads the run under (DATAAUDIT_MAX_ROWS; None: the default)."""
    env = dict(os.environ)
    env.pop("DATAAUDIT_MAX_ROWS", None)
    if max_rows is not None:
        env["DATAAUDIT_MAX_ROWS"] = str(max_rows)
    out = subprocess.run([sys.executable, "-c", _CHILD, str(run_dir), str(html)],
                         check=True, capture_output=True, text=True, env=env)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["report_kb"] = html.stat().st_size / 1024
    return result


# (samples, epochs, row budget or None for the default): analyze against samples, then against epochs
CURVE = [(100_000, 20, None), (1_000_000, 20, None),
         (100_000, 50, 2_500_000), (100_000, 100, 2_500_000)]
LARGE = [(1_000_000, 50, None), (1_000_000, 100, None), (10_000_000, 20, None)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--curve", action="store_true",
                    help="analyze time and peak memory against samples and against epochs (a few minutes)")
    ap.add_argument("--large", action="store_true",
                    help="with --curve: also 10^6 x 50, 10^6 x 100 and 10^7 x 20 (about 10 GB and half an hour)")
    ap.add_argument("--keep", type=Path, default=None,
                    help="write the runs under this folder and reuse them when they are there")
    ap.add_argument("--capture-only", action="store_true")
    args = ap.parse_args()

    if args.curve:
        points = CURVE + (LARGE if args.large else [])
    else:
        points = [(n, args.epochs, None) for n in args.sizes]
    with tempfile.TemporaryDirectory() as tmp:
        base = args.keep or Path(tmp)
        rows = []
        for n, epochs, max_rows in points:
            run_dir = base / f"scale-{n}x{epochs}"
            timing = {"untracked_epoch_s": float("nan"), "tracked_epoch_s": float("nan")}
            if not (run_dir / "manifest.json").is_file():
                timing = capture(run_dir, n, epochs)
            row = {"n": n, "epochs": epochs, "max_rows": max_rows, **timing}
            if not args.capture_only:
                row.update(measure(run_dir, base / f"scale-{n}x{epochs}.html", max_rows))
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)

    print(f"\n{'samples':>10} {'epochs':>6} {'rows':>12} {'budget':>11} {'held':>5} {'capture/epoch':>14} "
          f"{'(untracked)':>11} {'analyze':>9} {'peak RSS':>9} {'report':>8}  verdict, label issues")
    for r in rows:
        budget = f"{r['max_rows']:,}" if r["max_rows"] else "default"
        held = r.get("held_epochs") or (r["epochs"] if "held_epochs" in r else "-")
        print(f"{r['n']:>10,} {r['epochs']:>6} {r['n'] * r['epochs']:>12,} {budget:>11} {held:>5} "
              f"{r['tracked_epoch_s']:>13.2f}s {r['untracked_epoch_s']:>10.2f}s "
              f"{r.get('analyze_s', float('nan')):>8.1f}s {r.get('peak_rss_mb', float('nan')):>7.0f}MB "
              f"{r.get('report_kb', float('nan')):>6.0f}kB  {r.get('verdict', '-')}, {r.get('label_issues', '-')}")
    print("targets (issue 14): 10^6 x 20 analyze <= 30 s, peak <= 2 GB, report <= 1 MB; 10^6 x 100 <= 3 GB; "
          "10^7 x 20 <= 16 GB")
    print("held: epochs whose per-sample records were held (the default budget is 25,000,000 rows, DATAAUDIT_MAX_ROWS)")
    if args.curve and not args.large:
        print("the large points (10^6 x 50 and x 100, 10^7 x 20 at the default budget; ~10 GB of disk, ~30 min):\n"
              "    python benchmarks/bench_scale.py --curve --large --keep /path/to/scale-runs")


if __name__ == "__main__":
    main()
