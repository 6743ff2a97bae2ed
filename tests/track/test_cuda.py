"""On CUDA the training thread never waits for the device: no synchronisation per step.

Runs only where a GPU is present (the device tool's machine); CI has none.
"""
from __future__ import annotations

import threading
import traceback
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import dataaudit

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("every", [3, None])   # a fixed cadence, and the default adaptive one
def test_training_thread_never_synchronises(run_dir, every):
    device = torch.device("cuda")
    ds = TensorDataset(torch.randn(2048, 32), torch.randint(0, 5, (2048,)))
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 5)).to(device)
    opt = torch.optim.Adam(model.parameters())
    syncs: list[tuple[str, str]] = []
    show = warnings.showwarning

    def note(message, category, *args, **kwargs):  # which thread synchronised, and where
        if "called a synchronizing" not in str(message):  # torch's own notes (sync debug mode is a prototype...)
            return
        frames = [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in traceback.extract_stack()
                  if "dataaudit" in f.filename or "test_cuda" in f.filename]
        syncs.append((threading.current_thread().name, " < ".join(reversed(frames[-4:]))))

    loader = DataLoader(ds, batch_size=128, shuffle=True)
    warmup = [(x.to(device), y.to(device)) for x, y in loader]  # CUDA context and kernels ready
    del warmup
    torch.cuda.synchronize()
    warnings.showwarning = note
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            torch.ones(1, device=device).item()            # the detector sees a sync: the test can fail
            torch.cuda.set_sync_debug_mode(0)
            assert [thread for thread, _ in syncs] == ["MainThread"]
            syncs.clear()
            with dataaudit.Tracker(run_dir, flush_rows=512) as tracker:
                tracked = tracker.wrap(loader)
                tracker.watch(opt, model=model, every=every, activations=2)  # the probes may not synchronise either
                torch.cuda.set_sync_debug_mode("warn")
                for _ in range(2):
                    for x, y in tracked:
                        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                        logits = model(x)
                        losses = F.cross_entropy(logits, y, reduction="none")
                        tracker.record(losses, logits=logits, targets=y, inputs=x)
                        opt.zero_grad()
                        losses.mean().backward()
                        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
                        opt.step()
                    # neither the steps nor the end of an epoch (its commit is handed to the writer) may wait
                    torch.cuda.set_sync_debug_mode(0)
                    main = [where for thread, where in syncs if thread == "MainThread"]
                    torch.cuda.set_sync_debug_mode("warn")
                torch.cuda.set_sync_debug_mode(0)
    finally:
        warnings.showwarning = show
        torch.cuda.set_sync_debug_mode(0)
    assert not main, f"the training thread synchronised {len(main)} times: " + "; ".join(main)
    run = dataaudit.load_run(run_dir)
    assert len(run.records) == 2 * 2048 and run.steps["clipped"].notna().all()
