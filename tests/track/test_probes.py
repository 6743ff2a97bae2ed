from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dataaudit
from dataaudit.track.activations import ActivationProbe
from fixtures.causes import causes_loop
from fixtures.training import blobs


def test_manifest_carries_the_probes_and_parameter_shapes(tmp_path):
    X, y = blobs(n=200, d=8, k=3)
    run = causes_loop(tmp_path / "run", X, y, epochs=2, optimizer="adam", lr=0.01, schedule="warmup",
                      activations=2)
    probes = run.meta["probes"]
    states = probes["optimizer_state"]
    assert [s["at"] for s in states] == ["start", "end", "end"]
    assert "step" not in states[0]["groups"][0]                   # a fresh Adam has no state yet
    end = states[-1]
    assert end["groups"][0]["step"] == end["tracked_step"] == 8   # 4 steps an epoch
    assert end["groups"][0]["exp_avg"] > 0 and end["groups"][0]["exp_avg_sq"] > 0
    assert end["scheduler"] == {"last_epoch": 1, "step_count": 2}
    assert [b["passes_per_step"] for b in probes["backward"]] == [{"1": 4}, {"1": 4}]
    assert probes["backward"][0]["loss_weight"] == pytest.approx(1.0)
    layers = probes["activations"][0]["layers"]
    assert layers[0]["layer"] == "1" and layers[0]["units"] == 64 and layers[0]["outputs"] == 2 * 64
    params = run.meta["optimizer"]["params"]
    assert params[0] == {"name": "0.weight", "shape": [64, 8], "module": "Linear"}


def test_the_probes_do_not_change_training(tmp_path):
    X, y = blobs(n=200, d=8, k=3)
    a = causes_loop(tmp_path / "a", X, y, epochs=2, activations=1)
    b = causes_loop(tmp_path / "b", X, y, epochs=2)
    assert a.records["loss"].equals(b.records["loss"])


def test_activation_probe_counts_units_on_the_last_axis_and_channels_for_images():
    model = nn.Sequential(nn.Conv2d(1, 3, 1), nn.ReLU(), nn.Flatten(), nn.Linear(12, 5), nn.Tanh())
    probe = ActivationProbe(model, every=1, step_fn=lambda: 0)
    with torch.no_grad():
        model[0].bias.fill_(-100.0)                 # every channel dead
        model(torch.rand(4, 1, 2, 2))
    layers = {row["layer"]: row for row in probe.take()()}
    assert layers["1"]["units"] == 3 and layers["1"]["dead"] == 1.0 and layers["1"]["outputs"] == 16
    assert layers["4"]["units"] == 5 and "saturated" in layers["4"]
    probe.remove()


def test_the_probe_looks_once_per_sampled_step_once_an_epoch_and_not_in_eval():
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU())
    step = {"n": 1}
    probe = ActivationProbe(model, every=2, step_fn=lambda: step["n"])
    model(torch.randn(8, 2))                        # step 1: not sampled, but the first look of the epoch
    model(torch.randn(8, 2))                        # the same step again
    step["n"] = 3
    model(torch.randn(8, 2))                        # not sampled
    step["n"] = 4
    model(torch.randn(8, 2))                        # sampled
    model.eval()
    step["n"] = 6
    model(torch.randn(8, 2))                        # sampled, but not in training
    assert probe.take()()[0]["outputs"] == 16


@pytest.mark.parametrize("kwargs, message", [
    ({"activations": "yes"}, "activations to be a bool or a number of steps"),
    ({"activations": -1}, "positive number of steps"),
    ({"scheduler": object()}, "scheduler to be a torch.optim.lr_scheduler"),
])
def test_bad_watch_options_are_refused(tmp_path, kwargs, message):
    model = nn.Linear(2, 2)
    with dataaudit.Tracker(tmp_path / "run") as tracker:
        with pytest.raises((TypeError, ValueError), match=message):
            tracker.watch(torch.optim.SGD(model.parameters(), lr=0.1), model=model, **kwargs)


def test_activations_need_the_model(tmp_path):
    model = nn.Linear(2, 2)
    with dataaudit.Tracker(tmp_path / "run") as tracker:
        with pytest.raises(ValueError, match="needs model="):
            tracker.watch(torch.optim.SGD(model.parameters(), lr=0.1), activations=True)


def test_losses_recorded_detached_leave_the_weight_unknown(tmp_path):
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.utils.data.TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,)))
    with dataaudit.Tracker(tmp_path / "run") as tracker:
        loader = tracker.wrap(torch.utils.data.DataLoader(data, batch_size=8))
        tracker.watch(opt, model=model)
        for xb, yb in loader:
            losses = F.cross_entropy(model(xb), yb, reduction="none")
            tracker.record(losses.detach(), targets=yb)
            opt.zero_grad()
            losses.mean().backward()
            opt.step()
    backward = dataaudit.load_run(tmp_path / "run").meta["probes"]["backward"][0]
    assert backward["loss_weight"] is None and backward["passes_per_step"] == {"1": 4}
