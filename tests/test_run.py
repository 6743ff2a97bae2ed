from __future__ import annotations

import numpy as np
import pyarrow.dataset as pads

from dataaudit import load_run
from dataaudit.run import Run, coverage_table
from fixtures.training import blobs, train


def test_coverage_table_counts():
    table = coverage_table({0: np.array([0, 1, 1, 3]), 1: np.array([2, 0, 1, 3])}, {0: True, 1: False}, 4)
    assert table[["seen", "unique", "missing", "duplicates"]].values.tolist() == [[4, 3, 1, 1], [4, 4, 0, 0]]
    assert table["complete"].tolist() == [True, False]
    assert table["order_hash"].nunique() == 2


def test_from_arrays_builds_a_one_epoch_run():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    run = Run.from_arrays(np.array([0, 1]), probs, features=np.ones((2, 4)))
    assert run.num_classes == 3 and run.records["pred"].tolist() == [0, 2]
    np.testing.assert_allclose(run.records["margin"], [0.5, -0.7], rtol=1e-6)
    ids, p = run.train.probs(0)
    assert ids.tolist() == [0, 1] and p is probs or np.allclose(p, probs)
    assert run.train.features[0]["mean"].tolist() == [1.0] * 4


def test_run_store_is_readable_without_dataaudit(run_dir):
    X, y = blobs(n=50)
    train(run_dir, X, y, epochs=2)
    table = pads.dataset(run_dir / "records", format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 100
    assert set(table.column("split").to_pylist()) == {"train"}
    assert sorted(set(table.column("epoch").to_pylist())) == [0, 1]


def test_empty_run_loads(run_dir):
    import dataaudit
    dataaudit.Tracker(run_dir).close()
    run = load_run(run_dir)
    assert len(run.records) == 0 and run.train.epochs == []
    audit = dataaudit.analyze(run_dir)
    assert audit.results["coverage"].status == "skipped"
