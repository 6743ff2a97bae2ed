"""tests for dataaudit/issues.py: audit.issues() (one row per sample), audit.issue_summary(), flagged_table."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

import dataaudit
from dataaudit.audit import Audit
from dataaudit.issues import ISSUE_COLUMNS
from dataaudit.run import Run, Split, coverage_table


@pytest.fixture(scope="module")
def skipping_audit(tmp_path_factory):
    """Blobs with 15% of the labels flipped, trained 10 epochs by a loader that never draws ids 0..19."""
    from torch.utils.data import SubsetRandomSampler

    from fixtures.training import blobs, train

    X, y = blobs(n=300, d=6, k=3, seed=2)
    noisy = y.copy()
    flip = np.random.default_rng(2).choice(np.arange(20, 300), 45, replace=False)
    noisy[flip] = (y[flip] + 1) % 3
    import torch
    sampler = SubsetRandomSampler(range(20, 300), generator=torch.Generator().manual_seed(0))
    run_dir = tmp_path_factory.mktemp("issues") / "run"
    train(run_dir, X, noisy, epochs=10, batch_size=32, lr=1e-2, hidden=32,
          loader_kwargs={"sampler": sampler, "shuffle": False})
    return dataaudit.analyze(run_dir)


def test_one_row_per_sample_with_the_documented_columns(skipping_audit):
    table = skipping_audit.issues()
    assert list(table.columns[:len(ISSUE_COLUMNS)]) == list(ISSUE_COLUMNS)
    assert table["sample_id"].tolist() == list(range(300))  # every sample, the never-drawn ones too
    never = table[table["sample_id"] < 20]
    assert (never["times_drawn"] == 0).all() and (never["times_missing"] == 10).all()
    assert never["plateau_loss"].isna().all()
    drawn = table[table["sample_id"] >= 20]
    assert (drawn["times_drawn"] == 10).all() and (drawn["times_missing"] == 0).all()


def test_label_columns_follow_the_labels_check(skipping_audit):
    table = skipping_audit.issues().set_index("sample_id")
    issues = list(skipping_audit.label_issues)
    assert len(issues) > 10
    assert set(table.index[table["is_label_issue"]]) == set(issues)
    assert table.loc[issues, "label_rank"].tolist() == list(range(len(issues)))
    assert (table.loc[~table["is_label_issue"], "label_rank"] == -1).all()
    per_sample = skipping_audit.results["labels"].per_sample.set_index("sample_id")
    ids = per_sample.index
    assert np.allclose(table.loc[ids, "label_score"], per_sample["label_quality"])
    assert (table.loc[ids, "suggested_label"] == per_sample["suggested_label"]).all()
    assert (table.loc[ids, "given_label"] == per_sample["label"]).all()


def test_plateau_loss_and_trend_match_a_groupby(skipping_audit):
    records = skipping_audit.run.records
    span = skipping_audit.attribution["plateau_epochs"]
    window = records[(records["epoch"] >= span[0]) & (records["epoch"] <= span[1])]
    expected = window.groupby("sample_id")["loss"].mean()
    table = skipping_audit.issues().set_index("sample_id")
    assert np.allclose(table.loc[expected.index, "plateau_loss"], expected, rtol=1e-5)
    if span[1] > span[0]:
        for i in expected.index[:5]:
            rows = window[window["sample_id"] == i]
            slope = np.polyfit(rows["epoch"].astype(float), rows["loss"].astype(float), 1)[0]
            assert table.loc[i, "loss_trend"] == pytest.approx(slope, rel=1e-4, abs=1e-6)


def test_issue_summary_has_one_row_per_check(skipping_audit):
    summary = skipping_audit.issue_summary()
    assert summary["check"].tolist() == list(skipping_audit.results)
    assert list(summary.columns) == ["check", "status", "score", "findings", "flagged", "worst", "summary"]
    labels = summary.set_index("check").loc["labels"]
    assert labels["flagged"] == len(skipping_audit.label_issues)
    assert labels["status"] == skipping_audit.results["labels"].status
    coverage = summary.set_index("check").loc["coverage"]
    assert coverage["flagged"] >= 20 and coverage["worst"] in ("warning", "critical")


def test_flagged_table_is_the_flagged_rows_of_issues(skipping_audit):
    from dataaudit.scan import flagged_table

    flagged = flagged_table(skipping_audit)
    assert list(flagged.columns[:4]) == ["sample_id", "given_label", "suggested_label", "label_quality"]
    assert flagged["sample_id"].tolist() == list(skipping_audit.label_issues)
    assert {"plateau_loss", "aum", "times_drawn"} <= set(flagged.columns)


def test_a_scan_has_one_row_per_sample(rng):
    n, k = 500, 4
    labels = rng.integers(0, k, n)
    probs = rng.dirichlet(np.ones(k), n)
    table = dataaudit.analyze(Run.from_arrays(labels, probs)).issues()
    assert len(table) == n and (table["times_drawn"] == 1).all() and table["loss_trend"].isna().all()
    assert np.allclose(table["plateau_loss"], -np.log(probs[np.arange(n), labels]), rtol=1e-5)


def test_no_checks_no_run_is_an_empty_table():
    audit = Audit(verdict="none", data_share=0.0, results={})
    assert list(audit.issues().columns) == list(ISSUE_COLUMNS) and audit.issues().empty
    assert audit.issue_summary().empty


def test_fast_at_a_million_samples_by_twenty_epochs():
    n, epochs = 1_000_000, 20
    rng = np.random.default_rng(0)
    draws = {e: rng.permutation(n).astype(np.int32) for e in range(epochs)}
    records = pd.DataFrame({
        "epoch": np.repeat(np.arange(epochs, dtype=np.int32), n), "sample_id": np.concatenate(list(draws.values())),
        "loss": rng.random(n * epochs, dtype=np.float32), "label": np.zeros(n * epochs, np.int32)})
    split = Split("train", records, coverage_table(draws, dict.fromkeys(range(epochs), True), n), draws=draws,
                  dataset_size=n)
    run = Run({"train": split}, pd.DataFrame(), pd.DataFrame(), {})
    audit = Audit(verdict="none", data_share=0.0, results={}, run=run,
                  attribution={"plateau_epochs": [10, 19]}, label_issues=(5, 3))
    start = time.perf_counter()
    table = audit.issues()
    elapsed = time.perf_counter() - start
    assert len(table) == n and table["is_label_issue"].sum() == 2
    assert elapsed < 10, f"issues() at 10^6 x 20 took {elapsed:.1f} s"
    del records, draws
