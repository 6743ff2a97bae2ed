from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dataaudit.probes import arms, data


def _loader(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 4, generator=g)
    X[:, 2] *= 300.0
    y = torch.arange(n) % 2
    return DataLoader(TensorDataset(X, y), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(1))


def _ids(loader):
    return [int(i) for i in loader.sampler]


def test_a_data_arm_leaves_the_users_loader_untouched():
    loader = _loader()
    state = loader.generator.get_state()
    arm = arms.Arm("drop_flagged", "data", "drop", data="drop_flagged", params={"ids": np.array([0, 1, 2])})
    changed = data.loader_for(arm, loader, labels=None, seed=3)
    drawn = [int(i) for i in changed.sampler]
    assert sorted(drawn) == list(range(3, 40))
    assert torch.equal(loader.generator.get_state(), state)


def test_relabel_and_balance():
    loader = _loader()
    arm = arms.Arm("relabel_flagged", "data", "relabel", data="relabel_flagged",
                   params={"ids": np.array([0, 3]), "labels": np.array([1, 0])})
    ds = data.loader_for(arm, loader, labels=None, seed=0).dataset
    assert int(ds[0][1]) == 1 and int(ds[3][1]) == 0 and int(ds[1][1]) == 1
    labels = np.array([0] * 36 + [1] * 4)
    balance = arms.Arm("balance_classes", "data", "balance", data="balance_classes")
    balanced = data.loader_for(balance, loader, labels=labels, seed=0)
    drawn = np.array([int(i) for i in balanced.sampler])
    assert 0.3 < (labels[drawn] == 1).mean() < 0.7  # the 10% class is drawn about half the time
    # the yardstick weighs the draws back to the classes' natural frequencies (0.9 and 0.1 over the balanced 0.5)
    assert balanced.class_weights.tolist() == pytest.approx([1.8, 0.2])


def test_standardising_is_absorbed_by_the_first_layer():
    loader = _loader()
    X = loader.dataset.tensors[0]
    params = {"features": np.array([2]), "mean": X[:, 2].double().mean().numpy(),
              "std": X[:, 2].double().std().numpy()}
    params = {k: np.atleast_1d(v) for k, v in params.items()}
    arm = arms.Arm("standardise_features", "data", "std", data="standardise_features", params=params)
    batch = next(iter(data.loader_for(arm, loader, labels=None, seed=0)))
    assert batch[0][:, 2].abs().max() < 10  # standardised
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    raw = batch[0].clone()
    raw[:, 2] = raw[:, 2] * float(params["std"][0]) + float(params["mean"][0])
    before = model(raw).detach()
    assert data.absorb_standardisation(model, params, batch)
    assert torch.allclose(model(batch[0]), before, rtol=1e-4, atol=1e-3)
    # a model whose first layer does not see the raw inputs is left as it was
    other = nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 2))
    weight = other[1].weight.detach().clone()
    assert not data.absorb_standardisation(other, params, batch)
    assert torch.equal(other[1].weight, weight)
