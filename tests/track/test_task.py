"""The run's task, decided once from logits and targets together (dataaudit/track/task.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dataaudit.track.batch import logit_stats
from dataaudit.track.task import infer_task, read_batch


@pytest.mark.parametrize("logits, targets, kind, k", [
    (torch.zeros(6), torch.ones(6), "binary", 2),
    (torch.zeros(6, 1), torch.ones(6, 1), "binary", 2),
    (torch.zeros(6, 4), torch.zeros(6, dtype=torch.long), "classification", 4),
    (torch.zeros(6, 3), torch.full((6, 3), 1 / 3), "classification", 3),
    (None, torch.zeros(6, dtype=torch.long), "classification", None),
    (None, torch.randn(6), "regression", None),
    (None, torch.randn(6, 3), "regression", None),
])
def test_the_task_comes_from_logits_and_targets_together(logits, targets, kind, k):
    task = infer_task(logits, targets)
    assert task["kind"] == kind and task["num_classes"] == k and task["soft_targets"] is False
    if kind == "regression":
        assert task["target_dim"] == (1 if targets.ndim == 1 else targets.shape[1])


def test_nothing_to_decide_from():
    assert infer_task(None, None) is None


def test_one_logit_with_targets_outside_0_1_is_refused():
    with pytest.raises(ValueError, match=r"binary classifier.*\[-2, 5\].*logits=None"):
        infer_task(torch.zeros(3), torch.tensor([-2.0, 0.0, 5.0]))


def test_one_logit_reads_as_two_classes():
    z = torch.tensor([2.0, -1.0, 0.5, -3.0])
    y = torch.tensor([1.0, 1.0, 0.0, 0.0])
    for logits, targets in ((z, y), (z[:, None], y[:, None])):
        task = infer_task(logits, targets)
        row = read_batch(task, logits, targets, 4)
        assert row["logits"].shape == (4, 2) and row["label"].tolist() == [1, 1, 0, 0]
        stats = logit_stats(row["logits"].numpy(), row["label"].numpy())
        np.testing.assert_allclose(stats["probs"][:, 1], torch.sigmoid(z).numpy(), rtol=1e-6)
        # the margin of label 1 is z, of label 0 is -z: comparable with the two-logit margin
        np.testing.assert_allclose(stats["margin"], [2.0, -1.0, -0.5, 3.0], rtol=1e-6)
        assert stats["pred"].tolist() == [1, 0, 1, 0]
        assert not bool(row["soft"])


def test_soft_targets_label_only_the_dominant_class():
    targets = torch.tensor([[0.5, 0.3, 0.2],     # dominant at exactly 0.5
                            [0.45, 0.35, 0.2],   # largest, but under half: unknown
                            [0.4, 0.4, 0.2],     # a tie: unknown
                            [0.0, 0.0, 1.0]])    # one-hot
    task = infer_task(torch.zeros(4, 3), targets)
    row = read_batch(task, torch.zeros(4, 3), targets, 4)
    assert row["label"].tolist() == [0, -1, -1, 2]
    assert bool(row["soft"])
    p = targets.clamp_min(1e-12)
    np.testing.assert_allclose(row["target_entropy"].numpy(), (-(targets * p.log()).sum(1)).numpy(), rtol=1e-6)
    np.testing.assert_allclose(row["target_prob"].numpy(), [0.5, 0.45, 0.4, 1.0])


def test_one_hot_targets_are_not_soft():
    targets = torch.eye(3)[[2, 0, 1]]
    row = read_batch(infer_task(torch.zeros(3, 3), targets), torch.zeros(3, 3), targets, 3)
    assert row["label"].tolist() == [2, 0, 1] and not bool(row["soft"])
    assert float(row["target_entropy"].max()) == 0.0


def test_smoothed_binary_targets_are_soft():
    targets = torch.tensor([0.95, 0.05, 0.5])
    row = read_batch(infer_task(torch.zeros(3), targets), torch.zeros(3), targets, 3)
    assert row["label"].tolist() == [1, 0, -1] and bool(row["soft"])


def test_regression_keeps_the_target_or_its_norm():
    y = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    row = read_batch(infer_task(None, y), None, y, 2)
    assert row["target"].tolist() == [5.0, 1.0] and "label" not in row
    y1 = torch.tensor([0.5, -2.0])
    assert read_batch(infer_task(None, y1), None, y1, 2)["target"].tolist() == [0.5, -2.0]


@pytest.mark.parametrize("first, later, message", [
    ((None, torch.randn(4)), (torch.zeros(4, 3), torch.randn(4)), "no logits and floating-point targets"),
    ((torch.zeros(4), torch.ones(4)), (torch.zeros(4, 3), torch.ones(4)), "one logit per sample"),
    ((torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)), (torch.zeros(4, 5), None), "5 classes; earlier .* 3"),
    ((None, torch.randn(4, 2)), (None, torch.randn(4, 3)), "3 values per sample; earlier batches had 2"),
    ((None, torch.randn(4)), (None, torch.zeros(4, dtype=torch.long)), "integer targets"),
])
def test_a_batch_that_contradicts_the_task_is_an_error(first, later, message):
    task = infer_task(*first)
    with pytest.raises(ValueError, match=message):
        read_batch(task, *later, 4)
