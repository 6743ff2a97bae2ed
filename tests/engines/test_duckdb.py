"""dataaudit.engines.duckdb: the record-level analysis in DuckDB equals what load_run and the in-memory checks
compute on the same run (curve, coverage, per-class loss, per-sample label statistics, label candidates)."""
from __future__ import annotations

import importlib.util
import shutil
import sys

import numpy as np
import pandas as pd
import pytest

from dataaudit import load_run
from dataaudit.checks import class_imbalance, curves, labels
from dataaudit.store import RunFormatError

needs_duckdb = pytest.mark.skipif(importlib.util.find_spec("duckdb") is None,
                                  reason="duckdb is not installed (pip install 'dataaudit[duckdb]')")


def _analyze(run_dir, **kwargs):
    from dataaudit.engines.duckdb import analyze_records

    return analyze_records(run_dir, memory_limit="256MB", threads=1, **kwargs)


def _noisy_blobs(n=600, k=4, rate=0.1, seed=0):
    from fixtures.training import blobs

    X, y = blobs(n=n, d=8, k=k, seed=seed)
    rng = np.random.default_rng(seed + 1)
    flip = rng.random(n) < rate
    return X, np.where(flip, (y + rng.integers(1, k, n)) % k, y)


@pytest.fixture(scope="module")
def margin_run(tmp_path_factory):
    """4 classes, 10% of the labels flipped, no probabilities stored: the labels check judges by the margin."""
    from fixtures.training import train

    run_dir = tmp_path_factory.mktemp("duckdb") / "margin"
    X, y = _noisy_blobs()
    train(run_dir, X, y, epochs=8, max_prob_classes=2, top_k_probs=0)
    return run_dir


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory):
    """3 classes, probabilities stored, a NaN loss every 3rd batch; 30% of class 0 labelled 1 (a systematic flip,
    which confident learning finds beyond the lowest margins)."""
    from fixtures.training import blobs, train_loop

    run_dir = tmp_path_factory.mktemp("duckdb") / "faulty"
    X, y = blobs(n=400, d=8, k=3, seed=0)
    y[(y == 0) & (np.random.default_rng(1).random(len(y)) < 0.3)] = 1
    train_loop(run_dir, X, y, epochs=5, nan_every=3, every=50)
    return run_dir


def _confident_only(run, check) -> int:
    """How many samples confident learning flags that the lowest margins do not, in the check's window."""
    import warnings

    from cleanlab.filter import find_label_issues

    epochs = run.train.complete_epochs
    dynamics = labels._dynamics(run, epochs)
    end = epochs.index(check.details["window"][1]) + 1
    _, pp, aum = next(labels._windows(dynamics, 1, [end], run.num_classes))
    n_issues = labels._count_issues(dynamics.labels, pp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned = find_label_issues(dynamics.labels, pp, filter_by="prune_by_noise_rate")
    pruned[np.argsort(aum, kind="stable")[:n_issues]] = False
    return int(pruned.sum())


def _assert_same_records_analysis(result, run):
    """Curve, coverage and per-class tables of `result` equal the in-memory ones of `run`."""
    expected = curves.epoch_losses(run.train)
    got = result.curve.drop(columns="nonfinite").rename(columns={"nonfinite_share": "nonfinite"})
    got = got[list(expected.columns)]
    pd.testing.assert_frame_equal(got, expected, rtol=1e-9)
    records = run.records
    complete = records[records["epoch"].isin(run.train.complete_epochs)]
    assert result.curve["recorded"].tolist() == complete.groupby("epoch").size().tolist()
    assert result.curve["nonfinite"].tolist() == complete.groupby("epoch")["loss"].apply(
        lambda s: int((~np.isfinite(s.to_numpy())).sum())).tolist()

    pd.testing.assert_frame_equal(result.coverage, run.coverage.drop(columns="order_hash"), check_dtype=False)

    known = records[records["label"] >= 0]
    per_class = class_imbalance.per_class_loss(known["epoch"].to_numpy(), known["label"].to_numpy(),
                                               known["loss"].to_numpy(), run.num_classes)
    pd.testing.assert_frame_equal(result.class_loss, per_class, rtol=1e-6, check_names=False)
    counts = class_imbalance.check(run).details["counts"]
    assert dict(zip(result.classes["label"], result.classes["samples"], strict=True)) == {
        c: n for c, n in counts.items() if n or c in set(result.classes["label"])}
    assert result.classes["draws"].tolist() == np.bincount(known["label"]).tolist()
    assert result.classes["share"].sum() == pytest.approx(1.0)


def _assert_same_per_sample(samples, in_memory):
    """The per-sample table equals the labels check's per_sample (same window): ids, labels, aum, suggested."""
    got = samples.set_index("sample_id").sort_index()
    want = in_memory.set_index("sample_id").sort_index()
    assert got.index.tolist() == want.index.tolist()
    assert got["label"].tolist() == want["label"].tolist()
    np.testing.assert_allclose(got["aum"].to_numpy(float), want["aum"].to_numpy(float), rtol=1e-9, atol=1e-12)


def _assert_same_label_judgement(result, check):
    """DuckDB's label candidates, in order, and the figures of their judgement are the labels check's."""
    assert result.label_issues["sample_id"].tolist() == check.details["label_issues"]
    for key in ("window", "n_flagged", "estimated_noise_rate", "evidence", "unfit_classes", "consistency",
                "model_agreement", "lift_over_prior", "class_recall"):
        assert result.labels[key] == check.details[key], key
    _assert_same_per_sample(result.samples, check.per_sample)
    got = result.samples.set_index("sample_id").sort_index()
    want = check.per_sample.set_index("sample_id").sort_index()
    assert got["suggested_label"].tolist() == want["suggested_label"].tolist()
    assert got["flagged"].tolist() == want["flagged"].tolist()


@needs_duckdb
def test_margin_rule_run_equals_the_in_memory_checks(margin_run):
    run = load_run(margin_run)
    result = _analyze(margin_run)
    _assert_same_records_analysis(result, run)

    check = labels.check(run)
    assert check.details["probabilities"] == "none" and check.details["n_flagged"] > 10  # the case tested
    _assert_same_label_judgement(result, check)
    assert "note" not in result.labels


@needs_duckdb
def test_weak_model_flags_nothing_as_the_labels_check(tmp_path):
    from fixtures.training import train

    X, _ = _noisy_blobs(n=300)
    y = np.random.default_rng(3).integers(0, 4, len(X))  # labels unrelated to the inputs: nothing to learn
    train(tmp_path / "run", X, y, epochs=4, max_prob_classes=2, top_k_probs=0)
    run = load_run(tmp_path / "run")
    check = labels.check(run)
    result = _analyze(tmp_path / "run")
    assert result.labels["evidence"] == check.details["evidence"] == "weak"
    assert result.label_issues.empty and check.details["label_issues"] == []


@needs_duckdb
def test_nan_losses_and_stored_probabilities(faulty_run):
    run = load_run(faulty_run)
    result = _analyze(faulty_run)
    assert result.curve["nonfinite"].sum() > 0  # the case tested: NaN losses in every epoch
    _assert_same_records_analysis(result, run)
    # with probabilities the labels check adds confident learning: DuckDB computes it too
    check = labels.check(run)
    # the case tested: confident learning on full probabilities adds to the lowest margins
    assert check.details["probabilities"] == "full" and check.details["n_flagged"] > 10
    assert _confident_only(run, check) > 0
    _assert_same_label_judgement(result, check)
    margin_only = _analyze(faulty_run, confident_learning=False)  # faster, and says it is not the check's rule
    assert "margin rule" in margin_only.labels["note"] and set(margin_only.label_issues["sample_id"]) != set(
        check.details["label_issues"])


@needs_duckdb
def test_soft_targets_are_read_as_load_run_reads_them(tmp_path):
    from fixtures.tasks import train_soft

    X, y = _noisy_blobs(n=300, k=3)
    train_soft(tmp_path / "run", X, y, mode="mixup", epochs=4)
    run = load_run(tmp_path / "run")
    assert run.soft_targets
    result = _analyze(tmp_path / "run")
    _assert_same_records_analysis(result, run)  # the loss less the targets' entropy
    check = labels.check(run)
    assert check.details["probabilities"] == "full"
    _assert_same_label_judgement(result, check)  # mixed rows left out alike


@needs_duckdb
def test_an_epoch_broken_off_counts_in_coverage_only(tmp_path):
    """The loop breaks out of its last pass: that epoch is committed incomplete, left out of the curve and labels."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset

    import dataaudit

    torch.manual_seed(0)
    X, y = _noisy_blobs(n=240, k=3)
    model = torch.nn.Linear(8, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with dataaudit.Tracker(tmp_path / "run", max_prob_classes=2, top_k_probs=0) as tracker:
        loader = tracker.wrap(DataLoader(TensorDataset(torch.from_numpy(X), torch.from_numpy(y)), batch_size=40,
                                         shuffle=True, generator=torch.Generator().manual_seed(0)))
        for epoch in range(5):
            for b, (xb, yb) in enumerate(loader):
                if epoch == 4 and b == 2:
                    break
                losses = F.cross_entropy(model(xb), yb, reduction="none")
                tracker.record(losses, logits=model(xb), targets=yb)
                opt.zero_grad()
                losses.mean().backward()
                opt.step()
    run = load_run(tmp_path / "run")
    assert run.train.complete_epochs == [0, 1, 2, 3] and 4 in run.train.epochs  # the case tested
    result = _analyze(tmp_path / "run")
    _assert_same_records_analysis(result, run)
    assert result.coverage["complete"].tolist() == [True] * 4 + [False]
    assert result.curve["epoch"].tolist() == [0, 1, 2, 3]
    check = labels.check(run)
    assert result.labels["window"] == check.details["window"]
    assert result.label_issues["sample_id"].tolist() == check.details["label_issues"]


@needs_duckdb
def test_two_ranks_are_merged_as_load_run_merges_them(tmp_path):
    """Two gloo ranks, 101 samples: DistributedSampler pads to 102, one sample drawn twice per epoch (on both ranks)."""
    import torch.multiprocessing as mp

    from fixtures.distributed import free_port, worker

    run_dir = tmp_path / "run"
    mp.spawn(worker, args=(2, free_port(), str(run_dir), 101, 3, True, None), nprocs=2, join=True)
    run = load_run(run_dir)
    assert (run.coverage["duplicates"] == 1).all()  # the case tested
    result = _analyze(run_dir)
    _assert_same_records_analysis(result, run)
    _assert_same_label_judgement(result, labels.check(run))


@needs_duckdb
def test_only_listed_files_count(margin_run, tmp_path):
    copy = shutil.copytree(margin_run, tmp_path / "run")
    part = next((copy / "records" / "split=train" / "epoch=2" / "rank=0").glob("*.parquet"))
    shutil.copy(part, part.with_name("part-stray.parquet"))  # copied in by hand: not listed
    unlisted = copy / "records" / "split=train" / "epoch=8" / "rank=0"  # an epoch in progress
    unlisted.mkdir(parents=True)
    shutil.copy(part, unlisted / "part-0.parquet")
    before, after = _analyze(margin_run), _analyze(copy)
    pd.testing.assert_frame_equal(after.curve, before.curve)
    pd.testing.assert_frame_equal(after.coverage, before.coverage)
    assert after.label_issues["sample_id"].tolist() == before.label_issues["sample_id"].tolist()
    assert after.settings["files"] == before.settings["files"]


@needs_duckdb
def test_per_sample_table_to_parquet_and_a_given_window(margin_run, tmp_path):
    result = _analyze(margin_run, window=(2, 4), samples_path=tmp_path / "samples.parquet")
    samples = pd.read_parquet(result.samples)
    assert result.labels["window"] == [2, 4]
    records = load_run(margin_run).records
    inside = records[records["epoch"].between(2, 4)]
    aum = inside.groupby(["sample_id", "epoch"])["margin"].mean().groupby("sample_id").mean()
    loss = inside.groupby(["sample_id", "epoch"])["loss"].mean().groupby("sample_id").mean()
    samples = samples.set_index("sample_id").sort_index()
    np.testing.assert_allclose(samples["aum"], aum.sort_index(), rtol=1e-6)
    np.testing.assert_allclose(samples["mean_loss"], loss.sort_index(), rtol=1e-6)
    assert (samples["epochs_drawn"] == 3).all()
    hits = (inside["pred"] == inside["label"]).groupby(inside["sample_id"]).mean()
    np.testing.assert_allclose(samples["predicted_as_label"], hits.sort_index())
    last = records.groupby("sample_id")["label"].last()  # one row per (epoch, sample): the last epoch's label
    assert samples["label"].tolist() == last.sort_index().tolist()
    with pytest.raises(ValueError, match="window"):
        _analyze(margin_run, window=(5, 2))


@needs_duckdb
def test_damaged_run_and_bad_settings_are_named(margin_run, tmp_path):
    copy = shutil.copytree(margin_run, tmp_path / "run")
    next((copy / "records" / "split=train" / "epoch=1" / "rank=0").glob("*.parquet")).unlink()
    with pytest.raises(RunFormatError, match="listed files are missing"):
        _analyze(copy)
    with pytest.raises(RunFormatError, match="no such run directory"):
        _analyze(tmp_path / "nothing")
    with pytest.raises(ValueError, match="memory_limit"):
        from dataaudit.engines.duckdb import analyze_records

        analyze_records(margin_run, memory_limit="lots")


@needs_duckdb
def test_empty_run_gives_empty_tables(tmp_path):
    import dataaudit

    dataaudit.Tracker(tmp_path / "run").close()
    result = _analyze(tmp_path / "run")
    assert result.curve.empty and result.coverage.empty and result.classes.empty and result.label_issues.empty
    assert "skipped" in result.labels


def test_missing_duckdb_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "duckdb", None)  # import duckdb then raises ImportError
    from dataaudit.engines.duckdb import duckdb_module

    with pytest.raises(ImportError, match=r"pip install 'dataaudit\[duckdb\]'"):
        duckdb_module()
