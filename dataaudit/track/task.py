"""The run's task, decided once from what record() receives, and each batch read by it.

Like scikit-learn's `type_of_target`, one function decides what is learnt, from the
logits' shape and the targets' dtype and shape together (never the dtype alone):

- classification : logits of shape (batch, k), k >= 2; targets are class indices (batch,)
  or one-hot / soft rows (batch, k);
- binary : one logit per sample, shape (batch,) or (batch, 1) (BCEWithLogitsLoss); targets
  are 0/1 or probabilities of class 1. Stored as the two-class logits (0, z), whose softmax
  is the sigmoid: labels, predictions, probabilities and margins read as for two classes
  (the margin of label 1 is z, of label 0 is -z);
- regression : no logits and floating-point targets of shape (batch,) or (batch, d) (MSE,
  L1, Huber). The target is stored (its L2 norm when d > 1); there are no labels.

Soft targets (mixup, cutmix, smoothed one-hots) give a label only where one class dominates:
its target probability is at least `DOMINANT` and above every other class's. Elsewhere the
label is -1 (unknown). The targets' entropy is kept per sample: a cross-entropy against soft
targets cannot go below it, so the checks read the loss above it (`dataaudit.run`). Whether a
batch was soft is computed on the device, so that recording never waits for it; the writer
thread notes it in the manifest.

Only the batch that decides the task has its values read (one device sync per run).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dataaudit.track.batch import float32_copy

KINDS = ("classification", "binary", "regression")
# A soft target's largest class probability must reach this (and exceed the runner-up) to be its label.
DOMINANT = 0.5


def infer_task(logits: torch.Tensor | None, targets: torch.Tensor | None) -> dict[str, Any] | None:
    """The task a batch shows, as the manifest's `task` entry; None when the batch tells nothing
    (neither logits nor targets).

    logits : (batch,), (batch, 1) or (batch, k), or None; targets : (batch,) or (batch, d), or None.
    """
    if logits is not None:
        if logits.ndim == 1 or (logits.ndim == 2 and logits.shape[1] == 1):
            if targets is not None:
                _check_binary_values(targets)
            return {"kind": "binary", "soft_targets": False, "num_classes": 2, "single_logit": True}
        if logits.ndim == 2:
            return {"kind": "classification", "soft_targets": False, "num_classes": int(logits.shape[1])}
        raise ValueError(f"record() needs logits of shape (batch, classes), or (batch,) for one logit; "
                         f"got shape {tuple(logits.shape)}")
    if targets is None:
        return None
    if targets.is_floating_point():
        dim = 1 if targets.ndim == 1 else int(np.prod(targets.shape[1:]))
        return {"kind": "regression", "soft_targets": False, "num_classes": None, "target_dim": dim,
                "target_column": "the target" if dim == 1 else f"the L2 norm of the {dim}-dimensional target"}
    return {"kind": "classification", "soft_targets": False, "num_classes": None}


def read_batch(task: dict[str, Any], logits: torch.Tensor | None, targets: torch.Tensor | None,
               n: int) -> dict[str, torch.Tensor]:
    """The batch's row entries under `task`: logits (n, k) float32, label (n,) int64 (-1 unknown),
    soft () bool (a device tensor: some target was soft), target_entropy (n,) float32 and target_prob (n,)
    float32 (the largest class probability) for targets given as probabilities, target (n,) float32
    (regression).

    Copies, not views: loaders and CUDA graphs may reuse their buffers. Raises ValueError when the
    batch contradicts the task the run's earlier batches showed.
    """
    kind = task["kind"]
    row: dict[str, torch.Tensor] = {}
    if logits is not None:
        row["logits"] = _logits(task, logits.detach(), n)
    if targets is None:
        return row
    targets = targets.detach()
    if kind == "regression":
        if not targets.is_floating_point():
            raise ValueError(f"record() got integer targets ({targets.dtype}); earlier batches of this regression "
                             "run had floating-point targets")
        flat = targets.reshape(n, -1).to(torch.float32)
        if flat.shape[1] != task["target_dim"]:
            raise ValueError(f"record() got targets of {flat.shape[1]} values per sample; earlier batches had "
                             f"{task['target_dim']}")
        row["target"] = (flat[:, 0] if flat.shape[1] == 1 else flat.norm(dim=1)).clone()
        return row
    if kind == "binary":
        if targets.ndim == 2 and targets.shape[1] == 1:
            targets = targets[:, 0]
        if targets.ndim != 1:
            raise ValueError(f"record() needs targets of shape ({n},) or ({n}, 1) for a single-logit binary "
                             f"classifier; got shape {tuple(targets.shape)}")
        if not targets.is_floating_point():
            row["label"] = targets.long()
            return row
        t = targets.float()
        row["label"] = torch.where(t > DOMINANT, 1, torch.where(t < DOMINANT, 0, -1)).long()
        row["soft"] = ((t > 0) & (t < 1)).any()
        row["target_entropy"] = _entropy(torch.stack([1 - t, t], 1))
        row["target_prob"] = torch.maximum(t, 1 - t)
        return row
    k = task.get("num_classes")
    if targets.ndim == 2 and targets.shape[1] > 1:
        if k is not None and targets.shape[1] != k:
            raise ValueError(f"record() got targets of shape {tuple(targets.shape)}; the logits have {k} classes")
        top = targets.float().topk(2, dim=1).values
        dominant = (top[:, 0] >= DOMINANT) & (top[:, 0] > top[:, 1])
        row["label"] = torch.where(dominant, targets.argmax(1), -1).long()
        row["soft"] = (top[:, 0] < 1).any()
        row["target_entropy"] = _entropy(targets.float())
        row["target_prob"] = top[:, 0]
        return row
    if targets.ndim == 2:
        targets = targets[:, 0]
    if targets.ndim != 1:
        raise ValueError(f"record() needs targets of shape ({n},) (class indices) or ({n}, classes); "
                         f"got shape {tuple(targets.shape)}")
    row["label"] = (targets.round() if targets.is_floating_point() else targets).long()
    return row


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of each row of p (n, k): the least cross-entropy loss these targets allow."""
    return -(p * p.clamp_min(1e-12).log()).sum(1)


def _logits(task: dict[str, Any], logits: torch.Tensor, n: int) -> torch.Tensor:
    kind = task["kind"]
    if kind == "regression":
        raise ValueError(f"record() got logits of shape {tuple(logits.shape)}; earlier batches of this run had no "
                         "logits and floating-point targets (regression)")
    if kind == "binary":
        if not (logits.ndim == 1 or (logits.ndim == 2 and logits.shape[1] == 1)):
            raise ValueError(f"record() got logits of shape {tuple(logits.shape)}; earlier batches of this run had "
                             "one logit per sample (a single-logit binary classifier)")
        z = logits.reshape(n).to(torch.float32)
        return torch.stack([torch.zeros_like(z), z], 1)  # softmax of (0, z) is (1 - sigmoid z, sigmoid z)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"record() got logits of shape {tuple(logits.shape)}; earlier batches of this run had "
                         f"{task.get('num_classes')} classes")
    k = task.get("num_classes")
    if k is not None and logits.shape[1] != k:
        raise ValueError(f"record() got logits with {logits.shape[1]} classes; earlier batches had {k}")
    return float32_copy(logits)


def _check_binary_values(targets: torch.Tensor) -> None:
    """The deciding batch of a binary run: its targets must be 0/1 or probabilities (reads them once)."""
    t = targets.detach()
    if t.numel() == 0:
        return
    lo, hi = float(t.min()), float(t.max())
    if lo < 0 or hi > 1:
        raise ValueError(f"record() got one logit per sample (a binary classifier) but targets in [{lo:g}, {hi:g}]; "
                         "a binary classifier's targets are 0/1 or probabilities of class 1. For regression "
                         "pass logits=None and the float targets")
