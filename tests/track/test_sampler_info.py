"""The loader's sampling contract, read at wrap() (dataaudit/track/sampler_info.py)."""
from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    RandomSampler,
    SubsetRandomSampler,
    TensorDataset,
    WeightedRandomSampler,
)
from torch.utils.data.distributed import DistributedSampler

import dataaudit
from dataaudit import store
from dataaudit.track.sampler_info import sampler_facts

DS = TensorDataset(torch.zeros(103))


@pytest.mark.parametrize("loader, expected", [
    (DataLoader(DS, batch_size=10),
     {"sampler": "SequentialSampler", "contract": "without replacement", "num_samples": 103, "epoch_draws": 103,
      "drop_last": False, "replacement": False, "weighted": False}),
    (DataLoader(DS, batch_size=10, shuffle=True, drop_last=True),
     {"sampler": "RandomSampler", "drop_last": True, "batch_size": 10, "epoch_draws": 100}),
    (DataLoader(DS, batch_size=10, sampler=RandomSampler(DS, replacement=True)),
     {"contract": "with replacement", "replacement": True, "weighted": False}),
    (DataLoader(DS, batch_size=10, sampler=WeightedRandomSampler([1.0] * 103, 50)),
     {"sampler": "WeightedRandomSampler", "weighted": True, "replacement": True, "num_samples": 50}),
    (DataLoader(DS, batch_size=10, sampler=SubsetRandomSampler(range(60))),
     {"contract": "subset", "subset_size": 60, "dataset_size": 103}),
    (DataLoader(DS, batch_sampler=BatchSampler(RandomSampler(DS), 8, drop_last=True)),
     {"sampler": "RandomSampler", "batch_sampler": "BatchSampler", "batch_size": 8, "drop_last": True,
      "epoch_draws": 96}),
    (DataLoader(DS, batch_size=10, sampler=DistributedSampler(DS, num_replicas=4, rank=1)),
     {"sampler": "DistributedSampler", "num_replicas": 4, "num_samples": 26, "epoch_draws": 104,
      "contract": "without replacement"}),
], ids=["sequential", "drop_last", "replacement", "weighted", "subset", "batch_sampler", "distributed"])
def test_sampler_facts(loader, expected):
    facts = sampler_facts(loader)
    assert {k: facts[k] for k in expected} == expected
    json.dumps(facts)


def test_a_plain_iterable_gives_its_class_only():
    assert sampler_facts([1, 2, 3]) == {"loader": "list"}


def test_wrap_records_the_facts(run_dir):
    with dataaudit.Tracker(run_dir) as tracker:
        tracker.wrap(DataLoader(DS, batch_size=10, shuffle=True, drop_last=True))
    loader = json.loads((run_dir / store.MANIFEST).read_text())["splits"]["train"]["loader"]
    assert loader["sampler"] == "RandomSampler" and loader["drop_last"] and loader["dataset_size"] == 103
