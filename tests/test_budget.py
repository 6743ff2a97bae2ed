from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, SubsetRandomSampler, TensorDataset

import dataaudit
from dataaudit import budget, load_run
from dataaudit.checks import coverage
from dataaudit.checks.curves import epoch_losses
from fixtures.training import blobs, train_loop

EPOCHS = 20
N = 600


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory):
    """A tracked MLP on blobs with 15% of the labels flipped and a val split: 12,000 train rows over 20 epochs."""
    X, y = blobs(n=N, k=3, seed=1)
    rng = np.random.default_rng(0)
    flip = rng.random(N) < 0.15
    noisy = np.where(flip, (y + rng.integers(1, 3, N)) % 3, y)
    Xv, yv = blobs(n=200, k=3, seed=2)
    run_dir = tmp_path_factory.mktemp("budget") / "run"
    train_loop(run_dir, X, noisy, epochs=EPOCHS, val=(Xv, yv))
    return run_dir, np.flatnonzero(flip)


# ----------------------------------------------------------------- choosing the held epochs

def test_a_run_within_the_budget_holds_every_epoch():
    epochs = list(range(20))
    assert budget.choose_held(epochs, epochs, dict.fromkeys(epochs, 100), 2000) is None


def test_beyond_the_budget_the_first_last_and_evenly_spaced_epochs_are_held():
    epochs = list(range(100))
    held = budget.choose_held(epochs, epochs, dict.fromkeys(epochs, 1000), 25_000)
    assert len(held) == 25 and held[0] == 0 and held[-1] == 99
    gaps = np.diff(held)
    assert gaps.min() >= 3 and gaps.max() <= 5  # evenly spaced: 99 / 24 = 4.1 apart


def test_at_least_min_held_epochs_are_held_and_only_complete_ones():
    epochs = list(range(20))
    complete = epochs[:-1]  # the last pass broke off
    held = budget.choose_held(epochs, complete, dict.fromkeys(epochs, 10**7), 25_000_000)
    assert len(held) == budget.MIN_HELD and held[0] == 0 and held[-1] == 18


def test_the_budget_is_read_from_the_environment(monkeypatch):
    monkeypatch.delenv(budget.ENV, raising=False)
    assert budget.max_rows() == budget.MAX_ROWS
    monkeypatch.setenv(budget.ENV, "1_000")
    assert budget.max_rows() == 1000
    monkeypatch.setenv(budget.ENV, "lots")
    with pytest.raises(ValueError, match="DATAAUDIT_MAX_ROWS must be a positive number of rows.*'lots'"):
        budget.max_rows()


# ----------------------------------------------------------------- a run loaded beyond the budget

def test_beyond_the_budget_records_of_some_epochs_are_held_and_every_epoch_counts(noisy_run, monkeypatch):
    run_dir, _ = noisy_run
    full = load_run(run_dir)
    monkeypatch.setenv(budget.ENV, "3000")  # 600 rows an epoch: 5 fit, MIN_HELD (8) are held
    small = load_run(run_dir)
    held = small.train.held_epochs
    assert full.train.held_epochs is None and full.train.held_note is None
    assert held == (0, 3, 5, 8, 11, 14, 16, 19)
    assert sorted(small.records["epoch"].unique()) == list(held)
    pd.testing.assert_frame_equal(
        small.records.reset_index(drop=True),
        full.records[full.records["epoch"].isin(held)].reset_index(drop=True))
    # coverage and the draws come from every epoch
    pd.testing.assert_frame_equal(small.coverage, full.coverage)
    assert list(small.train.draws) == list(range(EPOCHS))
    for epoch in range(EPOCHS):
        np.testing.assert_array_equal(small.train.draws[epoch], full.train.draws[epoch])
    # so does the loss curve the plateau and optimizer checks read
    curve, expected = epoch_losses(small.train), epoch_losses(full.train)
    assert curve["epoch"].tolist() == list(range(EPOCHS))
    np.testing.assert_allclose(curve[["loss", "nonfinite", "accuracy"]], expected[["loss", "nonfinite", "accuracy"]],
                               rtol=1e-9)
    assert small.train.with_records(small.train.complete_epochs) == list(held)
    assert full.train.with_records([1, 2]) == [1, 2]


def test_the_audit_says_what_was_held_and_keeps_its_verdict(noisy_run, monkeypatch, tmp_path):
    run_dir, flipped = noisy_run
    full = dataaudit.analyze(run_dir)
    monkeypatch.setenv(budget.ENV, "3000")
    small = dataaudit.analyze(run_dir)
    assert "records_held" not in full.run_summary
    assert small.verdict == full.verdict == "data"
    assert small.results["labels"].status == full.results["labels"].status == "critical"
    assert small.results["plateau"].details == full.results["plateau"].details  # found over every epoch
    assert small.checks["coverage"] == full.checks["coverage"]
    recall = np.isin(flipped, small.label_issues).mean()
    precision = np.isin(small.label_issues, flipped).mean()
    assert recall > 0.8 and precision > 0.9
    small.write_json(tmp_path / "audit.json")
    held = json.loads((tmp_path / "audit.json").read_text())["run"]["records_held"]
    train = next(h for h in held if h["split"] == "train")
    assert train["epochs"] == [0, 3, 5, 8, 11, 14, 16, 19] and train["of_epochs"] == EPOCHS
    assert train["rows"] == N * EPOCHS and train["max_rows"] == 3000
    assert "8 of 20 epochs" in train["reason"]
    small.write_html(tmp_path / "audit.html")
    assert "8 of 20 epochs were held" in (tmp_path / "audit.html").read_text()


def test_coverage_of_a_subset_sampler_is_judged_over_every_epoch(tmp_path, monkeypatch):
    """Ids that no epoch draws, and ids that one epoch not held skips, are found as with every epoch held."""
    ds = TensorDataset(torch.randn(100, 2), torch.zeros(100, dtype=torch.long))
    run_dir = tmp_path / "subset"
    sampler = SubsetRandomSampler(list(range(90)))
    with dataaudit.Tracker(run_dir) as tracker:
        loader = tracker.wrap(DataLoader(ds, batch_size=10, sampler=sampler))
        for epoch in range(12):
            sampler.indices = list(range(80)) if epoch == 7 else list(range(90))  # epoch 7 (not held) skips 80..89
            for _x, yb in loader:
                tracker.record(torch.rand(len(yb)), targets=yb)
    full = coverage.check(load_run(run_dir))
    monkeypatch.setenv(budget.ENV, "100")
    run = load_run(run_dir)
    assert 7 not in run.train.held_epochs
    result = coverage.check(run)
    assert result.details == full.details
    assert result.details["missing_ids"] == list(range(90, 100))
    assert result.details["sometimes_missing"] == 10


def test_soft_targets_read_alike_when_streamed(tmp_path, monkeypatch):
    """The loss less the targets' entropy is decided on every epoch's rows, as a full load decides it."""
    from fixtures.tasks import train_soft

    X, y = blobs(n=300, k=3, seed=3)
    train_soft(tmp_path / "soft", X, y, mode="smoothing", epochs=12)
    full = load_run(tmp_path / "soft")
    monkeypatch.setenv(budget.ENV, "100")
    small = load_run(tmp_path / "soft")
    assert small.train.held_epochs is not None and "target_entropy" in small.records
    held = full.records[full.records["epoch"].isin(small.train.held_epochs)].reset_index(drop=True)
    np.testing.assert_array_equal(small.records["loss"].to_numpy(), held["loss"].to_numpy())
    assert (full.records["loss"] < full.records["target_entropy"]).mean() > 0.5  # the entropy was taken off
    np.testing.assert_allclose(epoch_losses(small.train)[["loss", "accuracy"]],
                               epoch_losses(full.train)[["loss", "accuracy"]], rtol=1e-9)


def test_explicit_ids_count_every_id_drawn_as_the_dataset_when_streamed(tmp_path, monkeypatch):
    """Without a dataset size the dataset is every id drawn in any epoch, held or not."""
    ds = TensorDataset(torch.randn(20, 2), torch.zeros(20, dtype=torch.long))
    with dataaudit.Tracker(tmp_path / "ids") as tracker:
        loader = tracker.wrap(DataLoader(ds, batch_size=5))
        for epoch in range(12):
            for i, (_x, yb) in enumerate(loader):
                ids = torch.arange(5) + 5 * i + (2000 if epoch == 7 and i >= 3 else 1000)  # epoch 7: 5 new ids
                tracker.record(torch.zeros(5), targets=yb, ids=ids)
    full = load_run(tmp_path / "ids")
    monkeypatch.setenv(budget.ENV, "10")
    small = load_run(tmp_path / "ids")
    assert 7 not in small.train.held_epochs
    pd.testing.assert_frame_equal(small.coverage, full.coverage)
    assert small.coverage["missing"].tolist() == [5] * 7 + [5] + [5] * 4  # 25 ids in all, 20 drawn an epoch
    assert coverage.check(small).details == coverage.check(full).details
