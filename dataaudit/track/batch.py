"""Per-sample statistics of one batch, computed on the batch's device.

Nothing here reads a value back to the host: every result stays a tensor on
the device, so recording a batch never waits for the GPU.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch


def per_sample_losses(losses: Any) -> torch.Tensor:
    """Validate `losses` as one loss per sample and return it detached, shape (batch,)."""
    if not isinstance(losses, torch.Tensor):
        raise TypeError(f"record() needs the per-sample losses as a tensor; got {type(losses).__name__}")
    if losses.ndim != 1:
        hint = " (use reduction='none')" if losses.ndim == 0 else ""
        raise ValueError(
            f"record() needs one loss per sample, a tensor of shape (batch,){hint}; got shape {tuple(losses.shape)}"
        )
    return losses.detach()


def as_targets(targets: Any, n: int, num_classes: int | None) -> torch.Tensor:
    """Class indices, shape (n,), from indices or from one-hot / soft targets of shape (n, k)."""
    if not isinstance(targets, torch.Tensor):
        targets = torch.as_tensor(np.asarray(targets))
    targets = targets.detach()
    if targets.ndim == 2 and (num_classes is None or targets.shape[1] == num_classes):
        targets = targets.argmax(1)
    if targets.ndim != 1 or targets.shape[0] != n:
        raise ValueError(
            f"record() needs targets of shape ({n},) (class indices) or ({n}, classes); "
            f"got shape {tuple(targets.shape)}"
        )
    if targets.is_floating_point():
        targets = targets.round()
    return targets.long()


def logit_stats(logits: torch.Tensor, targets: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Prediction, probability of the given label and margin from logits (n, k).

    margin = logit of the given label - largest other logit (Pleiss et al., 2020,
    "area under the margin"); negative when the model prefers another class.
    """
    logits = logits.detach().float()
    # softmax by hand: on the CPU it is several times faster than Tensor.softmax for few classes
    e = (logits - logits.amax(1, keepdim=True)).exp_()
    probs = e.div_(e.sum(1, keepdim=True))
    out = {"pred": logits.argmax(1), "probs": probs}
    if targets is not None:
        index = targets.clamp(0, logits.shape[1] - 1)[:, None]
        given = logits.gather(1, index)[:, 0]
        others = logits.scatter(1, index, float("-inf")).amax(1)
        out["prob"] = probs.gather(1, index)[:, 0]
        out["margin"] = given - others
    return out
