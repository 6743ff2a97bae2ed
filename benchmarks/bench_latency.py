"""Interactive latency: `dataaudit --help`, `import dataaudit`, and `analyze` of the demo run.

Each figure is the median of `--repeat` fresh processes (so imports count, as they do for a user). The demo
run (digits, 1,797 samples x 30 epochs, 20% of the labels flipped) is trained once by `dataaudit.demo`.
Also lists the heavy libraries `import dataaudit` loads eagerly (it should load none).

    python benchmarks/bench_latency.py [--repeat 5]

Targets (issue 14): `--help` within 0.3 s, analyze of the demo run within 3 s.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAVY = ("torch", "pandas", "pyarrow", "scipy", "sklearn", "matplotlib", "cleanlab")


def timed(args: list[str], repeat: int) -> float:
    """Median wall time of `repeat` runs of the command, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(args, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    py = sys.executable
    script = Path(py).parent / "dataaudit"   # the console script a user runs
    cli = [str(script)] if script.exists() else [py, "-m", "dataaudit.cli"]
    help_s = timed([*cli, "--help"], args.repeat)
    import_s = timed([py, "-c", "import dataaudit"], args.repeat)
    probe = f"import sys, dataaudit; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    eager = subprocess.run([py, "-c", probe], check=True, capture_output=True, text=True).stdout.split()
    with tempfile.TemporaryDirectory() as tmp:
        from dataaudit.demo import digits_with_noise, train_mlp

        run_dir = Path(tmp) / "run"
        X, y, _ = digits_with_noise(0.2, 0)
        train_mlp(run_dir, X, y, epochs=30, batch_size=64, lr=1e-3, hidden=128, depth=2, seed=0)
        analyze_s = timed([py, "-c", f"import dataaudit; dataaudit.analyze({str(run_dir)!r})"], args.repeat)
    print(f"dataaudit --help: {help_s:.2f} s (target <= 0.3 s); import dataaudit: {import_s:.2f} s; "
          f"heavy libraries imported eagerly: {', '.join(eager) or 'none'}")
    print(f"analyze of the demo run (1,797 samples x 30 epochs), whole process: {analyze_s:.2f} s (target <= 3 s; "
          f"median of {args.repeat})")


if __name__ == "__main__":
    main()
