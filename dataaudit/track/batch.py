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


def float32_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A float32 copy of `tensor` (clone() where it is float32 already: on a CPU a third cheaper than
    .to(torch.float32, copy=True))."""
    return tensor.clone() if tensor.dtype == torch.float32 else tensor.to(torch.float32)


def check_rows(name: str, tensor: Any, n: int) -> torch.Tensor:
    """`tensor`, checked to be a tensor whose first dimension is the batch of `n` samples."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"record() needs {name} as a tensor; got {type(tensor).__name__}")
    if tensor.ndim == 0 or tensor.shape[0] != n:
        raise ValueError(f"record() got {n} losses but {name} has shape {tuple(tensor.shape)}; "
                         f"the first dimension must be the batch ({n})")
    return tensor


def as_target_tensor(targets: Any) -> torch.Tensor:
    """`targets` as a tensor: class indices, values, or (batch, classes) probabilities (their reading by task is
    `dataaudit.track.task.read_batch`'s)."""
    if isinstance(targets, torch.Tensor):
        return targets
    try:
        array = np.asarray(targets)
    except (TypeError, ValueError):
        array = None
    if array is None or array.dtype.kind not in "iufb":
        what = f"an array of dtype {array.dtype}" if array is not None else type(targets).__name__
        raise TypeError(f"record() needs targets as class indices, values or (batch, classes) probabilities; "
                        f"got {what}")
    return torch.as_tensor(array)


class TargetRangeError(ValueError):
    """record() got class-index targets outside the logits' classes.

    Found on the writer thread, where the targets are on the host anyway (checking on the training thread
    would wait for the device at every step); raised on the training thread at the next record(), the end
    of the epoch or close().
    """


def check_target_range(labels: np.ndarray, num_classes: int, *, epoch: int, logits: bool = True) -> None:
    """Raise TargetRangeError if a class index in labels (n,) is >= num_classes.

    Negative targets stay allowed: they are ignore_index-style "no label" (cross_entropy's -100), recorded
    as unknown. With one logit (binary), targets 0 and 1 are both valid. logits=False: num_classes is only
    the most class indices dataaudit counts (no logits to say how many there are).
    """
    bad = labels >= max(num_classes, 2)
    if bad.any():
        top, count = int(labels.max()), int(bad.sum())
        if not logits:
            raise TargetRangeError(f"record() got targets up to {top} ({count} samples of epoch {epoch}); expected "
                                   f"class indices below {num_classes}, or negative for no label")
        raise TargetRangeError(
            f"record() got targets up to {top} with logits of {num_classes} classes (expected class indices "
            f"0..{max(num_classes, 2) - 1}, or negative for no label); {count} samples of epoch {epoch}: are the "
            "targets and the model's classes the same?")


# Up to this many classes, logit_stats reduces over the classes along a (classes, n) copy: numpy reduces a
# few values per row slowly (argmax over 10 classes takes 20 times the time of the exp of the same values).
_FEW_CLASSES = 64


def logit_stats(logits: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Prediction, probabilities, probability of the given label and margin, from logits (n, k).

    margin = logit of the given label - largest other logit (Pleiss et al., 2020,
    "area under the margin"); negative when the model prefers another class.
    Rows whose label is not a class index (-1: unknown) get NaN probability and margin.
    The prediction is the first of tied largest logits, as argmax's.
    Computed with numpy on the writer thread, away from torch's intra-op threads.
    """
    logits = np.asarray(logits, dtype=np.float32)
    n, k = logits.shape
    rows = np.arange(n)
    top, largest, second = _top_two(logits) if k <= _FEW_CLASSES else _top_two_by_row(logits)
    valid = (labels >= 0) & (labels < k)
    index = np.where(valid, labels, 0)
    given = logits[rows, index]
    # the largest other logit is the largest, unless the label is the top class: then the second largest
    margin = given - np.where(index == top, second, largest)
    probs = logits - largest[:, None]
    np.exp(probs, out=probs)
    total = np.ascontiguousarray(probs.T).sum(0) if k <= _FEW_CLASSES else probs.sum(1)
    probs /= total[:, None]
    nan = np.float32(np.nan)
    return {"pred": top, "probs": probs,
            "prob": np.where(valid, probs[rows, index], nan), "margin": np.where(valid, margin, nan)}


def _top_two(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(index of the largest logit (n,) int64, the largest (n,), the second largest (n,)), over a
    (classes, n) copy."""
    n, k = logits.shape
    columns = np.ascontiguousarray(logits.T)
    largest = columns.max(0)
    top = np.zeros(n, np.int64)
    for j in range(k - 1, -1, -1):  # the first of tied classes written last
        np.copyto(top, j, where=columns[j] == largest)
    columns[top, np.arange(n)] = -np.inf
    return top, largest, columns.max(0)


def _top_two_by_row(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """_top_two for many classes, reducing each row."""
    rows = np.arange(len(logits))
    top = logits.argmax(1)
    largest = logits[rows, top]
    others = logits.copy()
    others[rows, top] = -np.inf
    return top, largest, others.max(1)
