"""Two gloo processes on loopback: each rank writes its shard; loading merges them; coverage is judged across ranks."""
from __future__ import annotations

import numpy as np
import torch.multiprocessing as mp

import dataaudit
from fixtures.distributed import free_port, tracker_before_init, worker


def _spawn(run_dir, **kwargs) -> None:
    args = {"n": 101, "epochs": 3, "set_epoch": True, "shrink_rank": None, **kwargs}
    mp.spawn(worker, args=(2, free_port(), str(run_dir), args["n"], args["epochs"], args["set_epoch"],
                           args["shrink_rank"]), nprocs=2, join=True)


def test_two_ranks_merge_and_padding_is_seen(run_dir):
    _spawn(run_dir)
    run = dataaudit.load_run(run_dir)
    assert sorted(p.name for p in run_dir.glob("manifest*.json")) == ["manifest.json", "manifest.rank1.json"]
    assert {r["rank"] for r in run.meta["ranks"]} == {0, 1}
    # 101 samples over 2 ranks: DistributedSampler pads to 102, one sample drawn twice per epoch
    assert run.coverage[["seen", "unique", "missing", "duplicates"]].values.tolist() == [[102, 101, 0, 1]] * 3
    cov = dataaudit.analyze(run_dir).checks["coverage"]
    assert cov["missing_ids"] == [] and not cov["order_repeated"]
    assert cov["status"] == "info"                      # padding: harmless, said so
    # both replicas stepped alike: the telemetry of one rank is kept, not both
    assert len(run.steps) == 3 * 7 and run.steps["step"].is_unique
    # raw norms are read after DDP averaged the gradients: no clipping is seen where there is none
    measured = run.steps["grad_norm_raw"].notna()
    assert measured.sum() == 3 and not run.steps["clipped"].any()
    np.testing.assert_allclose(run.steps.loc[measured, "grad_norm_raw"], run.steps.loc[measured, "grad_norm"],
                               rtol=1e-5)


def test_forgotten_set_epoch_and_ranks_disagreeing(run_dir):
    _spawn(run_dir, n=100, set_epoch=False, shrink_rank=1)
    cov = dataaudit.analyze(run_dir).checks["coverage"]
    assert cov["order_repeated"]
    assert cov["dataset_size_by_rank"] == {"0": 100, "1": 98}
    assert cov["status"] == "critical"


def test_a_tracker_made_before_the_process_group_learns_its_rank(run_dir):
    mp.spawn(tracker_before_init, args=(2, free_port(), str(run_dir)), nprocs=2, join=True)
    assert sorted(p.name for p in run_dir.glob("manifest*.json")) == ["manifest.json", "manifest.rank1.json"]
    run = dataaudit.load_run(run_dir)
    assert {r["rank"] for r in run.meta["ranks"]} == {0, 1}
    # DistributedSampler without shuffling: rank r draws ids r, r + 2, ...
    for rank in (0, 1):
        manifest = dataaudit.store.read_manifest(run_dir, rank)
        assert manifest["rank"] == rank and manifest["world_size"] == 2
    assert sorted(run.records.sample_id) == list(range(40))
