from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dataaudit.probes import arms, runner
from fixtures.probing import cross_entropy


def test_restart_decays_back_and_restore_holds():
    restart = arms.Arm("lr_restart", "optimizer", "x10", optimizer="lr_restart", params={"lr_start": 10, "lr_end": 1})
    f = runner._lr_factor(restart, 100)
    assert f(0) == pytest.approx(10) and f(25) == pytest.approx(5.5) and f(50) == f(99) == 1
    restore = arms.Arm("lr_restart", "optimizer", "peak", optimizer="lr_restart",
                       params={"lr_start": 1e4, "lr_end": 1e4, "warmup": 0.25})
    f = runner._lr_factor(restore, 100)
    assert f(0) < 1e3 and f(24) == pytest.approx(1e4) and f(80) == pytest.approx(1e4)  # a ramp, then the peak
    assert runner._lr_factor(arms.control(), 100)(3) == 1


def test_run_arm_with_schedulers_leaves_the_random_streams_alone():
    torch.manual_seed(0)
    X, y = torch.randn(64, 3), torch.randint(0, 2, (64,))
    loader = DataLoader(TensorDataset(X, y), batch_size=16, shuffle=True)
    model = nn.Linear(3, 2)
    for make, step in ((lambda o: torch.optim.lr_scheduler.StepLR(o, 1), "step"),
                       (lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o), "epoch")):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        training = runner.Training(model, opt, lambda m, b: cross_entropy(m(b[0]), b[1]), make(opt), None, step)
        states = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
        out = runner.run_arm(arms.control(), training, loader, seed=3, epochs=2, steps_per_epoch=3)
        assert len(out.epoch_loss) == 2 and out.samples == 2 * 3 * 16 and np.isfinite(out.level)
        assert torch.equal(states[0], torch.get_rng_state()) and random.getstate() == states[2]
        assert np.array_equal(states[1], np.random.get_state()[1])
        assert opt.param_groups[0]["lr"] == 0.1  # the user's optimizer was not stepped or scheduled


def test_a_loss_per_batch_is_refused():
    model = nn.Linear(3, 2)
    loader = DataLoader(TensorDataset(torch.randn(8, 3), torch.zeros(8, dtype=torch.long)), batch_size=4)
    training = runner.Training(model, torch.optim.SGD(model.parameters(), lr=0.1),
                               lambda m, b: cross_entropy(m(b[0]), b[1]).mean())
    with pytest.raises(ValueError, match="one loss per sample"):
        runner.run_arm(arms.control(), training, loader, seed=0, epochs=1, steps_per_epoch=2)
