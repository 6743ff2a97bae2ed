from __future__ import annotations

import json

import numpy as np
import pytest

import dataaudit
from dataaudit.checks import plateau
from dataaudit.checks.curves import epoch_losses, median3
from dataaudit.checks.plateau import (
    _compute_curve,
    _compute_overfitting,
    _compute_plateau,
    _isotonic_decreasing,
)
from dataaudit.run import Run
from fixtures.training import blobs, train_loop


def _curve(loss, **kwargs) -> dict:
    loss = np.asarray(loss, dtype=np.float64)
    return _compute_curve(np.arange(len(loss)), loss, **kwargs)


def _knee(onset: int, n: int = 40, start: float = 2.0, level: float = 0.5) -> np.ndarray:
    """A loss falling linearly from `start` to `level` at epoch `onset`, flat after: shape (n,)."""
    t = np.arange(n, dtype=np.float64)
    return np.where(t < onset, start + (level - start) * t / onset, level)


# ---------------------------------------------------------------- array level


@pytest.mark.parametrize("onset", [3, 10, 20])
def test_the_onset_of_a_clean_knee_is_exact(onset, rng):
    loss = _knee(onset) + rng.normal(0, 0.002, 40)
    curve = _curve(loss)
    assert curve["state"] == "plateau"
    assert curve["onset_epoch"] == onset
    assert curve["level"] == pytest.approx(0.5, abs=0.005)
    assert abs(curve["slope"]) < 3 * curve["slope_stderr"]       # flat: no significant slope


def test_a_cliff_puts_the_onset_on_the_first_flat_epoch():
    # The shape of a learning rate cut 2000x at epoch 2: 2.10 is within a tenth of the level,
    # but the cliff after it is still the descent.
    loss = [2.28, 2.104, 1.93, 1.93, 1.929, 1.929, 1.929, 1.928, 1.928, 1.928]
    curve = _curve(loss)
    assert curve["state"] == "plateau" and curve["onset_epoch"] == 2


def test_flat_from_the_start_is_a_plateau_at_epoch_0():
    loss = 2.3077 - 1.4e-4 * np.arange(50)          # strict clipping: the weights barely move
    curve = _curve(loss)
    assert curve["state"] == "plateau" and curve["onset_epoch"] == 0
    assert curve["level"] == pytest.approx(2.304, abs=0.002)
    assert curve["slope"] == pytest.approx(-1.4e-4, rel=1e-3)


@pytest.mark.parametrize("loss", [
    2.0 * np.exp(-np.arange(50) / 30),              # slow exponential decay toward zero
    np.linspace(1.5, 1.0, 50),                      # a steady linear descent
], ids=["exponential", "linear"])
def test_a_slow_steady_descent_is_converging_not_a_plateau(loss):
    curve = _curve(loss)
    assert curve["state"] == "converging"
    assert curve["onset_epoch"] is None
    assert curve["slope"] < -3 * curve["slope_stderr"]


def test_a_flat_stretch_shorter_than_a_fifth_of_the_run_is_not_yet_a_plateau():
    loss = np.r_[np.linspace(2.0, 0.5, 36), np.full(4, 0.5)]
    curve = _curve(loss)
    assert curve["state"] == "converging" and curve["reason"] == "flat stretch too short"
    assert _curve(np.r_[loss, np.full(6, 0.5)])["state"] == "plateau"       # 10 flat epochs of 46


def test_a_slow_drift_after_a_sharp_knee_is_a_plateau():
    # Label noise: a fast fall to the noise floor, then slow memorisation (0.5% per epoch).
    t = np.arange(50)
    loss = np.where(t < 5, 2.2 - 0.15 * t, 1.45 - 0.006 * (t - 5))
    curve = _curve(loss)
    assert curve["state"] == "plateau"
    # Back from where a tenth of the level remains (epoch 30) over the epochs that fall as slowly as the
    # plateau, until a fifth of the level remains (epoch 10).
    assert 5 <= curve["onset_epoch"] <= 12
    assert curve["improvement_after_onset"] <= 2 * plateau.MEANINGFUL


def test_a_slow_drift_after_a_cliff_keeps_the_onset_at_the_cliff():
    # An lr cut 2000x at epoch 4, after which the loss still creeps down 11% over 45 epochs.
    t = np.arange(50)
    head = np.array([2.28, 2.11, 1.475, 0.625])
    loss = np.where(t < 4, head[t.clip(max=3)], 0.44 * np.exp(-0.0025 * (t - 4)))
    curve = _curve(loss)
    assert curve["state"] == "plateau" and curve["onset_epoch"] == 4


def test_near_zero_loss_is_converged():
    decay = 2.3 * np.exp(-np.arange(30) / 3) + 1e-4
    assert _curve(decay)["state"] == "converged"           # no labels: the loss fell below 1% of its start
    floor = _knee(5, n=30, start=2.3, level=0.05)
    assert _curve(floor, accuracy=np.full(30, 0.995))["state"] == "converged"
    # The same curve with a quarter of the samples misfitted is a plateau worth explaining.
    assert _curve(floor, accuracy=np.full(30, 0.75))["state"] == "plateau"


@pytest.mark.parametrize("seed", range(5))
def test_noise_spikes_and_nan_epochs_move_the_onset_little(seed):
    rng = np.random.default_rng(seed)
    loss = _knee(12) * (1 + rng.normal(0, 0.03, 40))
    loss[25] *= 2.5                 # one bad epoch
    loss[30] = np.nan               # one epoch with no finite loss
    curve = _curve(loss)
    assert curve["state"] == "plateau"
    assert abs(curve["onset_epoch"] - 12) <= 1
    assert curve["level"] == pytest.approx(0.5, rel=0.03)


def test_a_slope_is_reported_with_its_uncertainty(rng):
    loss = _knee(10, n=60) - 1e-3 * np.clip(np.arange(60) - 10, 0, None) + rng.normal(0, 0.004, 60)
    curve = _curve(loss)
    assert curve["state"] == "plateau"
    assert 0 < curve["slope_stderr"] < 5e-4
    assert abs(curve["slope"] - -1e-3) < 3 * curve["slope_stderr"]


def test_too_few_epochs_are_not_evidence():
    curve = _curve([2.3, 1.0, 0.9, 0.9])
    assert curve["state"] == "too_short" and curve["onset_epoch"] is None


def test_a_rising_or_non_finite_loss_is_diverging():
    rising = np.concatenate([np.linspace(2.0, 0.5, 10), np.linspace(0.5, 1.5, 10)])
    curve = _curve(rising)
    assert curve["state"] == "diverging" and curve["best_epoch"] in (9, 10)
    blown = np.concatenate([np.linspace(2.0, 1.0, 8), [np.nan, np.nan]])
    curve = _curve(blown)
    assert curve["state"] == "diverging" and curve["nonfinite_from_epoch"] == 8
    mostly_nan = np.linspace(2.0, 1.0, 10)
    share = np.zeros(10)
    share[-1] = 0.8                 # the mean of the last epoch's few finite losses proves nothing
    assert _curve(mostly_nan, nonfinite_share=share)["state"] == "diverging"


def test_overfitting_needs_val_rising_while_train_falls():
    epochs = np.arange(20)
    train = 2.0 * np.exp(-epochs / 5)
    val = np.concatenate([np.linspace(2.0, 0.8, 8), np.linspace(0.8, 1.2, 12)])
    over = _compute_overfitting(epochs, train, epochs, val)
    assert over["overfitting"] and over["from_epoch"] in (7, 8)
    assert not _compute_overfitting(epochs, train, epochs, train + 0.1)["overfitting"]
    # Both rising: divergence, not overfitting.
    assert not _compute_overfitting(epochs, val, epochs, val + 0.1)["overfitting"]
    # One bad last epoch is noise.
    bump = train + 0.1
    bump[-1] *= 3
    assert not _compute_overfitting(epochs, train, epochs, bump)["overfitting"]


def test_helpers_smooth_and_fit_monotone(rng):
    y = np.linspace(2, 1, 10)
    y[4] = 9.0
    assert median3(y)[4] == pytest.approx(y[3], abs=0.2)
    noisy = np.linspace(2, 1, 30) + rng.normal(0, 0.1, 30)
    fit = _isotonic_decreasing(noisy)
    assert np.all(np.diff(fit) <= 0) and fit.mean() == pytest.approx(noisy.mean())


def test_result_details_carry_the_audit_fields():
    epochs = np.arange(30)
    result = _compute_plateau(epochs, _knee(6, n=30, start=2.3, level=0.9),
                              val_epochs=epochs, val_loss=_knee(6, n=30, start=2.3, level=1.0))
    d = result.details
    assert d["detected"] is True and d["onset_epoch"] == 6 and d["state"] == "plateau"
    assert {"level", "slope", "slope_stderr", "train_loss", "val_loss", "overfitting"} <= set(d)
    assert len(d["train_loss"]) == 30 and d["val_state"] == "plateau" and d["overfitting"] is False
    assert result.status == "warning" and "flat since epoch 6 at 0.9" in result.findings[0].summary
    json.dumps(d)


# ---------------------------------------------------------------- tracked runs


def _digits(n: int, noise: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    keep = rng.permutation(len(y))[:n]
    X, y = (X[keep] / 16.0).astype(np.float32), y[keep].astype(np.int64)
    flip = rng.choice(n, int(noise * n), replace=False)
    y[flip] = (y[flip] + rng.integers(1, 10, len(flip))) % 10
    return X, y


def test_a_learning_rate_cut_to_nothing_plateaus_from_the_cut(run_dir):
    X, y = _digits(600)
    result = plateau.check(train_loop(run_dir, X, y, epochs=10, cut=(2, 0.0005)))
    d = result.details
    assert d["detected"] and d["state"] == "plateau"
    assert d["onset_epoch"] == 2                     # the first epoch trained at the tiny learning rate
    assert 1.0 < d["level"] < 2.2                    # far from converged
    assert result.status == "warning" and "flat since epoch 2" in result.findings[0].summary


def test_strict_clipping_is_flat_from_the_start(run_dir):
    X, y = _digits(600)
    d = plateau.check(train_loop(run_dir, X, y, epochs=6, clip=1e-3, momentum=0.0)).details
    assert d["detected"] and d["onset_epoch"] == 0
    assert d["level"] > 2.0


def test_a_clean_run_converges_and_is_not_a_plateau(run_dir):
    X, y = blobs(n=300, d=8, k=3)
    result = plateau.check(train_loop(run_dir, X, y, epochs=6, optimizer="adam", lr=1e-2, batch_size=32))
    assert result.details["state"] == "converged" and not result.details["detected"]
    assert result.details["onset_epoch"] is None and result.status == "info"


def test_a_validation_split_shows_overfitting(run_dir):
    X, y = _digits(500)
    _, noisy = _digits(500, noise=0.4)
    run = train_loop(run_dir, X[:200], noisy[:200], epochs=20, optimizer="adam", lr=2e-2, hidden=256, batch_size=50,
                 val=(X[300:], y[300:]))
    d = plateau.check(run).details
    assert len(d["val_loss"]) == 20 and len(d["train_loss"]) == 20
    assert d["overfitting"] and d["overfitting_from_epoch"] < 12
    assert d["train_loss"][-1] < d["train_loss"][d["overfitting_from_epoch"]]


def test_nan_losses_are_left_out_of_the_epoch_means(run_dir):
    X, y = _digits(300)
    run = train_loop(run_dir, X, y, epochs=5, optimizer="adam", lr=1e-2, nan_every=2)
    table = epoch_losses(run.train)
    assert np.isfinite(table["loss"]).all() and (table["nonfinite"] > 0).all()
    assert plateau.check(run).details["state"] != "diverging"


def test_no_epochs_skip_and_one_epoch_is_too_short(run_dir):
    dataaudit.Tracker(run_dir).close()
    empty = plateau.check(dataaudit.load_run(run_dir))
    assert empty.status == "skipped"
    assert empty.details["detected"] is False and empty.details["onset_epoch"] is None
    scan = plateau.check(Run.from_arrays(np.array([0, 1, 1]), np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])))
    assert scan.details["state"] == "too_short" and scan.status == "info"


def test_a_regression_plateau_is_a_note_the_attribution_judges(tmp_path):
    """A clean regression flattens at its targets' noise: no accuracy tells that from a stall, so the
    plateau is info and the verdict (none here) comes from the other checks."""
    import dataaudit
    from fixtures.tasks import regression_data, train_regression

    X, y, _ = regression_data(500, seed=4)
    train_regression(tmp_path / "run", X, y, epochs=12, loss="huber", target_shape="column")
    audit = dataaudit.analyze(tmp_path / "run")
    plateau = audit.results["plateau"]
    assert plateau.details["state"] == "plateau" and plateau.status == "info"
    assert "noise of its targets" in plateau.findings[0].summary
    assert audit.verdict == "none"
