from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler, SubsetRandomSampler, WeightedRandomSampler

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


# ----------------------------------------------------------------- judged against the sampler's contract

def _judged(draws, dataset_size, facts, held_out=None):
    cov = coverage_table(draws, {e: True for e in draws}, dataset_size)
    return coverage._compute_coverage(draws, cov, list(draws), dataset_size, facts=facts, held_out=held_out)


def _facts(loader):
    from dataaudit.track.sampler_info import sampler_facts
    return sampler_facts(loader)


DS100 = torch.utils.data.TensorDataset(torch.zeros(100))


def test_drop_last_remainder_is_info(rng):
    facts = _facts(DataLoader(DS100, batch_size=32, shuffle=True, drop_last=True))
    draws = {e: rng.permutation(100)[:96] for e in range(5)}
    result = _judged(draws, 100, facts)
    assert result.status == "info"
    assert any("drop_last" in f.summary for f in result.findings)
    assert result.details["sampler"]["drop_last"] and result.details["per_epoch"][0]["missing"] == 4


def test_drop_last_with_a_fixed_order_leaves_the_same_samples_out(rng):
    facts = _facts(DataLoader(DS100, batch_size=32, drop_last=True))
    result = _judged({e: np.arange(96) for e in range(3)}, 100, facts)
    assert result.details["missing_ids"] == [96, 97, 98, 99]
    assert result.status == "warning"
    assert any("same 4 samples" in f.summary for f in result.findings)


@pytest.mark.parametrize("sampler, weighted", [(RandomSampler(range(100), replacement=True), False),
                                               (WeightedRandomSampler([1.0] * 100, 100), True)])
def test_sampling_with_replacement_is_info_naming_the_sampler(rng, sampler, weighted):
    facts = _facts(DataLoader(DS100, batch_size=10, sampler=sampler))
    result = _judged({e: rng.integers(0, 100, 100) for e in range(3)}, 100, facts)
    assert result.status == "info" and result.details["duplicate_ids"]
    names = " ".join(f.summary for f in result.findings)
    assert type(sampler).__name__ in names and ("rebalancing" in names) == weighted


def test_a_sampler_that_draws_each_once_but_repeats_is_a_fault(rng):
    facts = _facts(DataLoader(DS100, batch_size=10, shuffle=True))
    result = _judged({e: rng.integers(0, 100, 100) for e in range(3)}, 100, facts)
    assert result.status == "critical"
    assert any("although RandomSampler draws without replacement" in f.summary for f in result.findings)


def test_a_plain_sampler_that_skips_samples_is_a_fault(rng):
    facts = _facts(DataLoader(DS100, batch_size=10, shuffle=True))
    draws = {e: rng.permutation(100)[:80] for e in range(3)}
    assert _judged(draws, 100, facts).status in ("warning", "critical")


def test_a_subset_never_drawn_is_a_fault_unless_another_split_draws_it(rng):
    facts = _facts(DataLoader(DS100, batch_size=10, sampler=SubsetRandomSampler(range(60))))
    draws = {e: rng.permutation(60) for e in range(3)}
    alone = _judged(draws, 100, facts)
    assert alone.status == "critical" and "SubsetRandomSampler draws 60" in alone.findings[0].summary
    assert alone.details["missing_ids"] == list(range(60, 100))
    held = _judged(draws, 100, facts, held_out={"val": np.arange(60, 100)})
    assert held.status == "info" and "'val'" in held.findings[0].summary
    assert held.details["missing_ids"] == list(range(60, 100))
    # a validation set of its own that happens to have as many samples explains nothing
    other = _judged(draws, 100, facts, held_out={"val": np.arange(100)})
    assert other.status == "critical"


def test_a_weighted_sampler_end_to_end_is_at_most_info(tmp_path):
    X, y = blobs(n=120, k=3)
    weights = np.where(y == 0, 3.0, 1.0)
    sampler = WeightedRandomSampler(weights.tolist(), len(y), replacement=True,
                                    generator=torch.Generator().manual_seed(0))
    train(tmp_path / "w", X, y, epochs=3, loader_kwargs={"sampler": sampler, "shuffle": False})
    result = analyze(tmp_path / "w").results["coverage"]
    assert result.status == "info" and result.details["sampler"]["weighted"]
