"""The record-level analysis on DuckDB, out of core, next to the in-memory `analyze` on the same run.

Builds (or reuses, with --keep DIR) bench_scale's synthetic run (10 classes, 10% of the labels flipped,
probabilities stored) and times `dataaudit.engines.duckdb.analyze_records` in a fresh subprocess with
DuckDB's memory limited (default 1 GB) and its threads limited, measuring its wall time, peak resident
memory (the child's VmHWM) and the most disk its temporary folder held (working tables and spill). Then,
where the run fits (--in-memory, on by default up to 2*10^7 rows), `dataaudit.analyze` on the same run,
measured the same way, how far the two agree (curve, coverage, label candidates), and both candidate sets'
precision and recall against the planted flips.

    python benchmarks/bench_duckdb.py [--n 1000000] [--epochs 20] [--memory-limit 1GB 256MB] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import CLASSES, NOISE, capture  # noqa: E402

# Peak resident memory of this process: VmHWM, the high-water mark of its own address space. Not ru_maxrss:
# subprocess starts the child with vfork, and Linux carries the parent's peak (here torch and the captured
# run) into the child's ru_maxrss, which then reads the larger of the two.
_PEAK = r"""
import resource
def peak_rss_mb():
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):  # not Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
"""

# In a fresh interpreter, so that the peak memory is the DuckDB analysis' alone (plus imports); a thread
# samples the size of its temporary folder (working tables and spill), DuckDB's out-of-core footprint on disk.
_CHILD = _PEAK + r"""
import json, os, sys, threading, time
from pathlib import Path
run_dir, limit, threads, temp, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]), sys.argv[5]
confident = sys.argv[6] == "1"
peak_disk, done = [0], threading.Event()
def watch():
    while not done.wait(0.25):
        size = sum(f.stat().st_size for f in temp.rglob("*") if f.is_file()) if temp.exists() else 0
        peak_disk[0] = max(peak_disk[0], size)
threading.Thread(target=watch, daemon=True).start()
t0 = time.perf_counter()
from dataaudit.engines.duckdb import analyze_records
t1 = time.perf_counter()
r = analyze_records(run_dir, memory_limit=limit, threads=threads, temp_directory=temp, samples_path=out,
                    confident_learning=confident)
t2 = time.perf_counter()
done.set()
r.curve.to_json(out + ".curve.json"); r.coverage.to_json(out + ".coverage.json")
r.label_issues.to_parquet(out + ".issues.parquet")
print(json.dumps({"import_s": t1 - t0, "duckdb_s": t2 - t1,
                  "peak_rss_mb": peak_rss_mb(),
                  "spill_peak_mb": peak_disk[0] / 2**20, "rows": r.settings["rows"], "files": r.settings["files"],
                  "label_issues": len(r.label_issues), "window": r.labels.get("window"),
                  "evidence": r.labels.get("evidence")}))
"""

# The in-memory `analyze` of the same run, timed as bench_scale times it (without the HTML report), and
# the figures to compare with: curve, coverage and label issues.
_IN_MEMORY = _PEAK + r"""
import json, sys, time
t0 = time.perf_counter()
import dataaudit
from dataaudit.checks import curves
t1 = time.perf_counter()
run = dataaudit.load_run(sys.argv[1])
audit = dataaudit.analyze(run)
t2 = time.perf_counter()
peak = peak_rss_mb()
curves.epoch_losses(run.train).to_json(sys.argv[2] + ".curve.json")
run.coverage.drop(columns="order_hash").to_json(sys.argv[2] + ".coverage.json")
print(json.dumps({"analyze_s": t2 - t1, "peak_rss_mb": peak, "label_issues": [int(i) for i in audit.label_issues]}))
"""


def _child(*args: str) -> dict:
    """Run python -c args in a fresh interpreter; its last line of output, read as JSON."""
    out = subprocess.run([sys.executable, "-c", *args], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"benchmark child failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_duckdb(run_dir: Path, memory_limit: str, threads: int, work: Path, confident: bool = True) -> dict:
    """analyze_records in a fresh subprocess: wall time, peak RSS, peak temp disk; its tables written to `work`."""
    result = _child(_CHILD, str(run_dir), memory_limit, str(threads), str(work / "spill"),
                    str(work / "samples.parquet"), "1" if confident else "0")
    result["samples_parquet_mb"] = (work / "samples.parquet").stat().st_size / 2**20
    return result


def measure_in_memory(run_dir: Path, work: Path) -> dict:
    """`analyze` in a fresh subprocess: its wall time and peak RSS, and how far DuckDB's curve, coverage and
    label candidates (from the measure_duckdb run in `work`) agree with its own."""
    import numpy as np
    import pandas as pd

    result = _child(_IN_MEMORY, str(run_dir), str(work / "memory"))
    memory_issues = set(result.pop("label_issues"))
    (work / "memory.issues.json").write_text(json.dumps(sorted(memory_issues)))
    duck_issues = set(pd.read_parquet(work / "samples.parquet.issues.parquet")["sample_id"].tolist())
    curve_duck = pd.read_json(work / "samples.parquet.curve.json")
    curve_mem = pd.read_json(work / "memory.curve.json")
    cov_duck = pd.read_json(work / "samples.parquet.coverage.json")
    cov_mem = pd.read_json(work / "memory.coverage.json")
    return {
        **result,
        "curve_loss_max_diff": float(np.abs(curve_duck["loss"].to_numpy() - curve_mem["loss"].to_numpy()).max()),
        "curve_accuracy_max_diff": float(np.abs(curve_duck["accuracy"].to_numpy()
                                                - curve_mem["accuracy"].to_numpy()).max()),
        "coverage_equal": bool((cov_duck[["seen", "unique", "missing", "duplicates"]].to_numpy()
                                == cov_mem[["seen", "unique", "missing", "duplicates"]].to_numpy()).all()),
        "issues_in_memory": len(memory_issues), "issues_duckdb": len(duck_issues),
        "issues_common": len(memory_issues & duck_issues),
    }


def planted(work: Path, n: int, seed: int = 0) -> set[int] | None:
    """The ids whose labels bench_scale's capture flipped (its first draws, replayed), or None when the run's
    labels are not the replayed ones (a run captured otherwise)."""
    import pandas as pd
    import torch

    g = torch.Generator().manual_seed(seed)
    true = torch.randint(0, CLASSES, (n,), generator=g)
    flip = torch.rand(n, generator=g) < NOISE
    given = torch.where(flip, (true + torch.randint(1, CLASSES, (n,), generator=g)) % CLASSES, true)
    samples = pd.read_parquet(work / "samples.parquet", columns=["sample_id", "label"])
    if len(samples) != n or not (given.numpy()[samples["sample_id"].to_numpy()] == samples["label"].to_numpy()).all():
        return None
    return set(torch.nonzero(flip).flatten().tolist())


def _prf(found: set[int], truth: set[int]) -> str:
    hit = len(found & truth)
    precision, recall = hit / max(len(found), 1), hit / max(len(truth), 1)
    return f"precision {precision:.3f}, recall {recall:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--memory-limit", nargs="+", default=["1GB"], help="DuckDB memory limits to time")
    ap.add_argument("--threads", type=int, default=1, help="DuckDB threads (the benchmark machine is shared)")
    ap.add_argument("--keep", type=Path, default=None, help="write the run under this folder, or reuse it there")
    ap.add_argument("--margin-only", action="store_true",
                    help="also time the analysis without confident learning (confident_learning=False)")
    ap.add_argument("--in-memory", action=argparse.BooleanOptionalAction, default=None,
                    help="also time dataaudit.analyze on the run (default: when n x epochs <= 2*10^7)")
    args = ap.parse_args()
    in_memory = args.in_memory if args.in_memory is not None else args.n * args.epochs <= 20_000_000

    with tempfile.TemporaryDirectory() as tmp:
        base = args.keep or Path(tmp)
        run_dir = base / f"scale-{args.n}x{args.epochs}"  # bench_scale's name: the two share runs
        if not (run_dir / "manifest.json").is_file():
            capture(run_dir, args.n, args.epochs)
        store_mb = sum(f.stat().st_size for f in (run_dir / "records").rglob("*.parquet")) / 2**20
        rows = []
        for limit in args.memory_limit:
            work = Path(tempfile.mkdtemp(dir=tmp))
            row = {"memory_limit": limit, **measure_duckdb(run_dir, limit, args.threads, work)}
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
        memory = measure_in_memory(run_dir, work) if in_memory else {}
        if args.margin_only:  # after the comparison, which reads `work` of the full rule
            row = {"memory_limit": args.memory_limit[0] + ", margin rule",
                   **measure_duckdb(run_dir, args.memory_limit[0], args.threads, Path(tempfile.mkdtemp(dir=tmp)),
                                    confident=False)}
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
        if memory:
            print(json.dumps(memory), file=sys.stderr, flush=True)
        truth = planted(work, args.n)
        scores = ""
        if truth is not None:
            import pandas as pd

            duck = set(pd.read_parquet(work / "samples.parquet.issues.parquet")["sample_id"].tolist())
            scores = f"against the {len(truth):,} planted flips: duckdb {_prf(duck, truth)}"
            if memory:
                found = set(json.loads((work / "memory.issues.json").read_text()))
                scores += f"; in-memory analyze {_prf(found, truth)}"

    print(f"\nrun: {args.n:,} samples x {args.epochs} epochs, records store {store_mb:,.0f} MB on disk "
          f"({rows[0]['files']} files, {rows[0]['rows']:,} rows); DuckDB threads={args.threads}")
    print(f"{'engine':<30} {'wall':>8} {'peak RSS':>9} {'temp disk':>11}  label candidates")
    for r in rows:
        print(f"{'duckdb ' + r['memory_limit']:<30} {r['duckdb_s']:>7.1f}s {r['peak_rss_mb']:>7.0f}MB "
              f"{r['spill_peak_mb']:>9.0f}MB  {r['label_issues']:,} (window {r['window']}, evidence {r['evidence']})")
    if memory:
        print(f"{'in-memory analyze':<30} {memory['analyze_s']:>7.1f}s {memory['peak_rss_mb']:>7.0f}MB "
              f"{'-':>11}  {memory['issues_in_memory']:,}")
        print(f"agreement: curve loss max |diff| {memory['curve_loss_max_diff']:.2e}, accuracy "
              f"{memory['curve_accuracy_max_diff']:.2e}, coverage equal: {memory['coverage_equal']}; "
              f"label candidates in both: {memory['issues_common']:,}")
    if scores:
        print(scores)
    print("DuckDB's figures include writing the per-sample table to Parquet; temp disk: the most its temporary "
          "folder held (working tables and spill); peak RSS: each child's VmHWM")

if __name__ == "__main__":
    main()
