"""A training process killed with SIGKILL mid-epoch leaves a run that loads, analyzes and resumes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import dataaudit

SCRIPT = textwrap.dedent("""
    import os, signal, sys, time
    import torch, torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset
    import dataaudit

    run_dir, kill_epoch = sys.argv[1], int(sys.argv[2])
    torch.manual_seed(0)
    ds = TensorDataset(torch.randn(200, 5), torch.randint(0, 3, (200,)))
    model = torch.nn.Linear(5, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker = dataaudit.Tracker(run_dir, flush_rows=50)   # chunks of the killed epoch reach the disk
    loader = tracker.wrap(DataLoader(ds, batch_size=20, shuffle=True))
    tracker.watch(opt, model=model)
    for epoch in range(10):
        for i, (x, y) in enumerate(loader):
            logits = model(x)
            losses = F.cross_entropy(logits, y, reduction="none")
            tracker.record(losses, logits=logits, targets=y, inputs=x)
            opt.zero_grad(); losses.mean().backward(); opt.step()
            if epoch == kill_epoch and i == 6:
                time.sleep(0.5)   # let the writer put this epoch's first chunks on disk
                os.kill(os.getpid(), signal.SIGKILL)
""")


def _train_and_kill(tmp_path: Path, run_dir: Path, kill_epoch: int) -> None:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, str(script), str(run_dir), str(kill_epoch)], env=env,
                          capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_killed_mid_epoch_loses_at_most_that_epoch(tmp_path, run_dir):
    _train_and_kill(tmp_path, run_dir, kill_epoch=3)
    # The killed epoch wrote part files (flush_rows=50) that no manifest lists.
    on_disk = {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*.parquet")}
    run = dataaudit.load_run(run_dir)
    assert on_disk - set(run.meta["files"]), "the killed epoch should have left uncommitted parts"
    assert run.train.epochs == [0, 1, 2]
    assert len(run.records) == 600 and run.coverage["complete"].all()
    assert run.steps["epoch"].max() == 2
    audit = dataaudit.analyze(run_dir)
    assert audit.checks["coverage"]["missing_ids"] == []

    # Resuming moves the orphaned parts aside and numbers the next epoch 3.
    import numpy as np

    from fixtures.training import train
    X = np.random.default_rng(0).normal(size=(200, 5)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 3, 200)
    train(run_dir, X, y, epochs=1)
    resumed = dataaudit.load_run(run_dir)
    assert resumed.train.epochs == [0, 1, 2, 3]
    assert len(resumed.records) == 800
    assert list((run_dir / "_partial").rglob("*.parquet")), "orphaned parts are kept, not deleted"


def test_half_written_files_are_never_read(run_dir):
    from fixtures.training import blobs, train
    X, y = blobs(n=50)
    train(run_dir, X, y, epochs=1)
    part = next((run_dir / "records").rglob("*.parquet"))
    (part.parent / f".{part.name}.tmp").write_bytes(b"PAR1 half a file")
    (part.parent / "part-stray.parquet").write_bytes(b"not parquet at all")
    run = dataaudit.load_run(run_dir)
    assert len(run.records) == 50


def test_unreadable_manifest_is_a_clear_error(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(dataaudit.RunFormatError, match="manifest.json: unreadable run manifest"):
        dataaudit.load_run(tmp_path)
    with pytest.raises(dataaudit.RunFormatError, match="no such run directory"):
        dataaudit.load_run(tmp_path / "nope")
