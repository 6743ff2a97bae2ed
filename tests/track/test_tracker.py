from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import dataaudit
from fixtures.training import blobs, train


def _loader(n=40, d=3, k=4, batch_size=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    ds = TensorDataset(torch.randn(n, d, generator=g), torch.randint(0, k, (n,), generator=g))
    return DataLoader(ds, batch_size=batch_size, shuffle=True, generator=g)


def test_records_per_sample_statistics(run_dir):
    with dataaudit.Tracker(run_dir) as tracker:
        for x, y in tracker.wrap(_loader()):
            logits = torch.randn(len(x), 4)
            tracker.record(F.cross_entropy(logits, y, reduction="none"), logits=logits, targets=y, inputs=x)
            last = (logits, y, tracker)
    run = dataaudit.load_run(run_dir)
    assert len(run.records) == 40 and run.num_classes == 4
    logits, y, _ = last
    rows = run.records.tail(len(y))
    probs = logits.softmax(1)
    np.testing.assert_allclose(rows["prob"], probs[torch.arange(len(y)), y].numpy(), rtol=1e-5)
    others = logits.clone()
    others[torch.arange(len(y)), y] = -float("inf")
    margin = logits[torch.arange(len(y)), y] - others.max(1).values
    np.testing.assert_allclose(rows["margin"], margin.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(rows["pred"], logits.argmax(1).numpy())
    np.testing.assert_array_equal(rows["label"], y.numpy())
    ids, stored = run.train.probs(0)
    np.testing.assert_allclose(stored[-len(y):], probs.numpy(), rtol=1e-5)


@pytest.fixture
def open_batch(run_dir):
    """A tracker whose wrapped loader has just yielded a batch of 10."""
    tracker = dataaudit.Tracker(run_dir)
    it = iter(tracker.wrap(_loader()))
    x, y = next(it)
    yield tracker, x, y
    tracker.close()


@pytest.mark.parametrize("call, message", [
    (lambda t, x, y: t.record(torch.tensor(1.0)), r"reduction='none'.*got shape \(\)"),
    (lambda t, x, y: t.record(torch.zeros(10, 2)), r"one loss per sample.*\(10, 2\)"),
    (lambda t, x, y: t.record(torch.zeros(7)), "got 7 losses but the loader's batch has 10"),
    (lambda t, x, y: t.record(torch.zeros(10), logits=torch.zeros(9, 4)), "logits has shape"),
    (lambda t, x, y: t.record(torch.zeros(10), logits=torch.zeros(10, 2, 2)), r"logits of shape \(batch, classes\)"),
    (lambda t, x, y: t.record(torch.zeros(10), targets=torch.zeros(8)), "targets has shape"),
    (lambda t, x, y: t.record(torch.zeros(10), logits=torch.zeros(10), targets=torch.full((10,), 3.0)),
     r"one logit per sample.*targets in \[3, 3\].*logits=None"),
    (lambda t, x, y: t.record(torch.zeros(10), inputs=torch.zeros(3, 3)), "inputs has shape"),
    (lambda t, x, y: t.record([0.0] * 10), "as a tensor; got list"),
    (lambda t, x, y: t.record(torch.zeros(10), ids=[0.5] * 10), "integer sample ids"),
], ids=["scalar", "2d", "short", "logits-rows", "logits-3d", "targets", "binary-targets", "inputs", "list",
        "float-ids"])
def test_bad_record_calls_say_what_was_expected(open_batch, call, message):
    tracker, x, y = open_batch
    with pytest.raises((ValueError, TypeError), match=message):
        call(tracker, x, y)


def test_record_twice_for_one_batch(open_batch):
    tracker, x, y = open_batch
    tracker.record(torch.zeros(10), targets=y)
    with pytest.raises(RuntimeError, match="already called for this batch"):
        tracker.record(torch.zeros(10), targets=y)


def test_record_before_any_batch(run_dir):
    with dataaudit.Tracker(run_dir) as tracker:
        tracker.wrap(_loader())
        with pytest.raises(RuntimeError, match="before a wrapped loader yielded"):
            tracker.record(torch.zeros(10))


def test_record_after_close(run_dir):
    tracker = dataaudit.Tracker(run_dir)
    tracker.close()
    with pytest.raises(RuntimeError, match="closed"):
        tracker.record(torch.zeros(3))


def test_changing_number_of_classes_is_refused(open_batch):
    tracker, x, y = open_batch
    tracker.record(torch.zeros(10), logits=torch.zeros(10, 4), targets=y)
    loader = tracker._loaders["train"]
    for _x, _y in loader:
        with pytest.raises(ValueError, match="5 classes; earlier batches had 4"):
            tracker.record(torch.zeros(10), logits=torch.zeros(10, 5), targets=_y)
        break


def test_nonfinite_losses_are_recorded_and_counted(run_dir):
    with dataaudit.Tracker(run_dir) as tracker:
        for x, y in tracker.wrap(_loader()):
            losses = torch.ones(len(x))
            losses[0] = float("nan")
            losses[1] = float("inf")
            tracker.record(losses, targets=y)
    run = dataaudit.load_run(run_dir)
    assert run.records["loss"].isna().sum() == 4
    assert np.isinf(run.records["loss"]).sum() == 4
    assert run.meta["epochs"][0]["nonfinite_losses"] == 8


def test_resume_continues_epochs_and_keeps_everything(run_dir):
    X, y = blobs(n=60)
    train(run_dir, X, y, epochs=2)
    train(run_dir, X, y, epochs=3)
    run = dataaudit.load_run(run_dir)
    assert run.train.epochs == [0, 1, 2, 3, 4]
    assert len(run.records) == 5 * 60
    assert run.steps["epoch"].max() == 4
    assert run.steps["step"].tolist() == sorted(run.steps["step"].tolist())
    assert len(run.meta["sessions"]) == 2


def test_validation_split_is_tracked_beside_training(run_dir):
    train_loader, val_loader = _loader(n=40), _loader(n=20, seed=1)
    model = torch.nn.Linear(3, 4)
    with dataaudit.Tracker(run_dir) as tracker:
        tl, vl = tracker.wrap(train_loader), tracker.wrap(val_loader, split="val")
        for _ in range(3):
            for x, y in tl:
                logits = model(x)
                tracker.record(F.cross_entropy(logits, y, reduction="none"), logits=logits, targets=y)
            with torch.no_grad():
                for x, y in vl:
                    logits = model(x)
                    tracker.record(F.cross_entropy(logits, y, reduction="none"), logits=logits, targets=y)
    run = dataaudit.load_run(run_dir)
    assert run.train.epochs == [0, 1, 2] and run.split("val").epochs == [0, 1, 2]
    assert len(run.split("val").records) == 60 and len(run.records) == 120


def test_bad_split(run_dir):
    with dataaudit.Tracker(run_dir) as tracker:
        with pytest.raises(ValueError, match="short name"):
            tracker.wrap(_loader(), split="my split")
        with pytest.raises(ValueError, match="short name"):
            tracker.track(_loader(), split="")


def test_the_run_is_written_at_the_first_write_not_at_construction(run_dir):
    tracker = dataaudit.Tracker(run_dir)
    assert not run_dir.exists()          # the rank is not known yet: nothing is written under a guessed one
    for x, y in tracker.wrap(_loader()):
        tracker.record(torch.zeros(len(x)), targets=y)
    assert tracker.rank == 0 and (run_dir / "manifest.json").exists()
    tracker.close()
    assert len(dataaudit.load_run(run_dir).records) == 40


def test_refuses_a_directory_with_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="holds other files"):
        dataaudit.Tracker(tmp_path)


def test_flushes_in_chunks_within_an_epoch(run_dir):
    X, y = blobs(n=100)
    train(run_dir, X, y, epochs=1, batch_size=10, flush_rows=25)
    run = dataaudit.load_run(run_dir)
    parts = [f for f in run.meta["files"] if f.startswith("records/")]
    assert len(parts) == 4
    assert sorted(run.records.sample_id) == list(range(100))


def test_exception_in_the_loop_still_commits(run_dir):
    with pytest.raises(KeyError):
        with dataaudit.Tracker(run_dir) as tracker:
            for i, (x, y) in enumerate(tracker.wrap(_loader())):
                tracker.record(torch.zeros(len(x)), targets=y)
                if i == 2:
                    raise KeyError("boom")
    run = dataaudit.load_run(run_dir)
    assert len(run.records) == 30 and run.coverage["complete"].tolist() == [False]


def test_images_are_pooled_for_the_sketch_and_fingerprinted_whole(run_dir):
    ds = TensorDataset(torch.rand(24, 3, 32, 32), torch.randint(0, 2, (24,)))
    with dataaudit.Tracker(run_dir) as tracker:
        for _ in range(2):
            for x, y in tracker.wrap(DataLoader(ds, batch_size=8)) if _ == 0 else tracker._loaders["train"]:
                tracker.record(torch.zeros(len(x)), targets=y, inputs=x)
    run = dataaudit.load_run(run_dir)
    assert run.train.input_shape == (3, 32, 32)
    assert run.meta["splits"]["train"]["sketch_shape"] == [3, 16, 16]
    features = run.train.features[0]
    assert len(features) == 3 * 16 * 16
    # pooling keeps each channel's mean
    channel_means = features["mean"].to_numpy().reshape(3, -1).mean(1)
    np.testing.assert_allclose(channel_means, ds.tensors[0].mean((0, 2, 3)).numpy(), rtol=1e-5)
    # the same images give the same fingerprints every epoch
    fp = run.records.pivot(index="sample_id", columns="epoch", values="fingerprint")
    np.testing.assert_allclose(fp[0], fp[1], rtol=1e-5)


@pytest.mark.parametrize("other_tracker, split", [(False, "train"), (False, "val"), (True, "train")])
def test_wrapping_a_wrapped_loader_says_so(tmp_path, other_tracker, split):
    with dataaudit.Tracker(tmp_path / "a") as first:
        wrapped = first.wrap(_loader())
        with dataaudit.Tracker(tmp_path / "b") as second:
            tracker = second if other_tracker else first
            with pytest.raises(ValueError, match=r"already wrapped \(split 'train' of the run in .*a\)"):
                tracker.wrap(wrapped, split=split)


def test_targets_outside_the_logits_classes_are_refused(run_dir):
    """Found on the writer thread (no device sync per step), raised at a later call: close() at the latest."""
    from dataaudit.track.batch import TargetRangeError

    tracker = dataaudit.Tracker(run_dir, flush_rows=10)
    loader = tracker.wrap(_loader(k=3))
    with pytest.raises(TargetRangeError, match=r"targets up to 7 with logits of 3 classes"):
        for _ in range(2):
            for _x, y in loader:
                tracker.record(torch.zeros(10), logits=torch.zeros(10, 3), targets=y + 5)
        tracker.close()
    with contextlib.suppress(TargetRangeError):  # the later batches had the same targets
        tracker.close()
    assert tracker._closed


@pytest.mark.parametrize("targets, width", [(lambda y: torch.where(y == 0, -100, y % 3), 3),  # ignore_index
                                            (lambda y: y % 2, 1)])                          # one logit: 0/1
def test_negative_ignore_targets_and_binary_targets_are_kept(run_dir, targets, width):
    with dataaudit.Tracker(run_dir, flush_rows=10) as tracker:
        for _x, y in tracker.wrap(_loader(k=4)):
            tracker.record(torch.zeros(10), logits=torch.zeros(10, width), targets=targets(y))
    run = dataaudit.load_run(run_dir)
    assert len(run.records) == 40


def test_targets_beyond_what_the_checks_count_are_refused_without_logits(run_dir):
    from dataaudit.store import MAX_CLASSES
    from dataaudit.track.batch import TargetRangeError

    tracker = dataaudit.Tracker(run_dir, flush_rows=10)
    with pytest.raises(TargetRangeError, match=f"targets up to {10**9 + 3}.*below {MAX_CLASSES}"):
        for _x, y in tracker.wrap(_loader(k=4)):
            tracker.record(torch.zeros(10), targets=y + 10**9)
        tracker.close()
    with contextlib.suppress(TargetRangeError):  # the later batches had the same targets
        tracker.close()
    assert tracker._closed


@pytest.mark.parametrize("call, error, message", [
    (lambda t, y: t.record(torch.zeros(10), targets=["cat"] * 10), TypeError, "targets as class indices"),
    (lambda t, y: t.record(torch.zeros(10), targets=y, inputs=torch.zeros(10, 0)), ValueError,
     "at least one value per sample"),
])
def test_targets_and_inputs_of_the_wrong_kind_are_named(open_batch, call, error, message):
    tracker, _x, y = open_batch
    with pytest.raises(error, match=message):
        call(tracker, y)


def test_nan_float_targets_are_kept_as_no_label(run_dir):
    """A NaN target cast to an integer is -2^63: recorded, then read back as unknown (-1)."""
    with dataaudit.Tracker(run_dir, flush_rows=10) as tracker:
        for _x, y in tracker.wrap(_loader(k=3)):
            targets = y.float()
            targets[0] = float("nan")
            tracker.record(torch.zeros(10), logits=torch.zeros(10, 3), targets=targets)
    records = dataaudit.load_run(run_dir).records
    assert (records["label"] == -1).sum() == 4 and records["label"].min() == -1
