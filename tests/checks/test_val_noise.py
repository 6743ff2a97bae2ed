from __future__ import annotations

import numpy as np
import pandas as pd

from dataaudit.checks import plateau, val_noise
from dataaudit.checks.val_noise import _compute_val_noise, paired_change
from dataaudit.run import Split, coverage_table
from fixtures.causes import causes_loop, overlap


def _split(losses: np.ndarray) -> Split:
    """A val split from losses of shape (epochs, samples), the same samples every epoch."""
    e, m = losses.shape
    records = pd.DataFrame({"epoch": np.repeat(np.arange(e), m).astype(np.int32),
                            "sample_id": np.tile(np.arange(m), e), "loss": losses.reshape(-1).astype(np.float32),
                            "label": np.zeros(e * m, np.int32), "pred": np.zeros(e * m, np.int32)})
    draws = {i: np.arange(m) for i in range(e)}
    return Split("val", records, coverage_table(draws, dict.fromkeys(range(e), True), m))


def test_paired_change_cancels_what_the_samples_share(rng):
    base = rng.exponential(1.0, size=500)                     # per-sample difficulty, large spread
    split = _split(np.stack([base, base * 0.9 + rng.normal(0, 0.01, 500)]))
    change, se, n = paired_change(split, 0, 1)
    assert n == 500 and abs(change + 0.1 * base.mean()) < 0.01
    assert se < base.std() / np.sqrt(500) / 5                 # far below the unpaired standard error


def test_a_small_noisy_set_is_coarse_and_a_large_one_is_not(rng):
    def table(m):
        base = rng.exponential(0.5, size=m)
        return val_noise.noise_table(_split(np.stack([base * rng.lognormal(0, 0.5, m) for _ in range(6)])))
    small, large = table(30), table(5000)
    assert val_noise.resolution(small) > 0.1 > val_noise.resolution(large)
    assert _compute_val_noise(small, ["plateau"]).status == "warning"
    assert _compute_val_noise(small, [], val_state="converging").status == "warning"   # it looks flat
    assert _compute_val_noise(small, [], val_state="converged").status == "info"       # nothing left to call
    assert _compute_val_noise(large, ["plateau"]).status == "info"


def test_an_overfitting_rise_within_noise_is_not_claimed(rng):
    m = 20
    base = rng.exponential(0.5, size=m)
    # validation falls, then rises by 15% at the end, on 20 samples whose changes spread widely
    level = np.r_[np.linspace(2.0, 1.0, 8), np.linspace(1.0, 1.15, 12)]
    split = _split(np.stack([lv * base * rng.lognormal(0, 0.6, m) for lv in level]))
    result = plateau._compute_plateau(np.arange(20), np.linspace(2.0, 0.2, 20), val_epochs=np.arange(20),
                                      val_loss=split.records.groupby("epoch")["loss"].mean().to_numpy())
    gated = val_noise.gate_plateau(result, split)
    assert result.details["overfitting"]                      # what the curve alone says
    assert not gated.details["overfitting"] and gated.details["overfitting_within_noise"]
    assert all("best_val_epoch" not in f.evidence for f in gated.findings)
    # the same rise on 5000 samples is beyond noise and stays claimed
    m = 5000
    base = rng.exponential(0.5, size=m)
    big = _split(np.stack([lv * base * rng.lognormal(0, 0.6, m) for lv in level]))
    result = plateau._compute_plateau(np.arange(20), np.linspace(2.0, 0.2, 20), val_epochs=np.arange(20),
                                      val_loss=big.records.groupby("epoch")["loss"].mean().to_numpy())
    assert result.details["overfitting"] and val_noise.gate_plateau(result, big).details["overfitting"]


def test_a_30_sample_validation_set_is_too_small_to_call_its_plateau(tmp_path):
    X, y = overlap(600, seed=1)
    run = causes_loop(tmp_path / "run", X, y, epochs=12, batch_size=32, val=overlap(30, seed=2))
    result = val_noise.check(run)
    assert result.status == "warning" and result.details["coarse"] and "plateau" in result.details["claims"]
    assert result.details["samples"] == 30 and len(result.details["stderr"]) == 12
    assert result.findings[0].evidence["samples_needed"] > 30


def test_a_large_validation_set_raises_nothing(tmp_path):
    X, y = overlap(600, seed=1)
    run = causes_loop(tmp_path / "run", X, y, epochs=12, batch_size=32, val=overlap(3000, seed=2))
    result = val_noise.check(run)
    assert result.status == "info" and not result.details["coarse"]


def test_no_validation_split_skips(tmp_path):
    X, y = overlap(200, seed=1)
    assert val_noise.check(causes_loop(tmp_path / "run", X, y, epochs=2)).status == "skipped"
