from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def run_dir(tmp_path):
    return tmp_path / "run"


def make_run(run_dir, epochs=3):
    """A small tracked run: 3 epochs of a linear model, with optimizer telemetry."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset

    import dataaudit

    torch.manual_seed(0)
    ds = TensorDataset(torch.randn(120, 4), torch.randint(0, 3, (120,)))
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with dataaudit.Tracker(run_dir) as tracker:
        loader = tracker.wrap(DataLoader(ds, batch_size=30, shuffle=True))
        tracker.watch(opt, model=model, every=1)
        for _ in range(epochs):
            for x, y in loader:
                logits = model(x)
                losses = F.cross_entropy(logits, y, reduction="none")
                tracker.record(losses, logits=logits, targets=y, inputs=x)
                opt.zero_grad()
                losses.mean().backward()
                opt.step()
    return run_dir


@pytest.fixture(scope="session")
def built_run(tmp_path_factory):
    """A small intact run, shared: copy it (run_copy) before damaging it."""
    return make_run(tmp_path_factory.mktemp("built") / "run")


@pytest.fixture
def run_copy(built_run, tmp_path):
    """A copy of the built run, to damage."""
    import shutil

    return shutil.copytree(built_run, tmp_path / "run_copy")
