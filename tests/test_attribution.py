from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dataaudit.attribution import _label_share, attribute
from dataaudit.checks.base import CheckResult, Finding
from dataaudit.run import Run, Split, coverage_table


def _run(loss_by_epoch: np.ndarray) -> Run:
    """A run whose records hold the given per-sample losses, shape (epochs, n)."""
    epochs, n = loss_by_epoch.shape
    records = pd.DataFrame({
        "epoch": np.repeat(np.arange(epochs), n).astype(np.int32),
        "sample_id": np.tile(np.arange(n), epochs),
        "loss": loss_by_epoch.reshape(-1).astype(np.float32),
        "prob": np.nan, "margin": np.nan, "label": 0, "pred": 0, "fingerprint": np.nan,
    })
    draws = {e: np.arange(n) for e in range(epochs)}
    split = Split("train", records, coverage_table(draws, {e: True for e in draws}, n), draws=draws, dataset_size=n)
    return Run({"train": split}, pd.DataFrame(), pd.DataFrame(), {"num_classes": 2})


def _results(*, plateau=True, state="plateau", onset=5, flagged=(), signals=(), **statuses) -> dict:
    results = {
        "plateau": CheckResult("plateau", "info", 0.5, {"detected": plateau, "onset_epoch": onset, "state": state}),
        "labels": CheckResult("labels", "critical" if flagged else "ok", 0.5, {"label_issues": list(flagged)},
                              per_sample=_label_table(flagged)),
        "optimizer": CheckResult("optimizer", "warning" if signals else "ok", 0.5, {"signals": list(signals)}),
    }
    for name, status in statuses.items():
        findings = (Finding(name, status, "something"),) if status != "ok" else ()
        results[name] = CheckResult(name, status, 0.5, {}, findings)
    return results


def _label_table(flagged, n=100) -> pd.DataFrame:
    """Labels check output for n samples of 2 classes; the flagged ones suggest the other class."""
    label = np.arange(n) % 2
    is_flagged = np.isin(np.arange(n), list(flagged))
    return pd.DataFrame({"sample_id": np.arange(n), "label": label,
                         "suggested_label": np.where(is_flagged, 1 - label, label), "flagged": is_flagged})


def _plateau_losses(n=100, epochs=10, noisy=30, noisy_loss=3.0, rest_loss=0.01):
    losses = np.full((epochs, n), rest_loss)
    losses[:, :noisy] = noisy_loss
    losses[0] = 2.3
    return losses


def test_mislabeled_samples_holding_the_loss_up_are_the_data():
    a = attribute(_run(_plateau_losses()), _results(flagged=range(30)))
    assert a.verdict == "data" and a.data_share > 0.95
    assert a.interval[0] <= a.data_share <= a.interval[1]


def test_a_stuck_optimizer_with_hard_samples_is_the_optimizer():
    losses = _plateau_losses(noisy=3, noisy_loss=1.5, rest_loss=0.3)   # everyone stuck high, 3 flagged a bit higher
    a = attribute(_run(losses), _results(flagged=range(3), signals=["lr_collapsed"]))
    assert a.verdict == "optimizer" and a.data_share <= 0.3
    assert a.details["optimizer_implicated"] and not a.details["remainder_converged"]


def test_both_sides_is_mixed():
    losses = _plateau_losses(noisy=20, noisy_loss=3.0, rest_loss=0.4)
    a = attribute(_run(losses), _results(flagged=range(20), signals=["clipping_always"]))
    assert a.verdict == "mixed" and 0.3 < a.data_share < 1


def test_converged_clean_run_is_none():
    losses = _plateau_losses(noisy=0)
    assert attribute(_run(losses), _results(state="converged")).verdict == "none"
    assert attribute(_run(losses), _results(plateau=False, state="converging")).verdict == "none"


def test_a_data_finding_without_per_sample_losses_counts_as_evidence():
    losses = _plateau_losses(noisy=0, rest_loss=0.5)
    a = attribute(_run(losses), _results(plateau=False, state="converging", feature_scale="critical"))
    assert a.verdict == "mixed" and a.data_share == pytest.approx(0.5)
    assert a.details["data_evidence"] == {"feature_scale": "critical"}


def test_label_share_interval_brackets_the_estimate(rng):
    losses = np.concatenate([rng.exponential(3.0, 50), rng.exponential(0.1, 450)])
    flagged = np.arange(500) < 50
    labels = np.zeros(500, int)
    share, (lo, hi) = _label_share(losses, flagged, labels, labels + 1, seed=0)
    assert lo < share < hi and 0.7 < share < 1.0


def test_noise_floor_counts_what_noise_does_to_clean_samples():
    # 30% of labels flipped: the clean samples' loss is held up too (an ideal model is only 70% sure)
    from dataaudit.attribution import _noise_entropy
    n = 1000
    true = np.arange(n) % 2
    flagged = np.arange(n) < 300
    given = np.where(flagged, 1 - true, true)
    h = _noise_entropy(given, true, flagged)
    assert h == pytest.approx(-(0.7 * np.log(0.7) + 0.3 * np.log(0.3)), abs=0.01)
    losses = np.where(flagged, 1.2, 0.36)   # what such a model pays
    share, _ = _label_share(losses, flagged, given, true, seed=0)
    assert share > 0.95
