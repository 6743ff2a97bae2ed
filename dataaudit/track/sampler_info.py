"""What a DataLoader promises to draw each epoch, read from its sampler at wrap().

The coverage check compares an epoch's draws with this contract: a sampler with
replacement (RandomSampler(replacement=True), WeightedRandomSampler) repeats and skips
samples by design, `drop_last` leaves out fewer than a batch per epoch, a
SubsetRandomSampler draws its subset only; a plain sampler over the whole dataset
draws every sample once. The facts are JSON-able and go to
`manifest["splits"][split]["loader"]`.
"""
from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader, RandomSampler, SequentialSampler, SubsetRandomSampler, WeightedRandomSampler
from torch.utils.data.distributed import DistributedSampler


def sampler_facts(loader: Any) -> dict[str, Any]:
    """The sampling contract of `loader` (a DataLoader; other iterables get only their class name).

    Returns
    -------
    dict with: loader (class name), sampler and batch_sampler (class names or None), batch_size,
    drop_last, dataset_size, replacement, weighted, num_samples (the sampler's draws per epoch, when it
    has a length), epoch_draws (samples an epoch yields by the contract, after drop_last, over all
    ranks), contract ("without replacement": num_samples distinct indices per epoch, all of the dataset
    when that is its size; "with replacement"; "subset": a fixed subset, each of it once; "unknown": a
    custom sampler), subset_size (SubsetRandomSampler), and for a DistributedSampler num_replicas,
    shuffle and its own drop_last (sampler_drop_last).
    """
    facts: dict[str, Any] = {"loader": type(loader).__name__}
    if not isinstance(loader, DataLoader):
        return facts
    batch_sampler = loader.batch_sampler
    # a user's BatchSampler wraps the real sampler; the loader's own `sampler` is then a default
    sampler = getattr(batch_sampler, "sampler", None) or loader.sampler
    batch_size = loader.batch_size if loader.batch_size is not None else getattr(batch_sampler, "batch_size", None)
    drop_last = bool(getattr(batch_sampler, "drop_last", loader.drop_last))
    facts.update({
        "sampler": type(sampler).__name__ if sampler is not None else None,
        "batch_sampler": type(batch_sampler).__name__ if batch_sampler is not None else None,
        "batch_size": batch_size,
        "drop_last": drop_last,
        "dataset_size": _length(loader.dataset),
        "replacement": bool(getattr(sampler, "replacement", False)),
        "weighted": isinstance(sampler, WeightedRandomSampler),
        "num_samples": _length(sampler),
        "contract": _contract(sampler),
    })
    if isinstance(sampler, SubsetRandomSampler):
        facts["subset_size"] = len(sampler.indices)
    if isinstance(sampler, DistributedSampler):
        facts.update(num_replicas=int(sampler.num_replicas), shuffle=bool(sampler.shuffle),
                     sampler_drop_last=bool(sampler.drop_last))
    draws = facts["num_samples"]
    if draws is not None and drop_last and batch_size:
        draws = draws // batch_size * batch_size
    if draws is not None and isinstance(sampler, DistributedSampler):  # an epoch is every rank's draws
        draws *= int(sampler.num_replicas)
    facts["epoch_draws"] = draws
    return facts


def _contract(sampler: Any) -> str:
    if getattr(sampler, "replacement", False):
        return "with replacement"
    if isinstance(sampler, SubsetRandomSampler):
        return "subset"
    if isinstance(sampler, (SequentialSampler, RandomSampler, DistributedSampler, WeightedRandomSampler)):
        return "without replacement"
    return "unknown"


def _length(obj: Any) -> int | None:
    try:
        return int(len(obj))
    except (TypeError, NotImplementedError):
        return None

