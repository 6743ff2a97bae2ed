"""Reading a run directory back (dataaudit.load); what it reads is written by the Tracker (tests/track)."""
from __future__ import annotations

import pyarrow.dataset as pads

from dataaudit import load_run
from fixtures.training import blobs, train


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
