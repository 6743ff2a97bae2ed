"""Wrap a DataLoader so that each batch it yields comes with the ids of its samples.

The wrapper never touches the user's dataset, collate function or batches. It
iterates a shallow copy of the loader whose batch sampler is replaced by a
proxy that notes every index list it hands out. With `in_order=True` (the
default) the loader yields batches in the order its sampler produced them,
whatever the number of workers or how far they prefetch, so the k-th batch
yielded belongs to the k-th index list noted: a FIFO pairs them up.
"""
from __future__ import annotations

import copy
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from torch.utils.data import DataLoader, IterableDataset

if TYPE_CHECKING:
    from dataaudit.track.tracker import Tracker


class _RecordingSampler:
    """Yields what `inner` yields and appends each item's ids to `fifo`."""

    def __init__(self, inner: Any, fifo: deque):
        self.inner = inner
        self.fifo = fifo

    def __iter__(self) -> Iterator[Any]:
        for item in self.inner:
            self.fifo.append(np.atleast_1d(np.asarray(item, dtype=np.int64)))
            yield item

    def __len__(self) -> int:
        return len(self.inner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


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
        self._fifo: deque = deque()
        self.has_index = isinstance(loader, DataLoader) and not isinstance(loader.dataset, IterableDataset)
        if isinstance(loader, DataLoader):
            if loader.num_workers > 0 and getattr(loader, "in_order", True) is False:
                raise ValueError(
                    "dataaudit cannot pair batches with sample ids when the DataLoader has in_order=False "
                    "(batches arrive out of order); use in_order=True (the default)"
                )
        self._inner = self._recording_copy(loader) if self.has_index else loader

    def _recording_copy(self, loader: DataLoader) -> DataLoader:
        inner = copy.copy(loader)
        attr = "batch_sampler" if loader.batch_sampler is not None else "sampler"
        # DataLoader forbids setting its samplers after construction; this copy
        # is private to the wrapper, so the user's loader stays as it was.
        object.__setattr__(inner, attr, _RecordingSampler(getattr(loader, attr), self._fifo))
        object.__setattr__(inner, "_iterator", None)
        return inner

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
        if name in ("loader", "_inner"):  # not yet set: avoid recursion during __init__
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __iter__(self) -> Iterator[Any]:
        self._fifo.clear()
        epoch = self._tracker._start_epoch(self)
        for batch in self._inner:
            ids = self._fifo.popleft() if self.has_index else None
            self._tracker._batch_yielded(self, epoch, ids)
            yield batch
        # A pass left before its end (break, next(iter(loader))) stays open, so its
        # last batch can still be recorded; the next pass or close() ends it.
        self._tracker._end_epoch(self, epoch, exhausted=True)
