"""DataAuditCallback and DataAuditTrainerMixin under a real transformers.Trainer, with accelerate's
prepared loaders (DataLoaderShard, and DataLoaderDispatcher), on a tiny BERT built from its config.

Each run must reach the plain loop's verdict and a label F1 within 0.04 of it, on the same
generated token data with 20% label noise. Runs in `nox -s integrations`; skipped where
transformers is not installed.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
os.environ["HF_HUB_OFFLINE"] = "1"

import dataaudit  # noqa: E402
from fixtures.transformers_case import EPOCHS, N, plain, token_data, trainer_run  # noqa: E402


@pytest.fixture(scope="module")
def plain_text(tmp_path_factory):
    return plain(tmp_path_factory.mktemp("plain-text") / "run")


@pytest.mark.parametrize("dispatch", [False, True], ids=["shard", "dispatcher"])
def test_trainer_run_audits_like_the_plain_loop(tmp_path, plain_text, dispatch):
    args = {"accelerator_config": {"dispatch_batches": True}} if dispatch else {}
    outcome = trainer_run(tmp_path / "run", tmp_path / "out", **args)
    assert outcome.loader == ("DataLoaderDispatcher" if dispatch else "DataLoaderShard")
    run = dataaudit.load_run(tmp_path / "run")
    assert run.train.epochs == list(range(EPOCHS)) and run.coverage["complete"].all()
    assert (run.coverage["unique"] == N).all() and run.coverage["order_hash"].nunique() == EPOCHS
    # each record's label is the label of the sample its id names: ids and batches were paired right
    _, y, _ = token_data()
    np.testing.assert_array_equal(run.records["label"].to_numpy(), y[run.records["sample_id"].to_numpy()])
    assert run.records["prob"].notna().all()                     # logits were recorded too
    assert len(run.steps) == EPOCHS * (N // 32 + 1) and run.steps["grad_norm"].notna().all()
    print(f"verdict {outcome.verdict} (plain {plain_text.verdict}), label F1 {outcome.f1:.3f} "
          f"(plain {plain_text.f1:.3f})")
    assert outcome.verdict == plain_text.verdict == "data"
    assert abs(outcome.f1 - plain_text.f1) <= 0.04, (outcome.f1, plain_text.f1)


@pytest.mark.parametrize("dispatch", [False, True], ids=["shard", "dispatcher"])
def test_track_learns_ids_through_a_prepared_loader(tmp_path, dispatch):
    """Accelerate's loaders pass the DataLoader check but iterate a base loader of their own."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration
    from torch.utils.data import DataLoader, TensorDataset

    accelerator = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(dispatch_batches=dispatch))
    ds = TensorDataset(torch.arange(50).float()[:, None], torch.arange(50) % 3)
    prepared = accelerator.prepare(DataLoader(ds, batch_size=8, shuffle=True))
    assert type(prepared).__name__ == ("DataLoaderDispatcher" if dispatch else "DataLoaderShard")
    with dataaudit.Tracker(tmp_path / "run") as tracker:
        assert tracker.track(prepared) is prepared
        for _ in range(2):
            for x, y in prepared:
                np.testing.assert_array_equal(tracker.batch_start(), x[:, 0].long().numpy())
                tracker.record(torch.zeros(len(x)), targets=y)
    run = dataaudit.load_run(tmp_path / "run")
    assert run.coverage["complete"].all() and (run.coverage["unique"] == 50).all()
