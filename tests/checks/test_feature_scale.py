from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from sklearn.datasets import load_digits

from dataaudit import load_run
from dataaudit.checks import feature_scale
from dataaudit.run import Run, moments_table
from fixtures.training import blobs, train


def _run(X: np.ndarray) -> Run:
    n = len(X)
    return Run.from_arrays(np.zeros(n, int), np.full((n, 2), 0.5), features=X)


def _check(X: np.ndarray):
    return feature_scale.check(_run(X))


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """Digits scaled to [0, 1]: (1797, 64), pixels 0, 32 and 39 always 0."""
    return load_digits().data / 16.0


def test_standardised_data_is_quiet(rng):
    X = rng.normal(size=(500, 20)) * rng.uniform(0.5, 3, 20) + rng.uniform(-5, 5, 20)
    result = _check((X - X.mean(0)) / X.std(0))
    assert result.status == "ok" and result.score == 0
    assert result.details["features"] == [] and result.details["normalised"]


def test_unit_range_digits_are_quiet_and_constant_pixels_noted(digits):
    result = _check(digits)
    assert result.details["features"] == [] and result.details["normalised"]
    assert result.details["constant_features"] == [0, 32, 39]
    assert result.status == "info" and result.score == 0


def test_eight_pixels_left_unnormalised_are_named(digits):
    X = digits.copy()
    X[:, 20:28] *= 1000
    result = _check(X)
    # pixel 24 is inked in 2 of 1797 images: only its largest value, not its RMS, gives it away
    assert result.details["features"] == list(range(20, 28))
    assert result.status == "critical" and result.score > 0.9
    assert not result.details["normalised"]
    assert [s["feature"] for s in result.details["scales"]] == list(range(20, 28))
    finding = result.findings[0]
    assert "StandardScaler" in finding.remedy
    assert finding.evidence["features"] == list(range(20, 28)) and finding.evidence["median_max_abs"] == 1.0
    json.dumps(result.details)


def test_one_shared_large_scale_is_not_normalised_but_names_nothing(digits):
    result = _check(digits * 255)
    assert result.details["features"] == [] and not result.details["normalised"]
    assert result.status == "warning"
    assert "not normalised" in result.findings[0].summary


def test_a_forgotten_raw_column_among_standardised_ones_is_named(rng):
    X = rng.normal(size=(400, 12))
    X[:, 7] = rng.normal(40, 12, 400)  # e.g. age in years
    X[:, 3] = rng.normal(1000, 1, 400)  # an offset, not a spread: the RMS gives it away
    assert _check(X).details["features"] == [3, 7]


def test_a_lone_outlier_on_a_standardised_feature_is_not_named(rng):
    X = rng.normal(size=(50_000, 10))
    X[0, 4] = 1e4
    X = (X - X.mean(0)) / X.std(0)
    # its largest value is 50x the others', its RMS is 1 like theirs
    assert X[:, 4].max() > 30 * np.median(np.abs(X).max(0))
    assert _check(X).details["features"] == []


def test_many_constant_features_do_not_move_the_reference(rng):
    X = np.zeros((300, 250))
    X[:, :50] = rng.uniform(0, 1, (300, 50))
    X[:, [10, 20, 30]] *= 500
    result = _check(X)
    assert result.details["features"] == [10, 20, 30]
    assert len(result.details["constant_features"]) == 200


def test_a_continuum_of_scales_names_nothing(rng):
    X = rng.normal(size=(300, 40)) * np.logspace(-2, 2, 40)
    result = _check(X)
    assert result.details["features"] == []
    assert not result.details["normalised"] or result.details["median_scale"] == pytest.approx(1, rel=0.3)


def test_tiny_features_are_noted_not_named(rng):
    X = rng.normal(size=(300, 10))
    X[:, [1, 2]] *= 1e-4
    result = _check(X)
    assert result.details["features"] == [] and result.details["small_features"] == [1, 2]
    assert result.status == "info"


def test_non_finite_inputs_are_critical_and_named(rng):
    X = rng.normal(size=(100, 6))
    X[5, 2] = np.nan
    X[9, 4] = np.inf
    with np.errstate(invalid="ignore"):  # inf - inf in the moments is the point
        result = _check(X)
    assert result.details["nonfinite_features"] == [2, 4] and result.details["features"] == [2, 4]
    assert result.status == "critical" and result.score == 1.0
    assert "NaN" in result.findings[0].summary


def test_two_features_have_no_rest_to_be_off(rng):
    X = rng.normal(size=(100, 2)) * [1, 1000]
    assert _check(X).details["features"] == []


def test_image_channels_are_judged_as_channels(rng):
    images = rng.uniform(0, 1, (200, 3, 8, 8))
    images[:, 1] *= 255
    result = _check(images)
    assert result.details["unit"] == "channel" and result.details["num_units"] == 3
    assert result.details["features"] == [1]


def test_the_earliest_epoch_is_judged(rng):
    X = rng.normal(size=(200, 5))
    run = _run(X)
    drifted = X.copy()
    drifted[:, 0] *= 1e4
    train_split = dataclasses.replace(run.train, features={3: moments_table(drifted), 0: moments_table(X)})
    result = feature_scale.check(dataclasses.replace(run, splits={"train": train_split}))
    assert result.details["epoch"] == 0 and result.details["features"] == []


def test_runs_without_inputs_are_skipped(rng):
    run = Run.from_arrays(np.zeros(10, int), np.full((10, 2), 0.5))
    assert feature_scale.check(run).status == "skipped"
    assert feature_scale.check(run, split="val").status == "skipped"
    empty = dataclasses.replace(run.train, features={0: moments_table(np.zeros((1, 3))).iloc[:0]})
    result = feature_scale.check(dataclasses.replace(run, splits={"train": empty}))
    assert result.status == "skipped"


def test_moments_without_m2_are_rejected(rng):
    run = _run(rng.normal(size=(10, 3)))
    split = dataclasses.replace(run.train, features={0: run.train.features[0].drop(columns="m2")})
    with pytest.raises(ValueError, match="missing \\['m2'\\]"):
        feature_scale.check(dataclasses.replace(run, splits={"train": split}))


def test_tracked_run_with_unscaled_features_end_to_end(run_dir):
    X, y = blobs(n=300, d=8)
    X = (X - X.mean(0)) / X.std(0)
    X[:, [2, 5]] *= 1000
    train(run_dir, X, y, epochs=3, watch=False)
    result = feature_scale.check(load_run(run_dir))
    assert result.details["features"] == [2, 5]
    assert result.details["unit"] == "feature" and result.details["epoch"] == 0


def test_tracked_images_are_pooled_then_judged_per_channel(run_dir, rng):
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    import dataaudit

    images = rng.uniform(0, 1, (64, 3, 32, 32)).astype(np.float32)
    images[:, 2] *= 1000
    ds = TensorDataset(torch.from_numpy(images), torch.zeros(64, dtype=torch.long))
    with dataaudit.Tracker(run_dir) as tracker:
        for xb, yb in tracker.wrap(DataLoader(ds, batch_size=16)):
            tracker.record(torch.zeros(len(xb)), targets=yb, inputs=xb)
    run = load_run(run_dir)
    assert run.meta["splits"]["train"]["sketch_shape"] == [3, 16, 16]
    result = feature_scale.check(run)
    assert result.details["unit"] == "channel" and result.details["features"] == [2]


def test_integer_inputs_are_skipped_with_the_reason(rng):
    ids = rng.integers(0, 30000, size=(50, 16)).astype(np.float64)  # token ids: huge "values", no scale
    run = Run.from_arrays(rng.integers(0, 2, 50), rng.dirichlet(np.ones(2), 50), features=ids,
                          meta={"splits": {"train": {"input_kind": "tokens"}}})
    result = feature_scale.check(run)
    assert result.status == "skipped" and "only floating-point inputs" in result.details["skipped"]
    as_floats = Run.from_arrays(rng.integers(0, 2, 50), rng.dirichlet(np.ones(2), 50), features=ids)
    assert feature_scale.check(as_floats).status != "skipped"


def test_a_stopped_sketch_says_why(rng):
    run = Run.from_arrays(rng.integers(0, 2, 20), rng.dirichlet(np.ones(2), 20),
                          meta={"splits": {"train": {"input_kind": "float", "input_sketch_note": "shape changed"}}})
    result = feature_scale.check(run)
    assert result.status == "skipped" and "shape changed" in result.details["skipped"]
