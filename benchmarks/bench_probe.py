#!/usr/bin/env python3
"""Probed data share against the counterfactual truth, on the scenarios of ../shared/zoo/counterfactual.py.

For each scenario: the truth (four trainings from scratch: as planted, data fixed, optimizer fixed, both; Shapley
split of the last-third training loss), the passive estimate (`analyze` of the planted run before probing), and the
probed share with its interval over seeds and the compute it spent (samples processed by the probe over the
original run's, and in epochs of it). The planted run is trained by a loop that mirrors zoo.train but keeps the
model, optimizer and loader at the end, as a user's script has them; the probe runs with its defaults.

    python benchmarks/bench_probe.py [--only NAME ...] [--zoo ../shared/zoo]

Prints one row per scenario, then the MAE of the probed and passive shares. The probed share is the audit's
data_share after the probe: the measured one, or the passive estimate (marked *) when the probe was inconclusive.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset


def train_kept(s, run_dir: str, zoo):
    """zoo.train's loop, tracked into run_dir; returns (epoch curve, model, optimizer, loader, loss_fn)."""
    import dataaudit

    torch.manual_seed(s.seed)
    X, y = torch.from_numpy(s.X), torch.from_numpy(s.y)
    ds = TensorDataset(X, y)
    sampler = zoo.make_sampler(s, len(ds))
    loader = DataLoader(ds, batch_size=s.batch_size, sampler=sampler, shuffle=sampler is None,
                        generator=torch.Generator().manual_seed(s.seed))
    model = zoo.model_for(s, X.shape[1], int(s.y.max()) + 1)
    if s.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    curve = []
    with dataaudit.Tracker(run_dir) as tracker:
        tracked = tracker.wrap(loader)
        tracker.watch(opt, model=model)
        for epoch in range(s.epochs):
            if s.lr_drop_epoch is not None and epoch == s.lr_drop_epoch:
                for g in opt.param_groups:
                    g["lr"] *= s.lr_drop_factor
            total, count = 0.0, 0
            for xb, yb in tracked:
                xb = zoo.pipeline(s, epoch, xb)
                logits = model(xb)
                losses = F.cross_entropy(logits, yb, reduction="none")
                tracker.record(losses, logits=logits, targets=yb, inputs=xb)
                opt.zero_grad()
                losses.mean().backward()
                if s.clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), s.clip)
                opt.step()
                total += float(losses.detach().sum())
                count += len(losses)
            curve.append(total / count)

    def loss_fn(m, batch):  # the loop's own step: its pipeline as it stands at the end of training
        return F.cross_entropy(m(zoo.pipeline(s, s.epochs - 1, batch[0])), batch[1], reduction="none")
    return curve, model, opt, loader, loss_fn


def truth(s, curve_bb, cf, zoo) -> float:
    curves = {"bb": curve_bb}
    for key, fix_data, fix_opt in (("fb", True, False), ("bf", False, True), ("ff", True, True)):
        curves[key] = zoo.train(cf.variant(s, fix_data, fix_opt))
    L = {k: cf.plateau_level(c) for k, c in curves.items()}
    gap = L["bb"] - L["ff"]
    if gap < 0.05 * curves["ff"][0]:
        return 0.0
    return min(max(((L["bb"] - L["fb"]) + (L["bf"] - L["ff"])) / 2 / gap, 0.0), 1.0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--zoo", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "zoo"))
    a = ap.parse_args()
    sys.path.insert(0, os.path.abspath(a.zoo))
    import counterfactual as cf
    import zoo

    import dataaudit

    rows = []
    print(f"{'scenario':22s} {'truth':>5s} {'passive':>7s} {'probed':>6s} {'interval':>13s} {'compute':>7s} "
          f"{'epochs':>6s} {'s':>5s}  arms (loss removed vs control)")
    for s in cf.PUBLIC:
        if a.only and s.name not in a.only:
            continue
        run_dir = os.path.join(tempfile.mkdtemp(prefix=f"probe-{s.name}-"), "run")
        planted = cf.variant(s, False, False)
        curve, model, opt, loader, loss_fn = train_kept(planted, run_dir, zoo)
        t = truth(s, curve, cf, zoo)
        audit = dataaudit.analyze(run_dir)
        start = time.perf_counter()
        p = dataaudit.probe(run_dir, model=model, optimizer=opt, loader=loader, batch_loss=loss_fn, clip=s.clip,
                            audit=audit, verbose=False, progress=False)
        seconds = time.perf_counter() - start
        final = dataaudit.analyze(run_dir)  # what the user sees: the probe's share when conclusive
        mark = "" if p.verdict != "inconclusive" else "*"
        spent = p.summary["cost"]["fraction_done"]
        arms = ", ".join(f"{r.arm} {r.reduction:+.3f}" for r in p.arms.itertuples())
        rows.append((t, audit.data_share, final.data_share))
        interval = f"[{p.interval[0]:.2f}, {p.interval[1]:.2f}]" if not mark else "inconclusive"
        print(f"{s.name:22s} {t:5.2f} {audit.data_share:7.2f} {final.data_share:5.2f}{mark:1s} {interval:>13s} "
              f"{spent:7.2f} {spent * s.epochs:6.1f} {seconds:5.1f}  {arms}", flush=True)
    if not rows:
        return 0
    probed = [abs(p - t) for t, _, p in rows]
    passive = [abs(q - t) for t, q, _ in rows]
    print(f"probed share: MAE {sum(probed) / len(rows):.3f}, max error {max(probed):.2f}; "
          f"passive: MAE {sum(passive) / len(rows):.3f}, max error {max(passive):.2f} over {len(rows)} scenarios")
    return 0


if __name__ == "__main__":
    sys.exit(main())
