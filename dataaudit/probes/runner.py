"""Running one arm: a short continuation of training from a copy of the user's state.

The user's model, optimizer and scheduler are deep-copied together (one
`copy.deepcopy` of the tuple, so the copied optimizer steps the copied
parameters), and the global random states (python, numpy, torch, CUDA) are
saved before and restored after: the user's objects and random streams are
exactly as they were, whatever happens inside.
"""
from __future__ import annotations

import copy
import math
import random
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from dataaudit.probes.arms import Arm
from dataaudit.probes.data import absorb_standardisation


@dataclass
class Training:
    """What the continuation needs to take a step, as the user's loop does.

    loss : (model, batch) -> per-sample losses of shape (batch,).
    clip : max_norm of clip_grad_norm_ applied before each step, or None.
    scheduler_step : "epoch" (scheduler.step() after each epoch) or "step" (after each optimizer step).
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss: Callable
    scheduler: object | None = None
    clip: float | None = None
    scheduler_step: str = "epoch"


@dataclass(frozen=True)
class ArmRun:
    """One arm on one seed: the mean training loss of each continuation epoch, shape (k,), and the yardstick."""

    arm: str
    seed: int
    epoch_loss: tuple[float, ...]
    level: float         # mean per-sample loss over the last half of the continuation's steps
    samples: int         # samples processed
    seconds: float
    absorbed: bool | None = None  # standardise_features: whether the first layer absorbed the change


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore python's, numpy's, torch's and (when initialised) CUDA's random states on exit."""
    py, npy, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def run_arm(arm: Arm, training: Training, loader: DataLoader, *, seed: int, epochs: int, steps_per_epoch: int,
            on_step: Callable[[int], None] | None = None) -> ArmRun:
    """Continue training from a copy of `training`'s state with the arm's changes, for `epochs` epochs of at most
    `steps_per_epoch` steps each; `loader` is the arm's own (see `data.loader_for`)."""
    start = time.perf_counter()
    with preserved_rng():
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        model, optimizer, scheduler = copy.deepcopy((training.model, training.optimizer, training.scheduler))
        clip = None if arm.optimizer == "unclip" else training.clip
        if arm.optimizer == "reset_state":
            optimizer.state = defaultdict(dict)
        if arm.optimizer == "unfreeze":
            _unfreeze(model, optimizer)
        factor = _lr_factor(arm, epochs * steps_per_epoch)
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        absorbed = None
        if arm.data == "standardise_features":
            absorbed = absorb_standardisation(model, arm.params, _to(next(iter(loader)), device))
        model.train()
        sums, counts, step, samples, last_half = [], [], 0, 0, []
        total_steps = epochs * steps_per_epoch
        for _ in range(epochs):
            total, count = 0.0, 0
            for b, batch in enumerate(loader):
                if b >= steps_per_epoch:
                    break
                batch = _to(batch, device)
                losses = training.loss(model, batch)
                if losses.ndim != 1:
                    raise ValueError(f"probe loss_fn must return one loss per sample (reduction='none'); got a "
                                     f"tensor of shape {tuple(losses.shape)}")
                optimizer.zero_grad(set_to_none=True)
                losses.mean().backward()
                if clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                base = [g["lr"] for g in optimizer.param_groups]
                for g in optimizer.param_groups:
                    g["lr"] = g["lr"] * factor(step)
                optimizer.step()
                for g, lr in zip(optimizer.param_groups, base, strict=True):  # the scheduler keeps its own course
                    g["lr"] = lr
                if scheduler is not None and training.scheduler_step == "step":
                    _step(scheduler, float(losses.detach().mean()))
                loss_sum, weight = _weighted(losses.detach(), batch, getattr(loader, "class_weights", None))
                total += loss_sum
                count += weight
                if step >= total_steps // 2:
                    last_half.append((loss_sum, weight))
                step += 1
                samples += len(losses)
                if on_step is not None:
                    on_step(len(losses))
            if scheduler is not None and training.scheduler_step == "epoch":
                _step(scheduler, total / count if count else None)
            sums.append(total)
            counts.append(count)
        seen = sum(n for _, n in last_half)
        level = sum(s for s, _ in last_half) / seen if seen else math.nan
    return ArmRun(arm.name, seed, tuple(s / c if c else math.nan for s, c in zip(sums, counts, strict=True)), level,
                  samples, time.perf_counter() - start, absorbed)


def _lr_factor(arm: Arm, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the learning rate at each step. lr_start, cosine-decayed to lr_end over the first half;
    with `warmup` (a share of the steps), first a linear ramp from 1 to lr_start, so that a restored rate
    does not jolt a model that settled at a much smaller one."""
    if arm.optimizer not in ("lr_restart", "lr_lower"):
        return lambda step: 1.0
    start, end = arm.params.get("lr_start", 1.0), arm.params.get("lr_end", 1.0)
    warm = int(arm.params.get("warmup", 0.0) * total_steps)
    half = max(total_steps // 2, 1)

    def factor(step: int) -> float:
        if step < warm:
            return 1.0 + (start - 1.0) * (step + 1) / warm
        if step >= half:
            return end
        return end + (start - end) * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(half - warm, 1)))
    return factor


def _step(scheduler, loss: float | None) -> None:
    """scheduler.step(), with the training loss for ReduceLROnPlateau (the continuation has no validation loss)."""
    # A deep-copied scheduler no longer sees the copied optimizer's step counter and warns that step() was
    # overridden; the order of the calls here is the right one.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Seems like `optimizer.step\\(\\)` has been overridden")
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(loss)
        else:
            scheduler.step()


def _weighted(losses: torch.Tensor, batch, class_weights: torch.Tensor | None) -> tuple[float, float]:
    """(sum of the losses, their count), each draw weighted by its class's weight when there are weights."""
    if class_weights is None:
        return float(losses.sum()), float(len(losses))
    w = class_weights.to(losses.device)[batch[1].long()].to(losses.dtype)
    return float((losses * w).sum()), float(w.sum())


def _unfreeze(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """requires_grad on every parameter; those in no param group join a new one with the first group's settings."""
    known = {id(p) for g in optimizer.param_groups for p in g["params"]}
    missing = []
    for p in model.parameters():
        p.requires_grad_(True)
        if id(p) not in known:
            missing.append(p)
    if missing:
        first = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
        optimizer.add_param_group({**first, "params": missing})


def _to(batch, device: torch.device):
    if torch.is_tensor(batch):
        return batch.to(device)
    if isinstance(batch, tuple | list):
        return type(batch)(_to(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch
