"""Tracker overhead on a realistic loop, as a ratio against the same loop untracked.

MLP 256 -> 512 -> 512 -> 10 on 20,000 x 256 inputs, batch 256, on the CPU; the
tracked loop records losses, logits, targets and inputs and watches the
optimizer. Untracked (U) and tracked (T) epochs alternate in one process,
U T U T ... U; each tracked epoch is compared with the mean of the untracked
epochs either side of it, so that the machine's drifting speed cancels. The
figure is the median of those ratios, with its interquartile range.

    python benchmarks/bench_overhead.py [--rounds 30] [--activations K]

--activations K turns on the activation probe (`watch(activations=K)`: the ReLUs
of the MLP are probed every K optimizer steps; 0, the default, leaves it off).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--samples", type=int, default=20_000)
    ap.add_argument("--without", nargs="*", default=[], choices=["inputs", "logits", "watch"],
                    help="leave parts of the capture out, to see what each costs")
    ap.add_argument("--activations", type=int, default=0,
                    help="probe dead/saturated units every K steps (watch(activations=K)); 0: off")
    args = ap.parse_args()

    import dataaudit

    torch.manual_seed(0)
    X = torch.randn(args.samples, 256)
    y = torch.randint(0, 10, (args.samples,))
    loader = DataLoader(TensorDataset(X, y), batch_size=256, shuffle=True)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def extra(logits, xb) -> dict:
        return {**({} if "logits" in args.without else {"logits": logits}),
                **({} if "inputs" in args.without else {"inputs": xb})}

    def epoch(batches, tracker=None) -> tuple[float, float, float]:
        start, cpu, own = time.perf_counter(), time.process_time(), time.thread_time()
        for xb, yb in batches:
            logits = model(xb)
            losses = F.cross_entropy(logits, yb, reduction="none")
            if tracker is not None:
                tracker.record(losses, targets=yb, **extra(logits, xb))
            opt.zero_grad()
            losses.mean().backward()
            opt.step()
        return time.perf_counter() - start, time.process_time() - cpu, time.thread_time() - own

    with tempfile.TemporaryDirectory() as tmp:
        tracker = dataaudit.Tracker(f"{tmp}/run")
        wrapped = tracker.wrap(loader)
        epoch(loader)  # warm-up
        untracked, tracked = [epoch(loader)], []
        for _ in range(args.rounds):
            if "watch" not in args.without:
                tracker.watch(opt, model=model, activations=args.activations)
            tracked.append(epoch(wrapped, tracker))
            if tracker._watch is not None:  # the untracked epochs run without the optimizer hooks
                tracker._watch.remove()
                tracker._probes.remove()
                tracker._watch = tracker._probes = None
            untracked.append(epoch(loader))
        tracker.close()

    # the training thread's own CPU time is what the hooks and record() add to each step; unlike the wall
    # clock it barely moves when other processes share the machine
    for i, name in ((0, "wall clock"), (1, "CPU time"), (2, "training thread CPU time")):
        pairs = zip(tracked, untracked, untracked[1:], strict=False)
        ratios = sorted(t[i] / ((a[i] + b[i]) / 2) - 1 for t, a, b in pairs)
        q1, med, q3 = statistics.quantiles(ratios, n=4)
        without = f" without {', '.join(args.without)}" if args.without else ""
        if args.activations:
            without += f", activation probe every {args.activations} steps"
        print(f"tracker overhead{without}, {name}: {med:+.1%} "
              f"(interquartile {q1:+.1%} to {q3:+.1%}, {args.rounds} rounds)")
    print(f"untracked epoch {statistics.median(u[0] for u in untracked) * 1000:.0f} ms, "
          f"tracked {statistics.median(t[0] for t in tracked) * 1000:.0f} ms; target <= 5%, aim 2%")


if __name__ == "__main__":
    main()
