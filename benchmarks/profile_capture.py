"""Where the capture's host time goes, for the loop of bench_overhead.py: a profile of the training thread
and the writer thread's time per kind of job.

    python benchmarks/profile_capture.py [--device cuda] [--model conv] [--optimizer adam] [--runs 3]

The training thread is profiled with cProfile over a few tracked runs (after a warm-up run), and its
functions are printed by their own time (tottime), dataaudit's and torch's alike. The writer thread's
jobs (record chunks, sketches, steps, manifests) are timed by wrapping them, in thread CPU time.
"""
from __future__ import annotations

import argparse
import collections
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_overhead  # noqa: E402

WRITER_JOBS = [("dataaudit.track.epoch", "EpochBuffer", "process"), ("dataaudit.track.epoch", "EpochBuffer", "finish"),
               ("dataaudit.track.optim", None, "write_steps"), ("dataaudit.store", None, "write_text_atomic"),
               ("dataaudit.store", None, "write_parquet_atomic"), ("dataaudit.track.epoch", None, "records_columns")]


def _time_writer_jobs() -> dict[str, list[float]]:
    """Wrap the writer's jobs to add up their thread CPU time (seconds) and count their calls."""
    import importlib

    spent: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    for module_name, cls, name in WRITER_JOBS:
        owner = importlib.import_module(module_name)
        owner = getattr(owner, cls) if cls else owner
        original = getattr(owner, name)
        label = f"{cls or module_name.rsplit('.', 1)[-1]}.{name}"

        def timed(*args, _original=original, _label=label, **kwargs):
            start = time.thread_time()
            try:
                return _original(*args, **kwargs)
            finally:
                spent[_label][0] += time.thread_time() - start
                spent[_label][1] += 1
        setattr(owner, name, timed)
    return spent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="mlp", choices=["mlp", "conv"])
    ap.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    ap.add_argument("--samples", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args()
    spent = _time_writer_jobs()
    loop = bench_overhead.Loop(args.optimizer, args.samples, [], 0, args.device, args.model)
    with tempfile.TemporaryDirectory() as tmp:
        loop.run(Path(tmp) / "warm-up")
        spent.clear()
        profile = cProfile.Profile()
        results = []
        for i in range(args.runs):
            profile.enable()
            results.append(loop.run(Path(tmp) / f"run-{i}"))
            profile.disable()
    per_run = 1e3 / args.runs
    print(f"{args.model} {args.optimizer} on {args.device}, {args.samples:,} samples x {bench_overhead.EPOCHS} "
          f"epochs, {args.runs} profiled runs; per run: wall {sum(r['wall'] for r in results) * per_run:.0f} ms, "
          f"record() {sum(r['record'] for r in results) * per_run:.1f} ms, "
          f"writer thread {sum(r['writer'] for r in results) * per_run:.1f} ms CPU")
    print("\nwriter thread, per run (jobs nest: process holds records_columns and a write_parquet_atomic):")
    for label, (seconds, calls) in sorted(spent.items(), key=lambda kv: -kv[1][0]):
        print(f"  {label:32} {seconds * per_run:8.2f} ms  {calls / args.runs:6.1f} calls")
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("tottime").print_stats(args.top)
    print("\ntraining thread (cProfile, all profiled runs together):")
    text = out.getvalue()
    print("   ncalls" + text.split("ncalls", 1)[1] if "ncalls" in text else text)


if __name__ == "__main__":
    main()
