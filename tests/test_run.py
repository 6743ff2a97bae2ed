from __future__ import annotations

import numpy as np

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


def test_top_k_probabilities_are_stored_and_rebuilt(tmp_path):
    """Above max_prob_classes the records hold each sample's top-k classes; Split.probs rebuilds full rows."""
    import pyarrow.parquet as pq

    from dataaudit.load import load_run

    X, y = blobs(n=200, d=8, k=12, seed=0)
    train(tmp_path / "run", X, y, epochs=2, max_prob_classes=4, top_k_probs=3)
    part = next((tmp_path / "run" / "records").rglob("*.parquet"))
    names = pq.read_schema(part).names
    assert {"topk_ids", "topk_probs"} <= set(names) and "probs" not in names
    split = load_run(tmp_path / "run").train
    ids, probs = split.probs(1, 12)
    assert probs.shape == (len(ids), 12)
    assert np.allclose(probs.sum(1), 1.0, atol=1e-4)
    table = pq.read_table(part, columns=["topk_ids", "topk_probs"]).to_pydict()
    top, p = np.array(table["topk_ids"][0]), np.array(table["topk_probs"][0])
    assert (np.diff(p) <= 0).all()  # most probable first
    first = split.probs(int(part.parent.parent.name.split("=")[1]), 12)[1][0]
    assert np.allclose(first[top], p, atol=1e-6) and first.argmax() == top[0]


def test_last_records_is_the_latest_epochs_latest_row(rng):
    from dataaudit.run import last_records

    def reference(ids, epochs):
        order = np.argsort(epochs, kind="stable")[::-1]
        uniq, first = np.unique(ids[order], return_index=True)
        return uniq, order[first]

    epochs = np.repeat(np.arange(6), 400).astype(np.int32)
    ids = rng.integers(0, 300, len(epochs)).astype(np.int32)  # drawn with replacement: repeats within an epoch
    for e, i in ((epochs, ids), (epochs[::-1].copy(), ids), (epochs, ids.astype(np.int64) * 10**9)):
        got, want = last_records(i, e), reference(i, e)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
