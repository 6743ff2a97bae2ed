"""Capture overhead on a realistic loop: whole runs, tracked against untracked, in one process.

MLP 256 -> 512 -> 512 -> 10 on 20,000 x 256 inputs, batch 256, on the CPU with
torch on its default threads. A tracked run creates the Tracker, wraps the
loader, watches the optimizer, records losses, logits, targets and inputs for
2 epochs and closes the Tracker, all inside the timing; an untracked run is the
same loop without any of it. Runs alternate U T U T ... U, and each tracked run
is compared with the mean of the untracked runs either side of it, so that the
machine's drifting speed cancels; the figure is the median of those ratios,
with its interquartile range. One warm-up run of each kind comes first (the
first Tracker imports pyarrow's Parquet writer).

Besides the ratio of wall times, the same ratio of the process's CPU time (all
threads: what the capture takes from a machine whose cores are all busy), and
the host CPU cost per sample of:
- record(), on the training thread;
- the writer thread (statistics, Parquet encoding, commits);
- everything else the tracked run adds to the training thread (the loader hook,
  the optimizer hooks, waiting for the epoch-end commits, create and close).

    python benchmarks/bench_overhead.py [--rounds 15] [--optimizer sgd adam]
        [--without inputs logits watch] [--activations K] [--device cuda] [--model mlp conv]

--cold N (default 5; 0 skips it) also times the first run of a fresh process, tracked against untracked
(N pairs of processes): what a run pays once, for the lazy imports and first calls of the capture. The
warm runs above leave it out.
--without leaves parts of the capture out, to see what each costs;
--activations K turns on the activation probe every K steps. --device cuda runs
the loop on a GPU (batches from pinned host memory, copied without blocking;
each run ends with a synchronize), and --model conv swaps the MLP for a small
convolutional net on 3 x 32 x 32 inputs, whose steps weigh more on the device
(on an H200 both loops are still host-bound: the DataLoader's collation on the
training thread takes most of a run).
Target (issue 14): ratio <= 1.03 with SGD and with Adam.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

EPOCHS = 2


def _model(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    """The model and the shape of one input."""
    if name == "mlp":
        return nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)), (256,)
    blocks = []
    for c_in, c_out in ((3, 64), (64, 128), (128, 256)):
        blocks += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                   nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                   nn.MaxPool2d(2)]
    return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 10)), (3, 32, 32)


class Loop:
    """The reference training loop; `run(run_dir)` trains EPOCHS epochs, tracked when run_dir is given."""

    def __init__(self, optimizer: str, samples: int, without: list[str], activations: int,
                 device: str = "cpu", model: str = "mlp"):
        torch.manual_seed(0)
        self.device = torch.device(device)
        self.model, shape = _model(model)
        self.model.to(self.device)
        data = TensorDataset(torch.randn(samples, *shape), torch.randint(0, 10, (samples,)))
        self.loader = DataLoader(data, batch_size=256, shuffle=True, pin_memory=self.device.type == "cuda")
        params = self.model.parameters()
        self.opt = (torch.optim.SGD(params, lr=0.01, momentum=0.9) if optimizer == "sgd"
                    else torch.optim.Adam(params, lr=1e-3))
        self.without = without
        self.activations = activations
        self.samples = samples

    def run(self, run_dir: Path | None = None) -> dict:
        import dataaudit

        start, thread_start, cpu_start = time.perf_counter(), time.thread_time(), time.process_time()
        tracker, batches, record_s = None, self.loader, 0.0
        if run_dir is not None:
            tracker = dataaudit.Tracker(run_dir)
            batches = tracker.wrap(self.loader)
            if "watch" not in self.without:
                tracker.watch(self.opt, model=self.model, activations=self.activations)
        for _ in range(EPOCHS):
            for xb, yb in batches:
                xb, yb = xb.to(self.device, non_blocking=True), yb.to(self.device, non_blocking=True)
                logits = self.model(xb)
                losses = F.cross_entropy(logits, yb, reduction="none")
                if tracker is not None:
                    t = time.perf_counter()
                    tracker.record(losses, **self._extra(logits, yb, xb))
                    record_s += time.perf_counter() - t
                self.opt.zero_grad()
                losses.mean().backward()
                self.opt.step()
        writer_s = 0.0
        if tracker is not None:
            tracker.close()
            writer_s = tracker._writer.cpu_s
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return {"wall": time.perf_counter() - start, "thread": time.thread_time() - thread_start,
                "cpu": time.process_time() - cpu_start,
                "record": record_s, "writer": writer_s}

    def _extra(self, logits: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor) -> dict:
        extra = {} if "logits" in self.without else {"logits": logits, "targets": targets}
        if "inputs" not in self.without:
            extra["inputs"] = inputs
        return extra


def measure(loop: Loop, rounds: int, tmp: Path) -> dict:
    loop.run(tmp / "warm-up")
    loop.run()
    untracked, tracked = [loop.run()], []
    for i in range(rounds):
        tracked.append(loop.run(tmp / f"run-{i}"))
        untracked.append(loop.run())
    ratios = sorted(t["wall"] / ((a["wall"] + b["wall"]) / 2)
                    for t, a, b in zip(tracked, untracked, untracked[1:], strict=False))
    cpu_ratios = sorted(t["cpu"] / ((a["cpu"] + b["cpu"]) / 2)
                        for t, a, b in zip(tracked, untracked, untracked[1:], strict=False))
    per_sample = 1e6 / (EPOCHS * loop.samples)
    record = statistics.median(t["record"] for t in tracked) * per_sample
    thread_added = (statistics.median(t["thread"] for t in tracked)
                    - statistics.median(u["thread"] for u in untracked)) * per_sample
    return {
        "ratio": statistics.median(ratios), "quartiles": statistics.quantiles(ratios, n=4)[::2],
        "cpu_ratio": statistics.median(cpu_ratios),
        "untracked_s": statistics.median(u["wall"] for u in untracked),
        "tracked_s": statistics.median(t["wall"] for t in tracked),
        "record_us": record,
        "writer_us": statistics.median(t["writer"] for t in tracked) * per_sample,
        "other_us": thread_added - record,
    }


def cold(optimizer: str, pairs: int, samples: int) -> tuple[float, float]:
    """Medians of the first run's wall time in fresh processes, untracked and tracked (alternating)."""
    walls: dict[str, list[float]] = {"untracked": [], "tracked": []}
    for _ in range(pairs):
        for kind in walls:
            out = subprocess.run([sys.executable, __file__, "--first-run", kind, "--optimizer", optimizer,
                                  "--samples", str(samples)], capture_output=True, text=True, check=True)
            walls[kind].append(float(out.stdout.split()[-1]))
    return statistics.median(walls["untracked"]), statistics.median(walls["tracked"])


def _first_run(kind: str, optimizer: str, samples: int) -> None:
    """One run in this fresh process (dataaudit imported before the timing, as a training script does)."""
    import dataaudit  # noqa: F401

    loop = Loop(optimizer, samples, [], 0)
    with tempfile.TemporaryDirectory() as tmp:
        print(loop.run(Path(tmp) / "run" if kind == "tracked" else None)["wall"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--samples", type=int, default=20_000)
    ap.add_argument("--optimizer", nargs="+", default=["sgd", "adam"], choices=["sgd", "adam"])
    ap.add_argument("--without", nargs="*", default=[], choices=["inputs", "logits", "watch"],
                    help="leave parts of the capture out, to see what each costs")
    ap.add_argument("--activations", type=int, default=0,
                    help="probe dead/saturated units every K steps (watch(activations=K)); 0: off")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda where a GPU is present")
    ap.add_argument("--model", nargs="+", default=["mlp"], choices=["mlp", "conv"],
                    help="mlp: 256-512-512-10 (the reference); conv: six 3x3 convolutions on 3x32x32 inputs")
    ap.add_argument("--cold", type=int, default=5, help="pairs of fresh processes timing the first run (0: none)")
    ap.add_argument("--first-run", choices=["tracked", "untracked"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.first_run:
        _first_run(args.first_run, args.optimizer[0], args.samples)
        return

    import dataaudit  # noqa: F401  (imported before any timing)

    label = f" without {', '.join(args.without)}" if args.without else ""
    if args.activations:
        label += f", activation probe every {args.activations} steps"
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{torch.get_num_threads()} threads"
    print(f"capture overhead{label}: whole runs of {EPOCHS} epochs, {args.samples:,} samples, "
          f"{args.device} ({where}), {args.rounds} rounds")
    print(f"{'model':>5} {'optimizer':>9} {'ratio':>6} {'(IQR)':>14} {'untracked':>9} {'tracked':>8}   "
          f"host CPU per sample: record(), writer thread, rest of the training thread")
    with tempfile.TemporaryDirectory() as tmp:
        for model, name in ((m, o) for m in args.model for o in args.optimizer):
            loop = Loop(name, args.samples, args.without, args.activations, args.device, model)
            r = measure(loop, args.rounds, Path(tmp) / f"{model}-{name}")
            q1, q3 = r["quartiles"]
            print(f"{model:>5} {name:>9} {r['ratio']:>6.3f} {f'({q1:.3f}-{q3:.3f})':>14} {r['untracked_s']:>8.2f}s "
                  f"{r['tracked_s']:>7.2f}s {r['cpu_ratio']:>6.3f}   {r['record_us']:.2f} us, {r['writer_us']:.2f} us, "
                  f"{r['other_us']:.2f} us", flush=True)
    print("target (issue 14): ratio <= 1.03 with SGD and with Adam, watch, create and close included")
    if args.cold and args.device == "cpu" and args.model == ["mlp"] and not args.without:
        for name in args.optimizer:
            untracked, tracked = cold(name, args.cold, args.samples)
            print(f"first run of a fresh process, {name}: untracked {untracked:.2f}s, tracked {tracked:.2f}s: "
                  f"{tracked - untracked:+.2f}s once (lazy imports, first calls), median of {args.cold} pairs")


if __name__ == "__main__":
    main()
