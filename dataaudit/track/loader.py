"""Learn the sample ids of every batch from the loader's own batch sampler.

The tracker hooks a DataLoader at its batch sampler (at its sampler when it
batches nothing): a proxy that yields what the original yields and notes each
index list it hands out, in order, into the split's `Draws`. With
`in_order=True` (the default) a DataLoader yields batches in the order its
sampler produced them, whatever the number of workers or how far they
prefetch, so the k-th batch taken belongs to the k-th index list noted.

Two ways in:

- `TrackedLoader` (`tracker.wrap`), for plain loops: it iterates a shallow copy
  of the loader holding the proxy, so the user's loader stays as it was, and it
  tells the tracker of each batch it yields;
- `hook` (`tracker.track`), for frameworks that iterate the DataLoader
  themselves: the proxy goes into the DataLoader in place, so it stays a
  DataLoader (its own class, its DistributedSampler, its workers), and the
  framework's integration tells the tracker of each batch the loop takes.

An epoch starts when the sampler starts a pass, and is complete once `len()`
batches of it were taken, whether or not anyone exhausted the iterator.
"""
from __future__ import annotations

import copy
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from torch.utils.data import DataLoader, IterableDataset

if TYPE_CHECKING:
    from dataaudit.track.epoch import EpochBuffer
    from dataaudit.track.tracker import Tracker


class Draws:
    """What the sampler of one hooked loader drew in its current pass, not yet taken by the loop."""

    def __init__(self, tracker: Tracker, split: str, batch_size: int | None, *, indexed: bool = True):
        self.tracker = tracker
        self.split = split
        self.batch_size = batch_size
        self.indexed = indexed                  # False: the samples have no index (IterableDataset)
        self.pending: deque[np.ndarray] = deque()
        self.taken = 0                          # batches of this pass taken so far
        self.epoch: EpochBuffer | None = None   # the epoch this pass is

    def begin(self, expected: int | None) -> None:
        self.pending.clear()
        self.taken = 0
        self.epoch = self.tracker._start_epoch(self, expected_batches=expected)


class RecordingSampler:
    """Yields what `inner` yields; each pass begins an epoch, and each item's ids are noted in `draws`."""

    def __init__(self, inner: Any, draws: Draws):
        self.inner = inner
        self.draws = draws

    def __iter__(self) -> Iterator[Any]:
        self.draws.begin(_length(self.inner))
        for item in self.inner:
            self.draws.pending.append(np.atleast_1d(np.asarray(item, dtype=np.int64)))
            yield item

    def __len__(self) -> int:
        return len(self.inner)

    def __getattr__(self, name: str) -> Any:
        if name in ("inner", "draws"):  # not yet set (copy, pickle): avoid recursion
            raise AttributeError(name)
        return getattr(self.inner, name)


def base_loader(loader: Any) -> Any:
    """The DataLoader that actually draws from the sampler: accelerate's prepared loaders
    (DataLoaderShard, DataLoaderDispatcher) iterate a `base_dataloader` of their own."""
    while "base_dataloader" in getattr(loader, "__dict__", {}):
        loader = loader.__dict__["base_dataloader"]
    return loader


def check_loader(loader: Any, caller: str) -> bool:
    """Whether `loader` has sample indices to learn; refuses what cannot be paired up."""
    if isinstance(loader, DataLoader):
        if loader.num_workers > 0 and getattr(loader, "in_order", True) is False:
            raise ValueError(
                "dataaudit cannot pair batches with sample ids when the DataLoader has in_order=False "
                "(batches arrive out of order); use in_order=True (the default)"
            )
        return not isinstance(loader.dataset, IterableDataset)
    if caller == "track()":
        raise TypeError(f"track() needs a torch DataLoader; got {type(loader).__name__}")
    return False


def hook(loader: DataLoader, draws: Draws) -> None:
    """Put a recording proxy in place of `loader`'s batch sampler (its sampler when it batches nothing)."""
    attr = "batch_sampler" if loader.batch_sampler is not None else "sampler"
    proxy = RecordingSampler(getattr(loader, attr), draws)
    # DataLoader forbids setting its samplers after construction; the proxy changes
    # nothing it yields, so the loader stays valid.
    object.__setattr__(loader, attr, proxy)
    iterator = loader.__dict__.get("_iterator")
    if iterator is not None:  # persistent workers: the next pass reuses this iterator's sampler
        iterator._index_sampler = loader._index_sampler


def hooked_draws(loader: Any, tracker: Tracker) -> Draws | None:
    """The Draws of `tracker` already hooked into `loader`, if any."""
    sampler = loader.batch_sampler if loader.batch_sampler is not None else loader.sampler
    if isinstance(sampler, RecordingSampler) and sampler.draws.tracker is tracker:
        return sampler.draws
    return None


class TrackedLoader:
    """Iterates like the wrapped DataLoader; one full pass is one epoch of `split`.

    Attributes the wrapper does not define (`dataset`, `sampler`, `batch_size`...)
    are the wrapped loader's, so `loader.sampler.set_epoch(epoch)` still works.
    """

    def __init__(self, loader: Any, tracker: Tracker, split: str):
        if isinstance(loader, TrackedLoader):
            raise ValueError(f"wrap() got a loader already wrapped (split {loader.split!r} of the run in "
                             f"{loader._tracker.path}); pass the original DataLoader, and wrap it once")
        self.loader = loader
        self.split = split
        self._tracker = tracker
        self.has_index = check_loader(loader, "wrap()")
        self.draws = Draws(tracker, split, getattr(loader, "batch_size", None), indexed=self.has_index)
        self._inner = loader
        if self.has_index:
            # The copy is private to the wrapper: the user's loader stays as it was.
            self._inner = copy.copy(loader)
            object.__setattr__(self._inner, "_iterator", None)
            hook(self._inner, self.draws)

    @property
    def dataset_size(self) -> int | None:
        if not self.has_index:
            return None
        try:
            return len(self.loader.dataset)
        except TypeError:
            return None

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        if name in ("loader", "_inner", "draws"):  # not yet set: avoid recursion during __init__
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __iter__(self) -> Iterator[Any]:
        if not self.has_index:  # no sampler to begin the pass: it begins here
            self.draws.begin(None)
        for batch in self._inner:
            self._tracker._take(self.draws)
            yield batch
        # A pass left before its end (break, next(iter(loader))) stays open, so its
        # last batch can still be recorded; the next pass or close() ends it.
        self._tracker._end_epoch(self.draws.epoch, exhausted=True)


def _length(sampler: Any) -> int | None:
    try:
        return len(sampler)
    except TypeError:
        return None
