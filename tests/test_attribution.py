from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dataaudit.attribution import attribute
from dataaudit.checks.base import CheckResult, Finding
from dataaudit.run import Run, Split, coverage_table


def _run(loss_by_epoch: np.ndarray, *, labels: np.ndarray | None = None, wrong: np.ndarray | None = None) -> Run:
    """A run whose records hold the given per-sample losses, shape (epochs, n); labels (n,) default 0 / 1
    alternating; wrong (epochs, n) marks mispredicted records (default: none)."""
    epochs, n = loss_by_epoch.shape
    labels = np.arange(n) % 2 if labels is None else labels
    wrong = np.zeros((epochs, n), bool) if wrong is None else wrong
    label = np.tile(labels, epochs)
    records = pd.DataFrame({
        "epoch": np.repeat(np.arange(epochs), n).astype(np.int32),
        "sample_id": np.tile(np.arange(n), epochs),
        "loss": loss_by_epoch.reshape(-1).astype(np.float32),
        "prob": np.nan, "margin": np.nan, "label": label, "pred": np.where(wrong.reshape(-1), label + 1, label),
        "fingerprint": np.nan,
    })
    draws = {e: np.arange(n) for e in range(epochs)}
    split = Split("train", records, coverage_table(draws, {e: True for e in draws}, n), draws=draws, dataset_size=n)
    return Run({"train": split}, pd.DataFrame(), pd.DataFrame(), {"num_classes": int(labels.max()) + 2})


def _results(*, state="plateau", flagged=(), signals=(), details=None, n=100, **statuses) -> dict:
    results = {
        "plateau": CheckResult("plateau", "info", 0.5, {"detected": state == "plateau", "onset_epoch": 3,
                                                       "state": state}),
        "labels": CheckResult("labels", "critical" if flagged else "ok", 0.5, {"label_issues": list(flagged)},
                              per_sample=_label_table(flagged, n)),
        "optimizer": CheckResult("optimizer", "warning" if signals else "ok", 0.5, {"signals": list(signals)}),
    }
    for name, status in statuses.items():
        findings = (Finding(name, status, "something"),) if status != "ok" else ()
        results[name] = CheckResult(name, status, 0.5, (details or {}).get(name, {}), findings)
    return results


def _label_table(flagged, n=100) -> pd.DataFrame:
    """Labels check output for n samples of 2 classes; the flagged ones suggest the other class."""
    label = np.arange(n) % 2
    is_flagged = np.isin(np.arange(n), list(flagged))
    return pd.DataFrame({"sample_id": np.arange(n), "label": label,
                         "suggested_label": np.where(is_flagged, 1 - label, label), "flagged": is_flagged})


def _losses(n=100, epochs=12, noisy=30, noisy_loss=3.0, rest_loss=0.01):
    losses = np.full((epochs, n), rest_loss)
    losses[:, :noisy] = noisy_loss
    losses[0] = 2.3
    return losses


def test_mislabeled_samples_with_a_healthy_optimizer_are_all_the_data():
    a = attribute(_run(_losses()), _results(flagged=range(30)))
    assert a.verdict == "data" and a.data_share == 1.0
    assert a.interval[0] <= a.data_share <= a.interval[1]
    assert not a.details["optimizer_implicated"]


def test_a_stuck_optimizer_on_clean_data_is_the_optimizer():
    losses = np.full((12, 100), 1.5)
    losses[0] = 2.3
    a = attribute(_run(losses, wrong=np.ones((12, 100), bool)), _results(signals=["lr_collapsed"]))
    assert a.verdict == "optimizer" and a.data_share == 0.0


def test_noise_and_a_stuck_optimizer_share_by_the_estimated_levels():
    # 20 flagged samples at 3.0 above a clean rest stuck at 0.4 that the model still mispredicts: the share is
    # what fixing the data removes, over L (additive levels, module docstring)
    losses = _losses(noisy=20, noisy_loss=3.0, rest_loss=0.4)
    wrong = np.zeros((12, 100), bool)
    wrong[:, 20:60] = True
    a = attribute(_run(losses, wrong=wrong), _results(flagged=range(20), signals=["clipping_always"]))
    level = 0.2 * 3.0 + 0.8 * 0.4
    data_fixed = 0.2 * (3.0 - 0.4) + 0.8 * min(0.4, -np.log(0.8))
    assert a.data_share == pytest.approx(data_fixed / level, abs=1e-3)
    assert a.verdict == "mixed" and a.details["optimizer_implicated"]
    assert a.details["residual"] == pytest.approx(level - data_fixed, abs=1e-3)


def test_converged_run_is_none_whatever_its_data_findings_say():
    losses = _losses(noisy=0)
    for status in ("info", "warning", "critical"):
        a = attribute(_run(losses), _results(state="converged", coverage=status, class_imbalance=status))
        assert a.verdict == "none" and a.data_share == 0.0
    # no plateau and a loss already near zero: nothing removable either
    a = attribute(_run(losses), _results(state="converging", feature_scale="warning"))
    assert a.verdict == "none" and a.data_share == 0.0


def test_class_imbalance_whose_minority_fits_as_well_as_the_rest_removes_nothing():
    labels = np.where(np.arange(100) < 5, 2, np.arange(100) % 2)
    losses = np.full((12, 100), 0.6)   # a plateau everyone shares (the optimiser's), minority included
    losses[0] = 2.3
    wrong = np.ones((12, 100), bool)
    details = {"class_imbalance": {"classes": [2]}}
    a = attribute(_run(losses, labels=labels, wrong=wrong),
                  _results(signals=["lr_collapsed"], class_imbalance="critical", details=details))
    assert a.data_share == 0.0 and a.verdict == "optimizer"
    # a minority that holds its loss far above the rest: the excess, weighted by its 5% share, is the data's
    losses[1:, :5] = 6.0
    a = attribute(_run(losses, labels=labels), _results(class_imbalance="critical", details=details))
    assert a.details["minority_excess"] == pytest.approx(0.05 * 5.4, abs=1e-3)
    assert a.verdict == "data" and a.data_share == 1.0


def test_a_drift_counts_its_loss_rise_and_nothing_once_recovered():
    losses = np.full((12, 100), 0.02)
    losses[0] = 2.3
    losses[8:] = 0.8                  # the pipeline changed at epoch 8 and the loss stayed up
    details = {"drift": {"first_drift_epoch": 8}}
    a = attribute(_run(losses), _results(drift="critical", details=details))
    assert a.details["drift_rise"] == pytest.approx(0.78, abs=1e-3)
    assert a.verdict == "data" and a.data_share == 1.0
    losses[4:6] = 0.8                  # an early change the model recovered from
    losses[8:] = 0.02
    a = attribute(_run(losses), _results(drift="critical", details={"drift": {"first_drift_epoch": 4}}))
    assert a.details["drift_rise"] == 0.0 and a.verdict == "none" and a.data_share == 0.0
    # a pipeline change after which the loss stays above the removable threshold with nothing else to blame:
    # the changed inputs slow the fit, like unscaled features
    losses[1:4] = 0.9                 # the loss was still falling at the change, and it stopped at 0.4
    losses[4:] = 0.4
    a = attribute(_run(losses), _results(drift="critical", details={"drift": {"first_drift_epoch": 4}}))
    assert a.details["drift_rise"] == 0.0 and a.verdict == "data" and a.data_share == 1.0


def test_unscaled_features_own_the_misfit_alone_and_share_it_evenly_with_an_optimizer_fault():
    losses = np.full((12, 100), 0.9)
    losses[0] = 2.3
    wrong = np.ones((12, 100), bool)
    alone = attribute(_run(losses, wrong=wrong), _results(feature_scale="critical"))
    assert alone.verdict == "data" and alone.data_share == 1.0
    both = attribute(_run(losses, wrong=wrong), _results(feature_scale="critical", signals=["lr_collapsed"]))
    assert both.verdict == "mixed" and both.data_share == pytest.approx(0.5)
    assert both.interval[0] <= 0.05 and both.interval[1] >= 0.95   # the even split is a symmetry, not a measurement


def test_samples_never_drawn_hold_no_training_loss():
    losses = np.full((12, 100), 1.2)
    losses[0] = 2.3
    a = attribute(_run(losses, wrong=np.ones((12, 100), bool)), _results(coverage="critical", signals=["lr_collapsed"]))
    assert a.data_share == 0.0 and a.verdict == "optimizer"
    assert a.details["data_evidence"] == {"coverage": "critical"}


def test_an_unfit_clean_remainder_without_signals_implicates_the_model_side():
    # a model that cannot fit (frozen backbone): no signal, no flags, 40% of samples mispredicted
    losses = np.full((12, 100), 0.8)
    losses[0] = 2.3
    wrong = np.zeros((12, 100), bool)
    wrong[:, :40] = True
    a = attribute(_run(losses, wrong=wrong), _results())
    assert a.verdict == "optimizer" and a.details["optimizer_implicated"] and a.data_share == 0.0


def test_interval_brackets_the_estimate(rng):
    losses = np.full((12, 400), 0.5)
    losses[:, :80] = rng.exponential(3.0, (12, 80))
    losses[:, 80:] = rng.exponential(0.5, (12, 320))
    wrong = np.zeros((12, 400), bool)
    wrong[:, 80:200] = True
    a = attribute(_run(losses, wrong=wrong), _results(flagged=range(80), signals=["lr_collapsed"], n=400))
    lo, hi = a.interval
    assert lo < a.data_share < hi and 0 < lo and hi < 1
