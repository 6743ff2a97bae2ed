from __future__ import annotations

import numpy as np
import pytest

from fixtures.probing import blobs, tracked


# Module-scoped: a probe leaves the user's objects as they were (tested), so the tests can share a run.
@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory):
    """Well-separated blobs with a quarter of the labels flipped, trained to its plateau by Adam."""
    X, y = blobs(n=600, d=8, k=3, seed=1)
    rng = np.random.default_rng(1)
    flip = rng.choice(len(y), size=150, replace=False)
    y = y.copy()
    y[flip] = (y[flip] + rng.integers(1, 3, size=len(flip))) % 3
    run_dir = tmp_path_factory.mktemp("probe") / "noisy"
    return (run_dir, *tracked(run_dir, X, y, epochs=30, optimizer="adam", lr=0.01))


@pytest.fixture(scope="module")
def collapsed_run(tmp_path_factory):
    """Clean blobs whose learning rate is cut 10^4 x after the first epoch: the loss is held up by the optimizer."""
    X, y = blobs(n=600, d=8, k=3, seed=2)
    X = X / 4.0  # slower to fit, so that one epoch leaves a loss to remove
    run_dir = tmp_path_factory.mktemp("probe") / "collapsed"
    return (run_dir, *tracked(run_dir, X, y, epochs=30, lr=0.05, cut=(1, 1e-4)))


@pytest.fixture(scope="module")
def noisy_audit(noisy_run):
    """The passive audit of noisy_run, computed once (probe(audit=) skips analyzing again)."""
    import dataaudit
    return dataaudit.analyze(noisy_run[0])
