from __future__ import annotations

import numpy as np
import pytest
import torch

from dataaudit.track.batch import as_target_tensor, logit_stats, per_sample_losses
from dataaudit.track.task import read_batch


@pytest.mark.parametrize("k", [2, 4, 64, 65, 300])  # reduced along a (classes, n) copy up to 64 classes, by row above
def test_logit_stats_match_torch(rng, k):
    logits = rng.normal(size=(50, k)).astype(np.float32)
    logits[5, :2] = logits[6, -2:] = 9.0  # tied largest logits: the first is the prediction, the margin 0
    labels = rng.integers(0, k, 50)
    labels[:3] = -1
    labels[5], labels[6] = 0, k - 1
    stats = logit_stats(logits, labels)
    t = torch.from_numpy(logits)
    probs = t.softmax(1).numpy()
    np.testing.assert_allclose(stats["probs"], probs, rtol=1e-5)
    np.testing.assert_array_equal(stats["pred"], logits.argmax(1))
    ok = labels >= 0
    np.testing.assert_allclose(stats["prob"][ok], probs[ok, labels[ok]], rtol=1e-5)
    others = logits.copy()
    others[np.arange(50), np.maximum(labels, 0)] = -np.inf
    np.testing.assert_allclose(stats["margin"][ok], (logits[np.arange(50), labels] - others.max(1))[ok], rtol=1e-5)
    assert stats["margin"][5] == stats["margin"][6] == 0
    assert np.isnan(stats["prob"][:3]).all() and np.isnan(stats["margin"][:3]).all()


def _labels(targets, n, k):
    task = {"kind": "classification", "num_classes": k}
    return read_batch(task, None, as_target_tensor(targets), n)["label"]


def test_targets_accept_one_hot_and_soft():
    assert _labels(torch.eye(3)[[2, 0]], 2, 3).tolist() == [2, 0]
    assert _labels(torch.tensor([[0.2, 0.8], [0.9, 0.1]]), 2, 2).tolist() == [1, 0]
    assert _labels([1, 0], 2, None).tolist() == [1, 0]


def test_per_sample_losses_detaches():
    x = torch.ones(3, requires_grad=True)
    assert not per_sample_losses(x * 2).requires_grad
    with pytest.raises(ValueError, match=r"reduction='none'"):
        per_sample_losses((x * 2).mean())
