"""The batches an arm trains on: the user's loader as it was, or a data arm's change of it.

A data arm changes the dataset or the sampler and keeps the rest of the loader
(batch size, collate function, drop_last). Samples are `(input, target, ...)`
items of a map-style dataset indexed by sample id, as the tracker counts them.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, WeightedRandomSampler

from dataaudit.probes.arms import Arm


class _Changed(Dataset):
    """`base` with the labels of some ids replaced and/or some input features standardised."""

    def __init__(self, base: Dataset, *, labels: dict[int, int] | None = None, features: dict | None = None):
        self.base, self.labels, self.features = base, labels or {}, features

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        item = self.base[i]
        if not isinstance(item, tuple | list) or len(item) < 2:
            raise ValueError(f"probe data arms need dataset items (input, target, ...); got {type(item).__name__}")
        item = list(item)
        if int(i) in self.labels:
            target = item[1]
            new = self.labels[int(i)]
            item[1] = torch.as_tensor(new, dtype=target.dtype) if torch.is_tensor(target) else type(target)(new)
        if self.features is not None:
            x = torch.as_tensor(item[0])
            flat = x.reshape(-1).clone().to(torch.float64)
            f = self.features
            flat[f["index"]] = (flat[f["index"]] - f["mean"]) / f["std"]
            item[0] = flat.to(x.dtype).reshape(x.shape)
        return tuple(item)


class _Skipping(Sampler):
    """The ids of `base`'s order except those in `drop`."""

    def __init__(self, base, drop: set[int]):
        self.base, self.drop = base, drop

    def __iter__(self) -> Iterator[int]:
        return (i for i in self.base if int(i) not in self.drop)

    def __len__(self) -> int:
        return max(len(self.base) - len(self.drop), 0)


def loader_for(arm: Arm, loader: DataLoader, *, labels: np.ndarray | None, seed: int) -> DataLoader:
    """A fresh loader (no workers, its own random generator seeded by `seed`) for the arm's data change.

    loader : the user's loader; its dataset, batch size, collate function and sampler are reused, never
        iterated (its sampler is copied, so the user's generator does not advance).
    labels : the class of each sample id, shape (n,), for class-balanced sampling; None when unknown.
    """
    dataset, change, params = loader.dataset, arm.data, arm.params
    generator = torch.Generator().manual_seed(seed)
    sampler = _copied_sampler(loader, generator)
    if change == "drop_flagged":
        sampler = _Skipping(sampler, {int(i) for i in params["ids"]})
    elif change == "relabel_flagged":
        dataset = _Changed(dataset, labels=dict(zip(params["ids"].tolist(), params["labels"].tolist(), strict=True)))
    elif change == "standardise_features":
        features = {"index": torch.as_tensor(params["features"]), "mean": torch.as_tensor(params["mean"]),
                    "std": torch.as_tensor(params["std"])}
        dataset = _Changed(dataset, features=features)
    elif change == "every_sample":
        sampler = RandomSampler(range(len(dataset)), generator=generator)
    elif change == "balance_classes":
        if labels is None:
            raise ValueError("the balance_classes arm needs each sample's class (the run's records have none)")
        counts = np.bincount(labels[labels >= 0])
        weights = np.where(labels >= 0, 1.0 / np.maximum(counts[np.clip(labels, 0, None)], 1), 0.0)
        sampler = WeightedRandomSampler(torch.as_tensor(weights), num_samples=len(dataset), replacement=True,
                                        generator=generator)
    out = DataLoader(dataset, batch_size=loader.batch_size, sampler=sampler, collate_fn=loader.collate_fn,
                     drop_last=loader.drop_last, num_workers=0)
    if change == "balance_classes":
        # The yardstick stays the mean loss over the dataset's samples: a draw of class c counts
        # p_natural(c) / p_balanced(c), so that drawing the rare classes more often does not by itself
        # raise (or lower) the measured loss.
        natural = counts / counts.sum()
        present = counts > 0
        out.class_weights = torch.as_tensor(np.where(present, natural * present.sum(), 0.0), dtype=torch.float64)
    return out


def _copied_sampler(loader: DataLoader, generator: torch.Generator):
    """A copy of the loader's sampler drawing from `generator` (so the user's sampler is never advanced)."""
    if loader.batch_sampler is not None and loader.sampler is not None:
        sampler = loader.sampler
    else:
        raise ValueError("probe needs a DataLoader with a batch_size (a sampler of single ids); got one built "
                         "with batch_sampler=")
    sampler = copy.deepcopy(sampler)
    for owner in (sampler, getattr(sampler, "sampler", None)):
        if owner is not None and hasattr(owner, "generator"):
            owner.generator = generator
    return sampler


def sample_labels(dataset: Dataset) -> np.ndarray | None:
    """Each sample's class from a dataset of (input, target) items with integer targets, shape (n,); None if not."""
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None and len(tensors) >= 2 and tensors[1].ndim == 1 and not tensors[1].is_floating_point():
        return tensors[1].numpy().astype(np.int64)
    try:
        return np.array([int(dataset[i][1]) for i in range(len(dataset))], np.int64)
    except (TypeError, ValueError, IndexError):
        return None


def absorb_standardisation(model: torch.nn.Module, params: dict, batch) -> bool:
    """Fold the standardisation of features into the model's first linear layer, in place, so that the model
    computes the same function on standardised inputs as it did on the raw ones: W' = W diag(std),
    b' = b + W[:, f] mean. Then a continuation measures what the better-conditioned inputs do to training,
    not the shock of inputs the model was never trained on. Checked on `batch` (its inputs standardised):
    when the outputs differ (the first linear layer does not see the raw inputs), the layer is restored and
    False returned.
    """
    x = batch[0] if isinstance(batch, tuple | list) else None
    if not torch.is_tensor(x) or not x.is_floating_point():
        return False
    flat = x.reshape(len(x), -1)
    layer = next((m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.in_features == flat.shape[1]),
                 None)
    if layer is None:
        return False
    index = torch.as_tensor(params["features"], device=x.device)
    mean = torch.as_tensor(params["mean"], dtype=x.dtype, device=x.device)
    std = torch.as_tensor(params["std"], dtype=x.dtype, device=x.device)
    raw = flat.clone()
    raw[:, index] = flat[:, index] * std + mean
    with torch.no_grad():
        before = model(raw.reshape(x.shape))
        weight, bias = layer.weight.detach().clone(), None if layer.bias is None else layer.bias.detach().clone()
        if layer.bias is None:
            return False
        layer.bias.add_(layer.weight[:, index] @ mean)
        layer.weight[:, index] *= std
        after = model(x)
        scale = before.abs().max().clamp_min(1.0)
        if not torch.allclose(before, after, rtol=1e-3, atol=1e-3 * float(scale)):
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)
            return False
    return True
