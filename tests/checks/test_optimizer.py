from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

import dataaudit
from dataaudit.checks import optimizer
from dataaudit.checks.optimizer import (
    _compute_clipping,
    _compute_frozen,
    _compute_gradients,
    _compute_loss_spike,
    _compute_loss_trend,
    _compute_lr,
    _compute_skipped,
    _compute_update_ratio,
)
from dataaudit.run import Run
from fixtures.training import blobs, train, train_loop

STEPS_PER_EPOCH = 20


# ---------------------------------------------------------------- learning-rate schedules


def _schedule(kind: str, epochs: int = 50, peak: float = 0.05) -> np.ndarray:
    """The lr of every step (epochs * STEPS_PER_EPOCH,) under a named schedule."""
    t = np.arange(epochs * STEPS_PER_EPOCH) / STEPS_PER_EPOCH      # epoch as a float
    e = np.floor(t)
    if kind == "constant":
        return np.full_like(t, peak)
    if kind == "cosine":                      # per step, to exactly zero at the end
        return peak * (1 + np.cos(np.pi * t / epochs)) / 2
    if kind == "warmup_cosine":
        return np.where(t < 5, peak * (t + 0.05) / 5, peak * (1 + np.cos(np.pi * (t - 5) / (epochs - 5))) / 2)
    if kind == "step_15":                     # StepLR(step_size=15, gamma=0.1): 1000x below the peak at the end
        return peak * 0.1 ** (e // 15)
    if kind == "resnet":                      # MultiStepLR([30, 60], 0.1) over 90 epochs
        return peak * 0.1 ** ((e >= 30).astype(int) + (e >= 60))
    if kind == "exponential":                 # ExponentialLR(0.95)
        return peak * 0.95 ** e
    if kind == "linear":
        return peak * (1 - t / epochs)
    if kind == "sgdr":                        # CosineAnnealingWarmRestarts(T_0=10)
        return peak * (1 + np.cos(np.pi * (t % 10) / 10)) / 2
    if kind == "onecycle":                    # OneCycleLR: max/25 up to max at 30%, down to max/1e4
        up = peak / 25 + (peak - peak / 25) * t / (0.3 * epochs)
        down = peak / 1e4 + (peak - peak / 1e4) * (1 + np.cos(np.pi * (t - 0.3 * epochs) / (0.7 * epochs))) / 2
        return np.where(t < 0.3 * epochs, up, down)
    if kind == "cut_at_4":                    # the lr_collapse scenario: x0.0005 at epoch 4
        return np.where(e >= 4, peak * 0.0005, peak)
    if kind == "plateau_cuts":                # ReduceLROnPlateau(factor=0.1) firing at epochs 5, 10, 15
        return peak * 0.1 ** ((e >= 5).astype(int) + (e >= 10) + (e >= 15))
    if kind == "late_cut":                    # a 1000x cut at epoch 35 of 50, in one step
        return np.where(e >= 35, peak * 1e-3, peak)
    if kind == "zero_last_step":
        lr = np.full_like(t, peak)
        lr[-1] = 0.0
        return lr
    raise ValueError(kind)


def _lr(kind: str, epochs: int = 50) -> dict:
    lr = _schedule(kind, 90 if kind == "resnet" else epochs)
    return _compute_lr(lr, (np.arange(len(lr)) // STEPS_PER_EPOCH).astype(np.int64))


@pytest.mark.parametrize("kind", ["constant", "cosine", "warmup_cosine", "step_15", "resnet", "exponential",
                                  "linear", "sgdr", "onecycle", "zero_last_step"])
def test_standard_schedules_are_not_a_collapse(kind):
    assert not _lr(kind)["collapsed"]


def test_a_2000x_cut_early_is_a_collapse():
    out = _lr("cut_at_4")
    assert out["collapsed"] and out["cut_epoch"] == 4 and out["cut"] == pytest.approx(2000)
    assert out["low_share"] == pytest.approx(46 / 50)


def test_step_schedule_reaching_1_percent_late_stays_below_the_share():
    out = _lr("step_15")
    assert out["low_share"] == pytest.approx(20 / 50)     # from epoch 30: the float 0.05*0.1*0.1 counts
    assert out["low_from_epoch"] == 30 and out["cut"] is None


@pytest.mark.parametrize("kind", ["plateau_cuts", "late_cut"])
def test_tenfold_cuts_adding_up_early_or_one_huge_late_cut_collapse(kind):
    assert _lr(kind)["collapsed"]


def test_a_group_without_learning_rate_is_ignored():
    assert not _compute_lr(np.zeros(100), np.zeros(100, np.int64))["collapsed"]
    assert not _compute_lr(np.full(100, np.nan), np.zeros(100, np.int64))["collapsed"]


# ---------------------------------------------------------------- other signals, on arrays


def test_update_ratio_tiny_only_far_below_healthy(rng):
    assert _compute_update_ratio(10 ** rng.normal(-5.5, 0.2, 50))["tiny"]
    assert not _compute_update_ratio(10 ** rng.normal(-3, 0.5, 50))["tiny"]
    assert not _compute_update_ratio(10 ** rng.normal(-4, 0.3, 50))["tiny"]     # low, as late in training
    # Late in a decayed schedule the ratio is tiny, but the median of the run is not.
    assert not _compute_update_ratio(np.r_[np.full(30, 1e-3), np.full(20, 1e-7)])["tiny"]
    assert _compute_update_ratio(np.full(2, 1e-9))["median"] is None     # too few measured steps


def test_clipping_always_only_when_nearly_every_step_is_cut():
    n = 100
    raw = np.full(n, np.nan)
    raw[::10] = 0.3
    norm = np.where(np.isnan(raw), 1e-3, 1e-3)
    clipped = np.ones(n, bool)
    out = _compute_clipping(clipped, norm, raw, np.zeros(n, bool))
    assert out["always"] and out["share"] == 1.0 and out["scaled_down"] == pytest.approx(300)
    clipped[::20] = False                              # half of the measured steps were not cut
    assert not _compute_clipping(clipped, norm, raw, np.zeros(n, bool))["always"]


def test_gradients_vanish_only_while_the_loss_stays_high():
    n = 200
    falling = np.geomspace(1.0, 1e-5, n)
    flat_loss = np.full(n, 2.3)
    out = _compute_gradients(falling, np.full(n, np.nan), flat_loss, np.zeros(n, bool))
    assert out["vanishing"] and not out["exploding"]
    # The same fall while the loss went to zero is convergence.
    assert not _compute_gradients(falling, np.full(n, np.nan), np.geomspace(2.3, 1e-3, n),
                                  np.zeros(n, bool))["vanishing"]


def test_gradients_explode_when_growing_100x_or_non_finite():
    n = 200
    loss = np.full(n, 1.0)
    grow = np.geomspace(0.5, 500.0, n)
    assert _compute_gradients(grow, np.full(n, np.nan), loss, np.zeros(n, bool))["exploding"]
    assert not _compute_gradients(np.geomspace(0.5, 5.0, n), np.full(n, np.nan), loss, np.zeros(n, bool))["exploding"]
    norm = np.full(n, 0.5)
    norm[50] = np.inf
    assert _compute_gradients(norm, np.full(n, np.nan), loss, np.zeros(n, bool))["nonfinite_steps"] == 1
    skipped = np.zeros(n, bool)
    skipped[50] = True                                 # a skipped AMP step did not touch the weights
    norm[50] = np.nan
    assert not _compute_gradients(norm, np.full(n, np.nan), loss, skipped)["exploding"]
    # No gradient telemetry at all (no .grad anywhere) is not an explosion.
    assert not _compute_gradients(np.full(n, np.nan), np.full(n, np.nan), loss, np.zeros(n, bool))["exploding"]


def test_amp_skips_after_calibration_count():
    calibrating = np.zeros(10_000, bool)
    calibrating[:12] = True                            # the scale coming down from 2**16
    calibrating[2000::2000] = True                     # one skip per growth interval (2000 steps)
    out = _compute_skipped(calibrating)
    assert not out["many"] and out["calibration"] == 12 and out["skipped"] == 16
    overflowing = np.zeros(1000, bool)
    overflowing[::5] = True
    out = _compute_skipped(overflowing)
    assert out["many"] and out["share"] == pytest.approx(0.2, abs=0.01)
    assert _compute_skipped(np.ones(50, bool))["many"]


def test_frozen_parameters_are_named_only_when_others_move():
    steps = np.repeat(np.arange(4), 3)
    layers = pd.DataFrame({"epoch": 0, "step": steps, "param": ["a.weight", "b.weight", "b.bias"] * 4,
                           "update_norm": np.tile([0.0, 1e-3, 1e-4], 4), "weight_norm": 1.0, "grad_norm": 0.1})
    assert _compute_frozen(layers)["frozen"] == ["a.weight"]
    layers["update_norm"] = 0.0                        # nothing moves: an lr of 0, not a frozen layer
    assert _compute_frozen(layers)["frozen"] == []


def test_loss_trend_tells_rising_from_diverged():
    falling = np.linspace(2.0, 0.5, 20)
    assert not any(_compute_loss_trend(falling)[k] for k in ("rising", "diverged"))
    rising = np.r_[np.linspace(2.0, 0.5, 10), np.linspace(0.6, 1.0, 10)]
    out = _compute_loss_trend(rising, labels=np.arange(20))
    assert out["rising"] and not out["diverged"] and out["best_at"] in (9, 10)
    back = np.r_[np.linspace(2.0, 0.5, 10), np.linspace(0.6, 3.0, 10)]
    assert _compute_loss_trend(back)["diverged"]
    assert _compute_loss_trend(np.r_[falling, np.nan])["nonfinite_end"]


def test_a_loss_spike_is_ten_times_the_start(rng):
    steps = np.r_[np.full(5, 2.3), np.full(20, 40.0), np.linspace(5, 2.4, 100)] + rng.normal(0, 0.01, 125)
    assert _compute_loss_spike(steps)["spike"]
    assert not _compute_loss_spike(np.linspace(2.3, 0.1, 125))["spike"]


def _steps(lr: np.ndarray, *, loss: np.ndarray | None = None) -> pd.DataFrame:
    """A step table as the tracker writes it, healthy but for the given lr (s,) and loss (s,)."""
    n = len(lr)
    measured = np.arange(n) % 10 == 0
    return pd.DataFrame({
        "epoch": np.arange(n) // STEPS_PER_EPOCH, "step": np.arange(n), "attempt": np.arange(n), "skipped": False,
        "loss": np.geomspace(2.3, 0.3, n) if loss is None else loss, "grad_norm": 0.5,
        "grad_norm_raw": np.where(measured, 0.5, np.nan), "update_ratio": np.where(measured, 1e-3, np.nan),
        "lr": lr, "clipped": False})


def test_a_collapse_after_convergence_is_not_blamed():
    lr = _schedule("cut_at_4")
    epochs = np.arange(50)
    loss = np.geomspace(2.3, 0.3, 50)
    for accuracy, fires in ((0.995, False), (0.9, True)):
        result = optimizer._compute_optimizer(_steps(lr), pd.DataFrame(), epoch_loss=loss, epochs=epochs,
                                              epoch_nonfinite=np.zeros(50), epoch_accuracy=np.full(50, accuracy))
        assert ("lr_collapsed" in result.details["signals"]) is fires


def test_a_healthy_step_table_has_no_signal_and_json_safe_details():
    result = optimizer._compute_optimizer(_steps(_schedule("cosine")), pd.DataFrame())
    assert result.details["signals"] == [] and result.status == "ok"
    json.dumps(result.details, allow_nan=False)


# ---------------------------------------------------------------- tracked runs


def _digits(n: int = 600, noise: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    keep = rng.permutation(len(y))[:n]
    X, y = (X[keep] / 16.0).astype(np.float32), y[keep].astype(np.int64)
    flip = rng.choice(n, int(noise * n), replace=False)
    y[flip] = (y[flip] + rng.integers(1, 10, len(flip))) % 10
    return X, y


def _standardized(name: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn import datasets
    X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    return ((X - X.mean(0)) / X.std(0)).astype(np.float32), y.astype(np.int64)


# The scenarios of the brief, scaled down to a few seconds: (data, training options).
SICK = {
    "lr_cut_2000x": ("digits", {"epochs": 10, "cut": (2, 0.0005)}, "lr_collapsed"),
    "strict_clipping": ("digits", {"epochs": 6, "clip": 1e-3, "momentum": 0.0}, "clipping_always"),
    "frozen_first_layer": ("digits", {"epochs": 4, "optimizer": "adam", "lr": 1e-2, "freeze": True}, "frozen_layers"),
    "nan_losses": ("digits", {"epochs": 3, "optimizer": "adam", "lr": 1e-2, "nan_every": 3}, "nonfinite_loss"),
    "amp_overflow": ("digits", {"epochs": 4, "optimizer": "adam", "lr": 1e-2, "inf_every": 4}, "amp_steps_skipped"),
    "lr_3": ("digits", {"epochs": 6, "lr": 3.0}, "lr_too_high"),
    "lr_30": ("digits", {"epochs": 6, "lr": 30.0}, "diverged"),
}
HEALTHY = {
    "adam": ("digits", {"epochs": 10, "optimizer": "adam", "lr": 1e-2}),
    "noisy_adam_wd": ("noisy_digits", {"epochs": 10, "optimizer": "adam", "lr": 1e-3, "weight_decay": 1e-4}),
    "cosine_to_zero": ("digits", {"epochs": 10, "schedule": "cosine"}),
    "step_lr_every_3_of_10": ("digits", {"epochs": 10, "schedule": 3}),   # 1000x below the peak at the end
    "wine_adam": ("wine", {"epochs": 20, "optimizer": "adam", "lr": 1e-2, "batch_size": 32}),
    "breast_cancer_adam": ("breast_cancer", {"epochs": 10, "optimizer": "adam", "lr": 1e-3, "batch_size": 32}),
}


def _data(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "digits":
        return _digits()
    if name == "noisy_digits":
        return _digits(noise=0.3)
    return _standardized(name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Run]:
    root = tmp_path_factory.mktemp("optimizer")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cases = {name: (data, kwargs) for name, (data, kwargs, *_) in {**SICK, **HEALTHY}.items()}
        return {name: train_loop(root / name, *_data(data), every=2, record_inputs=False, **kwargs)
                for name, (data, kwargs) in cases.items()}
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("name", sorted(SICK))
def test_an_optimisation_fault_raises_its_signal(runs, name):
    result = optimizer.check(runs[name])
    signal = SICK[name][2]
    assert signal in result.details["signals"]
    assert result.score >= 0.3 and result.status in ("warning", "critical")
    finding = next(f for f in result.findings if f.summary and f.remedy and f.evidence)
    assert finding.check == "optimizer"
    json.dumps(result.details)


@pytest.mark.parametrize("name", sorted(HEALTHY))
def test_healthy_training_raises_no_signal(runs, name):
    result = optimizer.check(runs[name])
    assert result.details["signals"] == []
    assert result.score == 0 and result.status == "ok"


def test_the_collapse_names_when_and_how_much(runs):
    result = optimizer.check(runs["lr_cut_2000x"])
    finding = next(f for f in result.findings if "learning rate" in f.summary)
    assert "2,000x in one step at epoch 2" in finding.summary
    assert finding.evidence["cut_epoch"] == 2 and finding.evidence["low_share"] == pytest.approx(0.8)


def test_clipping_reports_the_threshold_and_the_typical_norm(runs):
    details = optimizer.check(runs["strict_clipping"]).details
    assert details["clipped_share"] == 1.0
    finding = next(f for f in optimizer.check(runs["strict_clipping"]).findings if "clipping" in f.summary)
    assert finding.evidence["threshold"] == pytest.approx(1e-3, rel=1e-3)
    assert finding.evidence["scaled_down"] > 50


def test_frozen_layers_are_named(runs):
    details = optimizer.check(runs["frozen_first_layer"]).details
    assert details["frozen_params"] == ["0.bias", "0.weight"]


def test_nonfinite_losses_are_counted(runs):
    run = runs["nan_losses"]
    details = optimizer.check(run).details
    batches = math.ceil(600 / 64)
    assert details["nonfinite_losses"] == len(range(0, 3 * batches, 3))
    assert details["nonfinite_losses"] == sum(e["nonfinite_losses"] for e in run.meta["epochs"])


def test_without_telemetry_the_check_is_skipped_with_no_signals(run_dir):
    X, y = blobs(n=60)
    train(run_dir, X, y, epochs=1, watch=False)
    for run in (dataaudit.load_run(run_dir), Run.from_arrays(np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]]))):
        result = optimizer.check(run)
        assert result.status == "skipped" and result.details["signals"] == []


def test_steps_whose_gradient_norm_was_not_measured_are_neither_nonfinite_nor_judged():
    s = 200
    norm = np.where(np.arange(s) % 5 == 0, np.geomspace(1.0, 1e-5, s), np.nan)   # measured every 5th step
    measured = np.isfinite(norm)
    loss = np.full(s, 2.0)
    skipped = np.zeros(s, bool)
    sampled = _compute_gradients(norm, np.full(s, np.nan), loss, skipped, measured)
    assert sampled["nonfinite_steps"] == 0 and sampled["vanishing"]
    # the same NaNs on steps said to be measured are non-finite gradients
    assert _compute_gradients(norm, np.full(s, np.nan), loss, skipped)["nonfinite_steps"] == s - measured.sum()
