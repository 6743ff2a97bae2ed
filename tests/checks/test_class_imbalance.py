from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from dataaudit import load_run
from dataaudit.checks import class_imbalance
from dataaudit.run import Run
from fixtures.training import blobs, train


def _probs(labels: np.ndarray, k: int, rng: np.random.Generator, *, confident: float = 0.9,
           weak: tuple[int, ...] = ()) -> np.ndarray:
    """(n, k) probabilities putting `confident` on the label, or 1/k on it for classes in `weak`."""
    n = len(labels)
    probs = rng.uniform(0.5, 1.5, size=(n, k))
    probs[np.arange(n), labels] = 0.0
    probs *= (1 - confident) / probs.sum(1, keepdims=True)
    probs[np.arange(n), labels] = confident
    for c in weak:
        probs[labels == c] = 1.0 / k
    return probs


def _labels(counts: dict[int, int], rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.concatenate([np.full(n, c) for c, n in counts.items()]))


def _check(counts: dict[int, int], rng, **kwargs):
    labels = _labels(counts, rng)
    return class_imbalance.check(Run.from_arrays(labels, _probs(labels, max(counts) + 1, rng, **kwargs)))


def test_balanced_classes_name_nothing(rng):
    result = _check({c: 180 for c in range(10)}, rng)
    assert result.status == "ok" and result.score == 0
    assert result.details["classes"] == [] and result.details["imbalance_ratio"] == 1.0


def test_two_digits_cut_to_twelve_samples_are_named(rng):
    counts = {c: 175 + c for c in range(10)} | {3: 12, 8: 12}
    result = _check(counts, rng, weak=(3, 8))
    assert result.details["classes"] == [3, 8]
    assert result.details["counts"][3] == 12 and result.details["counts"][0] == 175
    assert result.details["lagging_classes"] == [3, 8]
    assert result.status == "critical" and result.score > 0.5
    finding = result.findings[0]
    assert "WeightedRandomSampler" in finding.remedy and "[3, 8]" in finding.remedy
    assert finding.evidence["late_loss"][3] > 2 * finding.evidence["other_classes_late_loss"]


def test_rare_classes_the_model_learned_are_a_warning(rng):
    result = _check({0: 300, 1: 300, 2: 20}, rng)
    assert result.details["classes"] == [2]
    assert result.details["lagging_classes"] == []
    assert result.status == "warning"
    assert result.score < _check({0: 300, 1: 300, 2: 20}, rng, weak=(2,)).score


@pytest.mark.parametrize("counts", [
    {0: 212, 1: 357},                      # breast_cancer
    {0: 59, 1: 71, 2: 48},                 # wine
    {c: 174 + c for c in range(10)},       # digits
    {0: 2, 1: 5, 2: 6, 3: 9},              # tiny: Poisson noise, not imbalance
])
def test_mild_imbalance_names_nothing(counts, rng):
    assert _check(counts, rng).details["classes"] == []


def test_two_classes_at_one_to_twenty(rng):
    result = _check({0: 1000, 1: 50}, rng)
    assert result.details["classes"] == [1]
    assert result.details["imbalance_ratio"] == 20.0


def test_long_tail_of_a_hundred_classes_names_the_tail(rng):
    # CIFAR-100-LT style: counts fall exponentially from 500 to 5.
    counts = {c: int(500 * 0.01 ** (c / 99)) for c in range(100)}
    named = _check(counts, rng).details["classes"]
    median = np.median(list(counts.values()))
    assert named == [c for c, n in counts.items() if n < 0.25 * median]
    assert 10 <= len(named) <= 30 and named[-1] == 99


def test_a_class_without_samples_is_named(rng):
    labels = _labels({0: 100, 1: 100, 3: 100}, rng)
    result = class_imbalance.check(Run.from_arrays(labels, _probs(labels, 4, rng)))
    assert result.details["classes"] == [2] and result.details["counts"][2] == 0
    assert any("no training sample" in f.summary for f in result.findings)


def test_a_head_much_wider_than_the_labels_is_only_noted(rng):
    labels = _labels({0: 100, 1: 100}, rng)
    result = class_imbalance.check(Run.from_arrays(labels, _probs(labels, 10, rng)))
    assert result.details["classes"] == []
    assert result.status == "info"


def test_unknown_labels_are_left_out(rng):
    labels = _labels({0: 200, 1: 200, 2: 30}, rng)
    labels[:150] = -1
    result = class_imbalance.check(Run.from_arrays(labels, _probs(np.clip(labels, 0, None), 3, rng)))
    assert sum(result.details["counts"].values()) == 280
    assert result.per_sample["class_share"].isna().sum() == 150


def test_per_sample_marks_the_named_classes(rng):
    labels = _labels({0: 200, 1: 200, 2: 10}, rng)
    result = class_imbalance.check(Run.from_arrays(labels, _probs(labels, 3, rng)))
    per_sample = result.per_sample
    assert len(per_sample) == len(labels)
    assert per_sample["under_represented"].to_numpy().tolist() == (labels == 2).tolist()
    assert np.isclose(per_sample["class_share"].sum(), (200**2 * 2 + 10**2) / 410)


def test_a_sampler_that_already_rebalances_is_informational(rng):
    # 300/300/20 samples, but the rare class is drawn 15 times per epoch on average.
    counts = {0: 300, 1: 300, 2: 20}
    labels = _labels(counts, rng)
    ids = np.arange(len(labels))
    rare = ids[labels == 2]
    drawn = np.concatenate([ids[labels != 2], rng.choice(rare, 300)])
    records = pd.DataFrame({"epoch": 0, "sample_id": drawn, "label": labels[drawn], "loss": 0.1})
    result = class_imbalance._compute_class_imbalance(
        records["epoch"].to_numpy(), drawn, labels[drawn], records["loss"].to_numpy(), 3, 0)
    assert result.details["classes"] == [2] and result.details["rebalanced_by_sampler"]
    assert result.status == "info"


def test_per_class_loss_is_compact_and_follows_the_epochs(rng):
    epochs = np.repeat(np.arange(120), 40)
    labels = np.tile(np.r_[np.zeros(36, int), np.ones(4, int)], 120)
    ids = np.tile(np.arange(40), 120)
    losses = np.where(labels == 1, 2.0, 1.0 / (1 + epochs))
    result = class_imbalance._compute_class_imbalance(epochs, ids, labels, losses, 2, 119)
    per_class = result.details["per_class_loss"]
    assert len(per_class) == 50 and min(per_class) == 0 and max(per_class) == 119
    assert per_class[119] == {0: round(1 / 120, 4), 1: 2.0}
    json.dumps(result.details)  # plain ints and floats only


def _curves(minority_loss, epochs: int = 20):
    """40 samples a epoch, 4 of class 1; class 0's loss falls as 1 / (1 + epoch)."""
    epoch = np.repeat(np.arange(epochs), 40)
    labels = np.tile(np.r_[np.zeros(36, int), np.ones(4, int)], epochs)
    losses = np.where(labels == 1, minority_loss(epoch), 1.0 / (1 + epoch))
    return epoch, np.tile(np.arange(40), epochs), labels, losses


def test_a_rare_class_that_converges_late_lags():
    # still at 1.0 for most of the late half, then fit in the last epochs
    result = class_imbalance._compute_class_imbalance(*_curves(lambda e: np.where(e < 17, 1.0, 0.01)), 2, 19)
    assert result.details["lagging_classes"] == [1] and result.details["late_epochs"] == [10, 19]
    assert result.status == "warning" and "stays at" in result.findings[0].summary
    assert result.details["minority_loss_share"] > 0.3


def test_a_rare_class_that_converges_with_the_others_does_not_lag():
    result = class_imbalance._compute_class_imbalance(*_curves(lambda e: 1.2 / (1 + e)), 2, 19)
    assert result.details["classes"] == [1] and result.details["lagging_classes"] == []


def test_epochs_after_the_last_complete_one_are_not_judged():
    # epoch 19 (incomplete) has the rare class at 1.0: ignored when the last complete epoch is 18
    curves = _curves(lambda e: np.where(e < 19, 1.2 / (1 + e), 1.0))
    assert class_imbalance._compute_class_imbalance(*curves, 2, 18).details["lagging_classes"] == []
    assert class_imbalance._compute_class_imbalance(*curves, 2, 19).details["lagging_classes"] == [1]


@pytest.mark.parametrize("labels", [np.zeros(0, int), np.full(5, -1), np.zeros(20, int)])
def test_empty_unknown_or_single_class_runs_are_skipped(labels):
    probs = np.ones((len(labels), 1))
    result = class_imbalance.check(Run.from_arrays(labels, probs))
    assert result.status == "skipped" and result.score == 0


def test_records_without_labels_are_rejected():
    run = Run.from_arrays(np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]]))
    split = dataclasses.replace(run.train, records=run.records.drop(columns="label"))
    with pytest.raises(ValueError, match="missing \\['label'\\]"):
        class_imbalance.check(dataclasses.replace(run, splits={"train": split}))


def test_tracked_run_with_a_rare_class_end_to_end(run_dir):
    X, y = blobs(n=420, k=3, seed=1)
    keep = np.r_[np.flatnonzero(y != 2), np.flatnonzero(y == 2)[:8]]
    train(run_dir, X[keep], y[keep], epochs=3, watch=False)
    result = class_imbalance.check(load_run(run_dir))
    assert result.details["classes"] == [2]
    assert result.details["counts"][2] == 8
    assert sorted(result.details["per_class_loss"]) == [0, 1, 2]
    assert result.status in ("warning", "critical")
