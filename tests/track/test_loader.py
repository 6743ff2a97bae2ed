from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

import dataaudit


class IndexDataset(Dataset):
    """Each sample carries its own index, so a batch tells which ids it holds."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return torch.tensor([float(i)]), torch.tensor(i % 3)


def _drive(tracker, loader, epochs=2):
    """Iterate like a training loop; return per-epoch lists of the ids the batches really held."""
    seen = []
    for _ in range(epochs):
        ids = []
        for x, y in loader:
            ids.append(x[:, 0].long().numpy())
            tracker.record(torch.zeros(len(x)), targets=y)
        seen.append(np.concatenate(ids))
    return seen


@pytest.mark.parametrize("loader_kwargs", [
    {"num_workers": 0},
    {"num_workers": 2},
    {"num_workers": 2, "persistent_workers": True, "prefetch_factor": 4},
], ids=["workers0", "workers2", "persistent"])
def test_ids_match_the_batches_the_loader_yields(run_dir, loader_kwargs):
    loader = DataLoader(IndexDataset(103), batch_size=10, shuffle=True,
                        generator=torch.Generator().manual_seed(1), **loader_kwargs)
    with dataaudit.Tracker(run_dir) as tracker:
        seen = _drive(tracker, tracker.wrap(loader), epochs=3)
    run = dataaudit.load_run(run_dir)
    for epoch, ids in enumerate(seen):
        recorded = run.records.loc[run.records.epoch == epoch, "sample_id"].to_numpy()
        np.testing.assert_array_equal(recorded, ids)
        np.testing.assert_array_equal(run.train.draws[epoch], ids)
    assert run.coverage["complete"].all()
    assert (run.coverage["unique"] == 103).all()


def test_wrapper_yields_the_very_same_batches(run_dir):
    ds = TensorDataset(torch.randn(50, 4), torch.randint(0, 3, (50,)))
    a = DataLoader(ds, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(3))
    b = DataLoader(ds, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(3))
    with dataaudit.Tracker(run_dir) as tracker:
        wrapped = tracker.wrap(a)
        assert len(wrapped) == len(b)
        assert wrapped.dataset is ds and wrapped.batch_size == 8
        for (xa, ya), (xb, yb) in zip(wrapped, b, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # the user's loader is untouched: no proxy sampler installed in it
    assert type(a.batch_sampler).__name__ == "BatchSampler"


def test_in_order_false_is_refused(run_dir):
    loader = DataLoader(IndexDataset(10), batch_size=2, num_workers=2, in_order=False)
    with dataaudit.Tracker(run_dir) as tracker, pytest.raises(ValueError, match="in_order=False"):
        tracker.wrap(loader)


class Stream(IterableDataset):
    def __iter__(self):
        for i in range(20):
            yield torch.tensor([float(i)]), torch.tensor(i % 2), torch.tensor(100 + i)


def test_iterable_dataset_needs_ids(run_dir):
    with dataaudit.Tracker(run_dir) as tracker:
        loader = tracker.wrap(DataLoader(Stream(), batch_size=5))
        x, y, ids = next(iter(loader))
        with pytest.raises(ValueError, match="ids="):
            tracker.record(torch.zeros(5), targets=y)


def test_iterable_dataset_with_explicit_ids(run_dir):
    with dataaudit.Tracker(run_dir) as tracker:
        loader = tracker.wrap(DataLoader(Stream(), batch_size=5))
        for _ in range(2):
            for _x, y, ids in loader:
                tracker.record(torch.zeros(5), targets=y, ids=ids)
    run = dataaudit.load_run(run_dir)
    assert sorted(run.records.sample_id.unique()) == list(range(100, 120))
    assert run.train.dataset_size is None
    assert (run.coverage["missing"] == 0).all() and (run.coverage["unique"] == 20).all()


def test_broken_out_pass_is_an_incomplete_epoch(run_dir):
    loader = DataLoader(IndexDataset(40), batch_size=10)
    with dataaudit.Tracker(run_dir) as tracker:
        wrapped = tracker.wrap(loader)
        for i, (x, y) in enumerate(wrapped):
            tracker.record(torch.zeros(len(x)), targets=y)
            if i == 1:
                break
        _drive(tracker, wrapped, epochs=1)
    cov = dataaudit.load_run(run_dir).coverage
    assert cov["complete"].tolist() == [False, True]
    assert cov["seen"].tolist() == [20, 40]


def test_batches_not_recorded_still_count_as_drawn(run_dir):
    with dataaudit.Tracker(run_dir) as tracker:
        for i, (x, y) in enumerate(tracker.wrap(DataLoader(IndexDataset(30), batch_size=10))):
            if i != 1:
                tracker.record(torch.zeros(len(x)), targets=y)
    run = dataaudit.load_run(run_dir)
    assert run.coverage["seen"].tolist() == [30]
    assert len(run.records) == 20
    assert run.meta["epochs"][0]["nonfinite_losses"] == 0   # the unrecorded batch has no loss, not a NaN one


def test_without_auto_collation(run_dir):
    loader = DataLoader(IndexDataset(6), batch_size=None)
    with dataaudit.Tracker(run_dir) as tracker:
        for _x, y in tracker.wrap(loader):
            tracker.record(torch.zeros(1), targets=y.reshape(1))
    assert dataaudit.load_run(run_dir).records.sample_id.tolist() == list(range(6))
