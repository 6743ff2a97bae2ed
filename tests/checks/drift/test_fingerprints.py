from __future__ import annotations

import numpy as np

from dataaudit.checks.drift import fingerprints


def test_first_change_tells_deterministic_from_random_pipelines():
    compared = np.full(8, 100)
    compared[0] = 0
    changed = np.array([0, 0, 0, 0, 97, 0, 0, 0])
    assert fingerprints.compute_first_change(changed, compared) == (4, "deterministic")
    # changed at the first transition, stable after: the change is at epoch 1, not augmentation
    assert fingerprints.compute_first_change(np.array([0, 90, 0, 0, 0, 0, 0, 0]), compared) == (1, "deterministic")
    # different every epoch: random augmentation, nothing dated
    assert fingerprints.compute_first_change(np.array([0, 99, 98, 99, 99, 97, 99, 98]), compared) == (None, "random")
    # a stable pipeline that is switched to random from epoch 3 on: dated at 3
    assert fingerprints.compute_first_change(np.array([0, 0, 0, 99, 98, 99, 97, 99]), compared) == (3, "deterministic")
    assert fingerprints.compute_first_change(np.zeros(8, int), compared) == (None, "deterministic")
    assert fingerprints.compute_first_change(np.zeros(8, int), np.zeros(8, int)) == (None, "unknown")


def test_changes_ignore_rounding_and_repeated_draws(rng):
    ids = np.tile(np.arange(50), 3)
    epoch = np.repeat(np.arange(3), 50)
    values = np.tile(rng.normal(size=50), 3)
    values[50:100] *= 1 + 1e-6                       # float rounding between epochs is no change
    values[100:110] += 1.0                           # ten samples changed in epoch 2
    # an id drawn twice in epoch 2: its first draw counts
    ids, epoch, values = np.r_[ids, 3], np.r_[epoch, 2], np.r_[values, 99.0]
    out = fingerprints.compute_changes(np.arange(3), epoch, ids, values, tolerance=fingerprints.fp_tolerance)
    assert out["compared"].tolist() == [0, 50, 50]
    assert out["changed"].tolist() == [0, 0, 10]
    assert out["changed_first"].tolist() == [0, 0, 10]


def test_labels_are_compared_exactly_against_previous_and_first_sightings():
    ids = np.tile(np.arange(20), 3)
    epoch = np.repeat(np.arange(3), 20)
    labels = np.tile(np.arange(20) % 4, 3)
    labels[20:25] = 9                                # five relabelled in epoch 1, back to the first value in epoch 2
    out = fingerprints.compute_changes(np.arange(3), epoch, ids, labels, tolerance=None)
    assert out["changed"].tolist() == [0, 5, 5]
    assert out["changed_first"].tolist() == [0, 5, 0]
