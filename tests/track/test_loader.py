from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, TensorDataset

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


def test_an_epoch_is_complete_once_len_batches_were_taken(run_dir):
    """Frameworks (Lightning) stop after len(loader) batches and never exhaust the iterator."""
    loader = DataLoader(IndexDataset(25), batch_size=10, shuffle=True, generator=torch.Generator().manual_seed(0))
    with dataaudit.Tracker(run_dir) as tracker:
        wrapped = tracker.wrap(loader)
        for _ in range(2):
            for _i, (x, y) in zip(range(len(wrapped)), wrapped, strict=False):  # zip stops before asking for more
                tracker.record(torch.zeros(len(x)), targets=y)
        for _i, (x, y) in zip(range(2), wrapped, strict=False):  # a pass left one batch short
            tracker.record(torch.zeros(len(x)), targets=y)
    run = dataaudit.load_run(run_dir)
    assert run.coverage["complete"].tolist() == [True, True, False]
    assert run.coverage["unique"].tolist() == [25, 25, 20]


def _index_loader(n=30, **kwargs):
    return DataLoader(IndexDataset(n), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(2),
                      **kwargs)


@pytest.mark.parametrize("workers", [0, 2])
def test_track_hooks_the_dataloader_in_place_and_keeps_its_distributed_sampler(run_dir, workers):
    ds = IndexDataset(30)
    sampler = DistributedSampler(ds, num_replicas=2, rank=1, shuffle=True, seed=3)
    loader = DataLoader(ds, batch_size=4, sampler=sampler, num_workers=workers)
    with dataaudit.Tracker(run_dir) as tracker:
        assert tracker.track(loader) is loader and type(loader) is DataLoader
        assert loader.batch_sampler.sampler is sampler and len(loader) == 4
        for epoch in range(2):
            sampler.set_epoch(epoch)
            for x, y in loader:                    # the framework iterates the loader itself
                ids = tracker.batch_start()
                np.testing.assert_array_equal(ids, x[:, 0].long().numpy())
                tracker.record(torch.zeros(len(x)), targets=y)
    run = dataaudit.load_run(run_dir)
    expected = [np.array(list(sampler_epoch(sampler, e))) for e in range(2)]
    for epoch in range(2):
        np.testing.assert_array_equal(run.train.draws[epoch], expected[epoch])
    assert run.coverage["complete"].all()


def sampler_epoch(sampler, epoch):
    sampler.set_epoch(epoch)
    return iter(sampler)


def test_batch_start_by_index_counts_skipped_batches_as_drawn(run_dir):
    loader = _index_loader()
    with dataaudit.Tracker(run_dir) as tracker:
        tracker.track(loader)
        for i, (x, y) in enumerate(loader):
            if i == 2:          # a framework skipped this batch (training_step returned None)
                continue
            np.testing.assert_array_equal(tracker.batch_start(index=i), x[:, 0].long().numpy())
            tracker.record(torch.zeros(len(x)), targets=y)
        tracker.end_epoch()
        with pytest.raises(ValueError, match="was taken already"):
            for _batch in loader:
                tracker.batch_start(index=0)
    run = dataaudit.load_run(run_dir)
    assert len(run.train.draws[0]) == 30 and (run.records.epoch == 0).sum() == 26
    assert run.coverage["complete"].tolist()[0]


def test_a_recreated_loader_continues_the_split(run_dir):
    """Lightning's reload_dataloaders_every_n_epochs: a new loader for the same split every epoch."""
    with dataaudit.Tracker(run_dir) as tracker:
        for _ in range(2):
            for x, y in tracker.wrap(_index_loader()):
                tracker.record(torch.zeros(len(x)), targets=y)
        for _ in range(2):
            loader = tracker.track(_index_loader())
            assert tracker.track(loader) is loader          # tracking it again changes nothing
            for x, y in loader:
                tracker.batch_start()
                tracker.record(torch.zeros(len(x)), targets=y)
    run = dataaudit.load_run(run_dir)
    assert run.train.epochs == [0, 1, 2, 3] and run.coverage["complete"].all()
    assert (run.coverage["unique"] == 30).all()


def test_a_pass_nobody_took_a_batch_from_is_no_epoch(run_dir):
    loader = _index_loader(num_workers=2)
    with dataaudit.Tracker(run_dir) as tracker:
        tracker.track(loader)
        iter(loader)            # a framework made an iterator, then re-created it: the workers drew ahead
        for x, y in loader:
            tracker.batch_start()
            tracker.record(torch.zeros(len(x)), targets=y)
    run = dataaudit.load_run(run_dir)
    assert run.train.epochs == [0] and run.coverage["complete"].all()


def test_track_refuses_what_it_cannot_hook(run_dir):
    with dataaudit.Tracker(run_dir) as tracker:
        with pytest.raises(TypeError, match="track\\(\\) needs a torch DataLoader; got list"):
            tracker.track([1, 2])
        with pytest.raises(ValueError, match="IterableDataset"):
            tracker.track(DataLoader(Stream(), batch_size=5))
        with pytest.raises(RuntimeError, match="track\\(\\) first"):
            tracker.batch_start(split="val")
