"""PyTorch Lightning: `DataAuditCallback` tracks a `lightning.Trainer` run with dataaudit.

    trainer = lightning.Trainer(callbacks=[DataAuditCallback("runs/exp1")])

and the LightningModule's `training_step` returns its per-sample losses (and logits):

    losses = F.cross_entropy(logits, y, reduction="none")
    return {"loss": losses.mean(), "losses": losses, "logits": logits}

Lightning's hooks become the Tracker's own calls, and nothing more: the
tracker hooks the training DataLoader at its batch sampler (`Tracker.track`),
so Lightning's DistributedSampler stays in place; it counts an epoch complete
by `len()` batches (Lightning never exhausts the iterator), continues the split
when Lightning re-creates the loader, learns its rank from the process group,
and measures the closure-based optimizer steps of automatic optimization.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks.callback import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch.utils.data import DataLoader
from torch.utils.data.dataloader import _SingleProcessDataLoaderIter

from dataaudit.track.tracker import Tracker


class DataAuditCallback(Callback):
    """Track the training split of a Lightning run into `run_dir` (one shard per rank).

    Parameters
    ----------
    run_dir : the run directory (see `dataaudit.Tracker`); all ranks write to the same one.
    watch : record optimizer telemetry (the first optimizer of `configure_optimizers`).
    every : update norms every `every` steps (see `Tracker.watch`).
    tracker_kwargs : passed to `dataaudit.Tracker` (flush_rows, sketch_dim...).

    What is recorded, from the dict `training_step` returns: `losses` (batch,), required;
    `logits` (batch, classes); `targets` and `inputs`, by default the batch's second and
    first element when the batch is a tuple or list (x, y, ...), its "labels" or "label"
    entry when it is a dict; `ids` for samples without an index. A batch whose output has
    no `losses` counts as drawn, not recorded.
    """

    def __init__(self, run_dir: str | os.PathLike, *, watch: bool = True, every: int | None = None,
                 **tracker_kwargs: Any):
        self.run_dir = run_dir
        self.watch = watch
        self.every = every
        self.tracker_kwargs = tracker_kwargs
        self.tracker: Tracker | None = None   # made in setup(), in each process (ddp_spawn pickles the callback)
        self._loader: DataLoader | None = None
        self._warned = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self.tracker is None:
            self.tracker = Tracker(self.run_dir, **self.tracker_kwargs)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.watch and trainer.optimizers:
            self.tracker.watch(trainer.optimizers[0], model=pl_module, every=self.every)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loader = trainer.train_dataloader
        if not isinstance(loader, DataLoader):
            raise TypeError("DataAuditCallback needs train_dataloader() to return one DataLoader; "
                            f"got {type(loader).__name__}")
        if loader is self._loader:
            return
        # The loader is new (first epoch, or re-created by reload_dataloaders_every_n_epochs).
        self._loader = self.tracker.track(loader)
        _draw_through_the_hook(trainer, loader)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.tracker.batch_start(index=batch_idx)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not isinstance(outputs, Mapping) or outputs.get("losses") is None:
            if not self._warned:
                self._warned = True
                rank_zero_warn("DataAuditCallback: training_step returned no per-sample 'losses' "
                               '(return {"loss": losses.mean(), "losses": losses, "logits": logits}); '
                               "the batches are counted as drawn, not recorded")
            return
        self.tracker.record(outputs["losses"], logits=outputs.get("logits"),
                            targets=outputs.get("targets", _batch_part(batch, 1, ("labels", "label"))),
                            inputs=outputs.get("inputs", _batch_part(batch, 0, ())), ids=outputs.get("ids"))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.tracker.end_epoch()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self.tracker is not None:
            self.tracker.close()
            self.tracker, self._loader = None, None   # another fit() resumes the run

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self.tracker is not None:
            self.tracker.close()   # what the finished epochs captured stays committed


def _draw_through_the_hook(trainer: pl.Trainer, loader: DataLoader) -> None:
    """Lightning makes an epoch's iterator before any callback hook runs when it (re)loads the
    data; it makes it again after `on_train_epoch_start` only from the second epoch on, when not
    resuming (`_TrainingEpochLoop.on_run_start`). Otherwise the iterator must draw through the hook."""
    fit_loop = trainer.fit_loop
    if trainer.current_epoch > 0 and not fit_loop.is_resuming and not fit_loop.epoch_loop.restarting:
        return
    fetcher = getattr(fit_loop, "_data_fetcher", None)
    combined = getattr(getattr(fetcher, "iterator", None), "_iterator", None)
    live = getattr(combined, "iterators", [])
    if len(live) == 1 and isinstance(live[0], _SingleProcessDataLoaderIter) and fetcher.fetched == 0:
        # Nothing drawn yet: give it the hooked sampler. Making the iterator again would draw
        # another base seed from the loader's generator, and so change the shuffling.
        live[0]._index_sampler = loader._index_sampler
        live[0]._sampler_iter = iter(loader._index_sampler)
    elif fetcher is not None:
        iter(fetcher)  # workers prefetched from the old sampler: a pass nobody took a batch from is no epoch


def _batch_part(batch: Any, position: int, keys: tuple[str, ...]) -> torch.Tensor | None:
    """The batch's inputs or targets: batch[position] of a tuple or list, batch[key] of a dict."""
    if isinstance(batch, (tuple, list)) and len(batch) > position:
        part = batch[position]
    elif isinstance(batch, Mapping):
        part = next((batch[k] for k in keys if k in batch), None)
    else:
        part = None
    return part if isinstance(part, torch.Tensor) else None
