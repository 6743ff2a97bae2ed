"""Hugging Face Trainer: `DataAuditCallback` tracks a `transformers.Trainer` run with dataaudit.

    class AuditedTrainer(DataAuditTrainerMixin, Trainer):   # records per-sample losses and logits
        pass

    trainer = AuditedTrainer(model, args, train_dataset=ds, callbacks=[DataAuditCallback("runs/exp1")])

The Trainer's hooks become the Tracker's own calls, and nothing more: the
tracker hooks the DataLoader that the prepared loader draws from (accelerate's
DataLoaderShard and DataLoaderDispatcher iterate a `base_dataloader` of their
own) at its batch sampler, so the ids of every batch are learnt whatever
accelerate wraps around it; the mixin tells the tracker of each batch a
training step takes and records its per-sample losses in `compute_loss`.
Without the mixin, the callback records the optimizer telemetry and which
samples were drawn, and `record_batch` records from a custom `compute_loss`.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from accelerate.data_loader import DataLoaderDispatcher
from transformers import TrainerCallback

from dataaudit.track.tracker import Tracker

# Inputs worth a sketch (real-valued features); token ids are not.
_SKETCHED_INPUTS = ("pixel_values", "input_values", "inputs_embeds")


class DataAuditCallback(TrainerCallback):
    """Track the training split of a Trainer run into `run_dir` (one shard per process).

    Parameters
    ----------
    run_dir : the run directory (see `dataaudit.Tracker`); all processes write to the same one.
    watch : record optimizer telemetry (the Trainer's optimizer).
    every : update norms every `every` steps (see `Tracker.watch`).
    tracker_kwargs : passed to `dataaudit.Tracker`.
    """

    def __init__(self, run_dir: str | os.PathLike, *, watch: bool = True, every: int | None = None,
                 **tracker_kwargs: Any):
        self.run_dir = run_dir
        self.watch = watch
        self.every = every
        self.tracker_kwargs = tracker_kwargs
        self.tracker: Tracker | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, *, model: Any = None, optimizer: Any = None,
                       train_dataloader: Any = None, **kwargs: Any) -> None:
        if self.tracker is None:
            self.tracker = Tracker(self.run_dir, **self.tracker_kwargs)
        if train_dataloader is None:
            raise ValueError("DataAuditCallback needs the Trainer's train_dataloader at on_train_begin; got None")
        if isinstance(train_dataloader, DataLoaderDispatcher) and args.world_size > 1:
            # Only the main process draws; the others get slices of its batches, and their ids with them.
            raise ValueError(f"DataAuditCallback needs each process to draw its own batches; got dispatch_batches=True "
                             f"on {args.world_size} processes (use accelerator_config={{'dispatch_batches': False}})")
        self.tracker.track(train_dataloader)
        if self.watch and optimizer is not None:
            self.tracker.watch(_torch_optimizer(optimizer), model=model, every=self.every)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.tracker.end_epoch()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.tracker is not None:
            self.tracker.close()
            self.tracker = None   # another train() resumes the run


class DataAuditTrainerMixin:
    """Mix into a `transformers.Trainer` subclass (before it) to record each training batch's
    per-sample losses and logits, computed from the model's outputs and the batch's `labels`.

    Classification (logits (batch, classes), labels (batch,)): cross-entropy per sample, with
    the logits. Regression (one output, float labels): squared error. Token-level tasks (logits
    (batch, length, classes)): the mean cross-entropy over each sample's labelled tokens, without
    logits. Override `per_sample_losses` for anything else.
    """

    def training_step(self, model: torch.nn.Module, inputs: dict[str, Any], *args: Any, **kwargs: Any):
        callback = _callback(self)
        if callback is not None:
            callback.tracker.batch_start()
        return super().training_step(model, inputs, *args, **kwargs)

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None):
        labels = inputs.get("labels")   # the Trainer may pop it from inputs
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        callback = _callback(self)
        if callback is not None and model.training and labels is not None:
            logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs[1]
            losses, recorded_logits = self.per_sample_losses(logits, labels)
            sketched = next((inputs[k] for k in _SKETCHED_INPUTS if isinstance(inputs.get(k), torch.Tensor)), None)
            record_batch(self, losses, logits=recorded_logits, targets=labels if labels.ndim == 1 else None,
                         inputs=sketched)
        return (loss, outputs) if return_outputs else loss

    def per_sample_losses(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(losses (batch,), logits to record (batch, classes) or None) from the model's logits and the labels."""
        logits = logits.detach()
        if logits.ndim == 2 and labels.ndim == 1 and not labels.is_floating_point():
            return F.cross_entropy(logits.float(), labels, reduction="none"), logits
        if logits.ndim == 2 and logits.shape[1] == 1 and labels.is_floating_point():
            return (logits[:, 0].float() - labels.float()) ** 2, None
        if logits.ndim == 3 and labels.ndim == 2:
            per_token = F.cross_entropy(logits.float().transpose(1, 2), labels, reduction="none", ignore_index=-100)
            counted = (labels != -100).sum(1).clamp_min(1)
            return per_token.sum(1) / counted, None
        raise ValueError(f"DataAuditTrainerMixin cannot tell per-sample losses from logits of shape "
                         f"{tuple(logits.shape)} and labels of shape {tuple(labels.shape)}; "
                         "override per_sample_losses(logits, labels)")


def record_batch(trainer: Any, losses: torch.Tensor, **kwargs: Any) -> None:
    """Record the per-sample losses (batch,) of the batch the trainer's training step took, from a
    `compute_loss` of your own (with the mixin's `training_step`). Keyword arguments are
    `Tracker.record`'s: logits, targets, inputs, ids."""
    callback = _callback(trainer)
    if callback is None:
        raise ValueError("record_batch() needs a Trainer with a DataAuditCallback among its callbacks, in training")
    callback.tracker.record(losses, **kwargs)


def _callback(trainer: Any) -> DataAuditCallback | None:
    """The trainer's DataAuditCallback, while it is tracking."""
    handler = getattr(trainer, "callback_handler", None)
    for callback in getattr(handler, "callbacks", []):
        if isinstance(callback, DataAuditCallback) and callback.tracker is not None:
            return callback
    return None


def _torch_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's AcceleratedOptimizer (its step hooks are the ones that fire)."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer
