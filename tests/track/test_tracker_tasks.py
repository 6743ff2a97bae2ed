"""The Tracker records the task once and reads each batch by it: binary, regression, soft targets."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import dataaudit
from dataaudit import store


def _loader(y, n=40, d=3, batch_size=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(torch.randn(n, d, generator=g), y), batch_size=batch_size, shuffle=True,
                      generator=g)


def _manifest(run_dir):
    return json.loads((run_dir / store.MANIFEST).read_text())


@pytest.mark.parametrize("column", [False, True], ids=["(B,)", "(B,1)"])
def test_single_logit_binary(run_dir, column):
    y = (torch.arange(40) % 2).float()
    with dataaudit.Tracker(run_dir) as tracker:
        for x, yb in tracker.wrap(_loader(y)):
            z = x[:, 0] * 3
            logits, targets = (z[:, None], yb[:, None]) if column else (z, yb)
            losses = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").reshape(-1)
            tracker.record(losses, logits=logits, targets=targets, inputs=x)
            last = (z, yb)
    task = _manifest(run_dir)["task"]
    assert task["kind"] == "binary" and task["num_classes"] == 2 and task["single_logit"]
    run = dataaudit.load_run(run_dir)
    assert run.task == "binary" and run.num_classes == 2
    z, yb = last
    rows = run.records.tail(len(yb))
    assert set(run.records["label"]) == {0, 1}
    np.testing.assert_array_equal(rows["label"], yb.long().numpy())
    sign = np.where(yb.numpy() == 1, 1.0, -1.0)
    np.testing.assert_allclose(rows["margin"], sign * z.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rows["prob"], np.where(sign > 0, torch.sigmoid(z), 1 - torch.sigmoid(z)), rtol=1e-5)
    np.testing.assert_array_equal(rows["pred"], (z > 0).long().numpy())
    assert run.train.probs(0)[1].shape == (40, 2)
    assert dataaudit.analyze(run).run_summary["task"] == "binary"


def test_regression_stores_targets_and_no_labels(run_dir):
    y = torch.linspace(-1, 1, 40)
    with dataaudit.Tracker(run_dir) as tracker:
        for x, yb in tracker.wrap(_loader(y)):
            tracker.record((x[:, 0] - yb) ** 2, targets=yb, inputs=x)
    run = dataaudit.load_run(run_dir)
    assert run.task == "regression" and run.num_classes is None
    assert (run.records["label"] == -1).all() and (run.records["pred"] == -1).all()
    np.testing.assert_allclose(np.sort(run.records["target"]), np.sort(y.numpy()), rtol=1e-6)
    audit = dataaudit.analyze(run)
    assert audit.run_summary["task"] == "regression"
    for name in ("labels", "class_imbalance"):
        assert audit.results[name].status == "skipped"
        assert "regression" in audit.results[name].details["skipped"]


def test_soft_targets_are_noted_and_the_loss_is_read_above_their_entropy(run_dir):
    y = torch.arange(40) % 3
    with dataaudit.Tracker(run_dir) as tracker:
        for i, (x, yb) in enumerate(tracker.wrap(_loader(y))):
            target = F.one_hot(yb, 3).float()
            if i % 2:  # a mixup batch: half of the rows get an even mix, no dominant class
                target = 0.5 * target + 0.5 * target.roll(1, 0)
            logits = x
            losses = -(target * logits.log_softmax(1)).sum(1)
            tracker.record(losses, logits=logits, targets=target, inputs=x)
    assert _manifest(run_dir)["task"]["soft_targets"] is True
    run = dataaudit.load_run(run_dir)
    assert run.soft_targets
    records = run.records
    mixed = records["target_prob"] < 1
    assert mixed.any() and (records.loc[mixed & (records["target_prob"] == 0.5), "label"] == -1).all()
    np.testing.assert_array_less(-1e-6, records["loss"])  # the KL divergence, not the cross-entropy
    entropy = records["target_entropy"].fillna(0)
    assert entropy.max() > 0.6  # an even mix of two classes: ln 2


def test_hard_targets_are_not_soft(run_dir):
    y = torch.arange(40) % 3
    with dataaudit.Tracker(run_dir) as tracker:
        for x, yb in tracker.wrap(_loader(y)):
            tracker.record(F.cross_entropy(x, yb, reduction="none"), logits=x, targets=F.one_hot(yb, 3).float())
    run = dataaudit.load_run(run_dir)
    assert not run.soft_targets and "target_entropy" not in run.records


def test_a_run_recorded_before_tasks_were_is_classification(run_dir):
    y = torch.arange(40) % 3
    with dataaudit.Tracker(run_dir) as tracker:
        for x, yb in tracker.wrap(_loader(y)):
            tracker.record(F.cross_entropy(x, yb, reduction="none"), logits=x, targets=yb)
    manifest = _manifest(run_dir)
    del manifest["task"]
    (run_dir / store.MANIFEST).write_text(json.dumps(manifest))
    assert dataaudit.load_run(run_dir).task == "classification"


def test_scans_are_classification(rng):
    run = dataaudit.Run.from_arrays(rng.integers(0, 3, 20), rng.dirichlet(np.ones(3), 20))
    assert run.task == "classification"


def test_a_later_batch_that_contradicts_the_task_is_refused(run_dir):
    y = torch.linspace(-1, 1, 40)
    with dataaudit.Tracker(run_dir) as tracker:
        it = iter(tracker.wrap(_loader(y)))
        x, yb = next(it)
        tracker.record((x[:, 0] - yb) ** 2, targets=yb)
        x, yb = next(it)
        with pytest.raises(ValueError, match="regression"):
            tracker.record((x[:, 0] - yb) ** 2, logits=x, targets=yb)
