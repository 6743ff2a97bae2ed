"""DataAuditCallback under a real Lightning Trainer: DDP on two gloo ranks, and loaders re-created every epoch.

Each run trains the plain loop's model on the same noisy digits and must reach the same verdict and a
label F1 within 0.04 of it. Runs in `nox -s integrations`; skipped where lightning is not installed.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("lightning")

import dataaudit  # noqa: E402
from fixtures.frameworks import noisy_digits  # noqa: E402
from fixtures.lightning_case import Digits, fit  # noqa: E402


def _same_audit_as_the_plain_loop(outcome, plain) -> None:
    print(f"verdict {outcome.verdict} (plain {plain.verdict}), label F1 {outcome.f1:.3f} (plain {plain.f1:.3f})")
    assert outcome.verdict == plain.verdict == "data"
    assert abs(outcome.f1 - plain.f1) <= 0.04, (outcome.f1, plain.f1)


def _ids_are_the_batches(run) -> None:
    """Each record's label is the label of the sample its id names: ids and batches were paired right."""
    _, y, _ = noisy_digits()
    np.testing.assert_array_equal(run.records["label"].to_numpy(), y[run.records["sample_id"].to_numpy()])


def test_ddp_on_two_ranks_writes_one_shard_per_rank(tmp_path, plain_outcome):
    run_dir = tmp_path / "run"
    outcome = fit(run_dir, strategy="ddp_spawn", devices=2)
    run = dataaudit.load_run(run_dir)
    assert sorted(p.name for p in run_dir.glob("manifest*.json")) == ["manifest.json", "manifest.rank1.json"]
    for rank in (0, 1):
        manifest = dataaudit.store.read_manifest(run_dir, rank)
        assert manifest["rank"] == rank and manifest["world_size"] == 2
        assert len(manifest["epochs"]) == 30 and all(e["complete"] for e in manifest["epochs"])
        # Lightning's DistributedSampler stayed in place: each rank drew its half (1797 padded to 1798)
        assert {e["samples"] for e in manifest["epochs"]} == {899}
    assert run.coverage[["seen", "unique", "missing"]].drop_duplicates().values.tolist() == [[1798, 1797, 0]]
    _ids_are_the_batches(run)
    assert not run.steps["clipped"].any() and run.steps["grad_norm"].notna().all()
    _same_audit_as_the_plain_loop(outcome, plain_outcome)


class Checked(Digits):
    """Keeps the gradient norm of every step, as Lightning hands it to the optimizer."""

    def __init__(self):
        super().__init__()
        self.norms: list[float] = []

    def on_before_optimizer_step(self, optimizer):
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))


def test_reloaded_dataloaders_continue_the_split_and_steps_are_measured(tmp_path, plain_outcome):
    run_dir = tmp_path / "run"
    module = Checked()
    outcome = fit(run_dir, module=module, reload_dataloaders_every_n_epochs=1)
    run = dataaudit.load_run(run_dir)
    assert run.train.epochs == list(range(30)) and run.coverage["complete"].all()
    assert (run.coverage["unique"] == 1797).all() and run.coverage["order_hash"].nunique() == 30
    _ids_are_the_batches(run)
    # automatic optimization steps through a closure: each step's own gradient, none a step late, no NaN
    assert len(run.steps) == len(module.norms) == 30 * 29
    np.testing.assert_allclose(run.steps["grad_norm"], module.norms, rtol=1e-5)
    _same_audit_as_the_plain_loop(outcome, plain_outcome)


def _labels_trained_on(callbacks: list) -> torch.Tensor:
    import lightning.pytorch as pl

    seen: list[torch.Tensor] = []

    class Recording(Digits):
        def training_step(self, batch, batch_idx):
            seen.append(batch[1].clone())
            return super().training_step(batch, batch_idx)

    pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, callbacks=callbacks).fit(Recording())
    return torch.cat(seen)


def test_the_callback_changes_nothing_the_trainer_draws(tmp_path):
    """Lightning's first iterator draws through the hook, not from a loader iterated anew (which would
    draw another seed from the loader's generator and shuffle differently)."""
    from dataaudit.integrations.lightning import DataAuditCallback

    untracked = _labels_trained_on([])
    tracked = _labels_trained_on([DataAuditCallback(tmp_path / "run")])
    assert torch.equal(tracked, untracked)
    run = dataaudit.load_run(tmp_path / "run")
    np.testing.assert_array_equal(run.records["label"].to_numpy(), untracked.numpy())


class LossOnly(Digits):
    """A module not yet changed for dataaudit: training_step returns the mean loss only."""

    def training_step(self, batch, batch_idx):
        return super().training_step(batch, batch_idx)["loss"]


def test_a_module_returning_no_losses_is_told_and_its_draws_still_counted(tmp_path):
    with pytest.warns(UserWarning, match="returned no per-sample 'losses'"):
        fit(tmp_path / "run", epochs=2, module=LossOnly())
    run = dataaudit.load_run(tmp_path / "run")
    assert len(run.records) == 0 and run.coverage["complete"].all() and (run.coverage["unique"] == 1797).all()
