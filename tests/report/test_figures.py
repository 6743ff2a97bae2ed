from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from dataaudit.report.figures import loss_by_epoch
from dataaudit.run import Run


def test_loss_by_epoch_is_the_groupby_mean_of_all_clean_and_flagged_rows(rng):
    n, epochs = 300, 4
    probs = rng.dirichlet(np.ones(3), size=n)
    run = Run.from_arrays(rng.integers(0, 3, n), probs)
    records = pd.DataFrame({"epoch": np.repeat(np.arange(2, 2 + epochs), n).astype(np.int32),
                            "sample_id": np.tile(np.arange(n), epochs).astype(np.int32),
                            "loss": rng.exponential(size=n * epochs).astype(np.float32)})
    records.loc[[5, 400, 401], "loss"] = np.nan  # skipped, as a groupby mean skips them
    run = dataclasses.replace(run, splits={"train": dataclasses.replace(run.train, records=records)})
    flagged = (3, 7, 299, 5000)  # an id that was never recorded changes nothing
    got = loss_by_epoch(run, flagged)
    mask = records["sample_id"].isin(flagged)
    want = pd.DataFrame({"all": records.groupby("epoch")["loss"].mean(),
                         "clean": records[~mask].groupby("epoch")["loss"].mean(),
                         "flagged": records[mask].groupby("epoch")["loss"].mean()}).astype(float)
    pd.testing.assert_frame_equal(got[["all", "clean", "flagged"]], want, check_exact=False, rtol=1e-6)
    assert list(got.index) == [2, 3, 4, 5] and got["val"].isna().all()
    assert loss_by_epoch(run, ())["flagged"].isna().all()


def test_loss_by_class_is_the_groupby_mean_per_epoch_and_label(rng):
    from dataaudit.report.figures import loss_by_class

    n, epochs = 200, 3
    run = Run.from_arrays(rng.integers(0, 4, n), rng.dirichlet(np.ones(4), size=n))
    labels = np.tile(rng.integers(0, 4, n), epochs).astype(np.int32)
    labels[labels == 3] = 2  # class 3 never occurs: no column
    records = pd.DataFrame({"epoch": np.repeat(np.arange(epochs), n).astype(np.int32),
                            "sample_id": np.tile(np.arange(n), epochs).astype(np.int32),
                            "label": labels, "loss": rng.exponential(size=n * epochs).astype(np.float32)})
    records.loc[[0, 1, 2], "loss"] = np.nan
    for frame in (records, records.assign(label=np.where(np.arange(n * epochs) % 7 == 0, -1, labels))):
        run = dataclasses.replace(run, splits={"train": dataclasses.replace(run.train, records=frame)})
        want = frame.groupby(["epoch", "label"])["loss"].mean().unstack("label").sort_index()
        got = loss_by_class(run)
        want = want[list(got.columns)].astype(float)
        assert sorted(got.columns) == sorted(want.columns)
        np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), rtol=1e-6)
        assert list(got.index) == list(want.index)
