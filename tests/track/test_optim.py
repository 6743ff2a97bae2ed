from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import dataaudit
from fixtures.training import blobs, train


def test_step_telemetry(run_dir):
    X, y = blobs(n=64)
    train(run_dir, X, y, epochs=2, batch_size=16)
    steps = dataaudit.load_run(run_dir).steps
    assert len(steps) == 8 and steps["step"].tolist() == list(range(8))
    assert (steps["lr"] == 1e-2).all()
    assert (steps["grad_norm"] > 0).all() and not steps["clipped"].any()
    measured = steps["step"] % 10 == 0   # raw norms and updates are measured every 10th step
    np.testing.assert_allclose(steps.loc[measured, "grad_norm"], steps.loc[measured, "grad_norm_raw"], rtol=1e-5)
    assert steps.loc[measured, "update_ratio"].gt(0).all()
    assert steps.loc[~measured, ["update_ratio", "grad_norm_raw"]].isna().all().all()
    assert steps["loss"].notna().all()


def test_each_steps_loss_is_the_mean_of_the_losses_recorded_before_it(run_dir):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sizes = [5, 1, 4, 0, 7]  # batches of several sizes, an empty one among them
    losses = [torch.arange(n, dtype=torch.float32) * (i + 1) for i, n in enumerate(sizes)]
    with dataaudit.Tracker(run_dir) as tracker:
        tracker.watch(opt)
        loader = DataLoader(TensorDataset(torch.zeros(sum(sizes), 3)), batch_sampler=_batches(sizes),
                            collate_fn=lambda items: torch.stack([x for (x,) in items]) if items else torch.zeros(0, 3))
        for x, loss in zip(tracker.wrap(loader), losses, strict=True):
            tracker.record(loss + 0 * model(x).sum(1))
            opt.step()
        # a step with no record() before it has no loss
        opt.step()
    steps = dataaudit.load_run(run_dir).steps
    expected = [loss.double().mean().item() if len(loss) else np.nan for loss in losses] + [np.nan]
    np.testing.assert_allclose(steps["loss"], expected, rtol=1e-12)


def _batches(sizes: list[int]) -> list[list[int]]:
    ends = np.cumsum(sizes)
    return [list(range(end - n, end)) for n, end in zip(sizes, ends, strict=True)]


def test_clipping_is_detected_on_measured_steps_and_between(run_dir):
    X, y = blobs(n=256)
    train(run_dir, X, y, epochs=2, batch_size=16, clip=1e-3)
    steps = dataaudit.load_run(run_dir).steps
    assert len(steps) == 32 and steps["grad_norm_raw"].notna().sum() == 4
    # Adam learns despite the clip, so late gradients may fall below it: those steps are not clipped.
    at_threshold = np.isclose(steps["grad_norm"], 1e-3, rtol=1e-3)
    assert at_threshold.mean() > 0.5
    assert (steps["clipped"] == at_threshold).all()


def test_learning_rate_of_each_group_and_layer_norms(run_dir):
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.1},
                           {"params": model[2].parameters(), "lr": 0.01}])
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    ds = TensorDataset(torch.randn(20, 4), torch.randint(0, 2, (20,)))
    with dataaudit.Tracker(run_dir) as tracker:
        loader = tracker.wrap(DataLoader(ds, batch_size=10))
        tracker.watch(opt, model=model, every=1)
        for _ in range(2):
            for x, yb in loader:
                losses = F.cross_entropy(model(x), yb, reduction="none")
                tracker.record(losses, targets=yb)
                opt.zero_grad()
                losses.mean().backward()
                opt.step()
            sched.step()
    run = dataaudit.load_run(run_dir)
    np.testing.assert_allclose(run.steps["lr"], [0.1, 0.1, 0.05, 0.05])
    np.testing.assert_allclose(run.steps["lr_1"], [0.01, 0.01, 0.005, 0.005])
    assert set(run.layers["param"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert len(run.layers) == 4 * 4 and (run.layers["update_norm"] > 0).all()


def test_amp_skipped_steps_are_counted(run_dir):
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    ds = TensorDataset(torch.randn(40, 4), torch.randint(0, 2, (40,)))
    with dataaudit.Tracker(run_dir) as tracker:
        loader = tracker.wrap(DataLoader(ds, batch_size=10))
        tracker.watch(opt, model=model, scaler=scaler)
        for i, (x, yb) in enumerate(loader):
            losses = F.cross_entropy(model(x), yb, reduction="none")
            if i == 1:
                losses = losses * float("inf")   # an overflow: the scaler skips this step
            tracker.record(losses, targets=yb)
            opt.zero_grad()
            scaler.scale(losses.mean()).backward()
            scaler.step(opt)
            scaler.update()
    steps = dataaudit.load_run(run_dir).steps
    assert steps["skipped"].tolist() == [False, True, False, False]
    assert steps["attempt"].tolist() == [0, 1, 2, 3]
    assert steps["step"].tolist() == [0, 1, 1, 2]
    # raw norms are unscaled, so an unclipped step is not taken for a clipped one
    assert not steps["clipped"].any()


def test_watch_validates(run_dir):
    with dataaudit.Tracker(run_dir) as tracker:
        with pytest.raises(TypeError, match="torch.optim.Optimizer; got Linear"):
            tracker.watch(torch.nn.Linear(2, 2))
        opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
        with pytest.raises(ValueError, match="every >= 0"):
            tracker.watch(opt, every=-1)
        tracker.watch(opt)
        with pytest.raises(ValueError, match="already called"):
            tracker.watch(opt)


def test_hooks_are_removed_on_close(run_dir):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker = dataaudit.Tracker(run_dir)
    tracker.watch(opt, model=model)
    tracker.close()
    model(torch.randn(3, 2)).sum().backward()
    opt.step()
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks


def _closure_run(run_dir, optimizer: str, use_closure: bool, steps: int = 6):
    """Full-batch steps on blobs; returns the recorded steps and the norms the closure itself saw first per step."""
    X, y = blobs(n=48)
    X, y = torch.from_numpy(X), torch.from_numpy(y)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    if optimizer == "lbfgs":
        opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    seen: list[list[float]] = []
    with dataaudit.Tracker(run_dir) as tracker:
        loader = tracker.wrap(DataLoader(TensorDataset(X, y), batch_size=48))
        tracker.watch(opt, model=model, every=1)
        for _ in range(steps):
            for xb, yb in loader:
                seen.append([])

                def closure(xb=xb, yb=yb):
                    opt.zero_grad()
                    losses = F.cross_entropy(model(xb), yb, reduction="none")
                    losses.mean().backward()
                    grads = [p.grad for p in model.parameters()]
                    seen[-1].append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
                    return losses.mean()

                if use_closure:
                    opt.step(closure)
                else:
                    closure()
                    opt.step()
                tracker.record(F.cross_entropy(model(xb), yb, reduction="none").detach(), targets=yb)
    return dataaudit.load_run(run_dir).steps, seen


@pytest.mark.parametrize("optimizer", ["sgd", "lbfgs"])
def test_closure_steps_record_the_gradients_of_the_step_taken(tmp_path, optimizer):
    steps, seen = _closure_run(tmp_path / "run", optimizer, use_closure=True)
    assert len(steps) == 6 and steps["grad_norm"].notna().all()
    # the gradient each step starts from: the closure's first evaluation in that step, not the step before
    first = [s[0] for s in seen]
    np.testing.assert_allclose(steps["grad_norm"], first, rtol=1e-5)
    np.testing.assert_allclose(steps["grad_norm_raw"], first, rtol=1e-5)
    assert not steps["clipped"].any() and steps["update_ratio"].gt(0).all()
    if optimizer == "lbfgs":  # the line search evaluated again: those later gradients are not the step's
        assert any(len(s) > 1 for s in seen)


def test_a_closure_step_reads_like_the_same_step_without_one(tmp_path):
    with_closure, _ = _closure_run(tmp_path / "a", "sgd", use_closure=True)
    without, _ = _closure_run(tmp_path / "b", "sgd", use_closure=False)
    for column in ("grad_norm", "grad_norm_raw", "update_ratio"):
        np.testing.assert_allclose(with_closure[column], without[column], rtol=1e-5)


def test_the_adaptive_period_keeps_measuring_within_its_share_of_the_step():
    from dataaudit.track.optim import adaptive_period

    assert adaptive_period(1e-5, 1e-1) == 10            # cheap next to the step: every 10 steps
    assert adaptive_period(0.25e-3, 1e-2) == 10         # 2.5% of a step, every 10: 0.25%
    assert adaptive_period(2.5e-3, 1e-2) == 100         # 25% of a step: every 100
    assert adaptive_period(10.0, 1e-3) == 1000          # never sparser than every 1,000
    assert adaptive_period(1e-3, 0.0) == 10             # no interval seen yet


def _train_linear(run_dir, *, batch_size: int, epochs: int = 1) -> None:
    """A linear model on 64 blobs, tracked and watched with the default (adaptive) cadence."""
    X, y = blobs(n=64)
    model = torch.nn.Linear(X.shape[1], int(y.max()) + 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(TensorDataset(torch.as_tensor(X), torch.as_tensor(y)), batch_size=batch_size)
    with dataaudit.Tracker(run_dir) as tracker:
        tracker.watch(opt, model=model)
        wrapped = tracker.wrap(loader)
        for _ in range(epochs):
            for xb, yb in wrapped:
                logits = model(xb)
                losses = F.cross_entropy(logits, yb, reduction="none")
                tracker.record(losses, logits=logits, targets=yb)
                opt.zero_grad()
                losses.mean().backward()
                opt.step()


def test_by_default_measured_steps_thin_out_where_measuring_is_dear(run_dir, monkeypatch):
    from dataaudit.track import optim

    monkeypatch.setattr(optim, "_AUTO_BUDGET", 1e-12)  # any measurement is dear: the period goes to its cap
    _train_linear(run_dir, batch_size=4, epochs=2)
    steps = dataaudit.load_run(run_dir).steps
    assert len(steps) == 32
    # step 0 has no interval to judge by yet: every 10 steps, then every 1,000
    assert steps.loc[steps["update_ratio"].notna(), "step"].tolist() == [0, 10]
    assert dataaudit.load_run(run_dir).meta["optimizer"]["update_every"] == "adaptive"


def test_by_default_the_gradient_norm_thins_out_where_it_is_dear_and_says_so(run_dir, monkeypatch):
    from dataaudit.track import optim

    monkeypatch.setattr(optim, "_AUTO_BUDGET", 1e-12)  # every measurement is dear: every _NORM_MAX steps
    _train_linear(run_dir, batch_size=2)
    steps = dataaudit.load_run(run_dir).steps
    measured = steps["grad_measured"].to_numpy()
    assert np.isfinite(steps["grad_norm"].to_numpy()).tolist() == measured.tolist()
    # step 0 has no interval to judge by, so step 1 is measured too; then every _NORM_MAX (20) steps from the
    # last measured one, and on the steps sampled for update norms (0, 10, then every 1,000)
    assert steps.loc[measured, "step"].tolist() == [0, 1, 10, 30]
