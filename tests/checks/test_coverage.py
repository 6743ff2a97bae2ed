from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler, SubsetRandomSampler

from dataaudit import analyze, load_run
from dataaudit.checks import coverage
from dataaudit.run import Run, coverage_table
from fixtures.training import blobs, train


def _result(draws, dataset_size, complete=None):
    complete = complete or {e: True for e in draws}
    cov = coverage_table(draws, complete, dataset_size)
    return coverage._compute_coverage(draws, cov, [e for e in draws if complete[e]], dataset_size)


def test_clean_epochs_find_nothing(rng):
    result = _result({e: rng.permutation(100) for e in range(3)}, 100)
    assert result.status == "ok" and result.score == 0
    assert result.details["missing_ids"] == [] and result.details["duplicate_ids"] == []
    assert not result.details["order_repeated"]


def test_a_subset_sampler_leaves_ids_never_drawn(rng):
    result = _result({e: rng.permutation(60) for e in range(3)}, 100)
    assert result.details["missing_ids"] == list(range(60, 100))
    assert result.status == "critical"
    assert result.findings[0].ids[:2] == (60, 61)


def test_replacement_repeats_and_skips(rng):
    result = _result({e: rng.integers(0, 100, 100) for e in range(3)}, 100)
    assert result.details["duplicate_ids"]
    assert all(e["duplicates"] > 0 for e in result.details["per_epoch"])
    assert result.details["sometimes_missing"] > 0
    assert result.status == "critical"


def test_same_order_every_epoch():
    result = _result({e: np.arange(50) for e in range(3)}, 50)
    assert result.details["order_repeated"]
    assert any("same order" in f.summary for f in result.findings)


def test_incomplete_epochs_are_not_judged(rng):
    draws = {0: rng.permutation(100), 1: np.arange(30)}
    result = _result(draws, 100, complete={0: True, 1: False})
    assert result.details["missing_ids"] == [] and result.details["complete_epochs"] == 1
    assert result.status == "info"


def test_without_complete_epochs_the_check_is_skipped():
    run = Run.from_arrays(np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]]))
    assert coverage.check(run, split="val").status == "skipped"


def test_tracked_samplers_end_to_end(tmp_path):
    X, y = blobs(n=80)
    cases = {
        "subset": {"sampler": SubsetRandomSampler(range(50)), "shuffle": False},
        "replacement": {"sampler": RandomSampler(range(80), replacement=True), "shuffle": False},
        "sequential": {"sampler": SequentialSampler(range(80)), "shuffle": False},
    }
    audits = {}
    for name, kwargs in cases.items():
        train(tmp_path / name, X, y, epochs=3, loader_kwargs=kwargs)
        audits[name] = analyze(tmp_path / name).checks["coverage"]
    assert audits["subset"]["missing_ids"] == list(range(50, 80))
    assert audits["replacement"]["duplicate_ids"]
    assert audits["sequential"]["order_repeated"] and not audits["sequential"]["missing_ids"]
    assert load_run(tmp_path / "subset").coverage["missing"].tolist() == [30, 30, 30]


def test_explicit_ids_use_every_id_seen_as_the_dataset(run_dir):
    import dataaudit
    ds = torch.utils.data.TensorDataset(torch.randn(20, 2), torch.zeros(20, dtype=torch.long))
    with dataaudit.Tracker(run_dir) as tracker:
        loader = tracker.wrap(DataLoader(ds, batch_size=5))
        for epoch in range(2):
            for i, (_x, yb) in enumerate(loader):
                ids = torch.arange(5) + 5 * i + (1000 if epoch == 0 or i < 3 else 2000)
                tracker.record(torch.zeros(5), targets=yb, ids=ids)
    cov = analyze(run_dir).checks["coverage"]
    assert cov["dataset_size"] == 25
    assert cov["sometimes_missing"] == 10
