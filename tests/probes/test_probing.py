"""probe() end to end on tiny tracked runs: the verdicts of planted faults, safety, interruption, cost."""
from __future__ import annotations

import copy
import json
import random

import numpy as np
import pytest
import torch

import dataaudit
from dataaudit.probes import results
from fixtures.probing import cross_entropy


def test_lr_collapse_is_measured_as_optimizer(collapsed_run):
    run_dir, model, opt, loader = collapsed_run
    p = dataaudit.probe(run_dir, model=model, optimizer=opt, loader=loader, loss_fn=cross_entropy, progress=False)
    arms = p.arms.set_index("arm")
    control = p.summary["share"]["control_level"]
    assert arms.loc["lr_restart", "reduction"] > 0.5 * control  # the restart removes most of the loss
    assert p.verdict == "optimizer" and p.data_share <= 0.3
    assert p.summary["cost"]["fraction_done"] <= 0.2  # the default budget


def test_label_noise_is_measured_as_data(noisy_run, noisy_audit):
    run_dir, model, opt, loader = noisy_run
    p = dataaudit.probe(run_dir, model=model, optimizer=opt, loader=loader, loss_fn=cross_entropy, progress=False,
                        audit=noisy_audit)
    arms = p.arms.set_index("arm")
    assert arms.loc["relabel_flagged", "reduction"] > 0.3
    assert p.verdict == "data" and p.data_share >= 0.8
    assert p.interval[0] <= p.data_share <= p.interval[1]


def _state(model, opt, loader):
    return (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()), torch.get_rng_state(),
            np.random.get_state(), random.getstate(), loader.generator.get_state(),
            [p.requires_grad for p in model.parameters()])


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, tuple | list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    return a == b


def test_user_state_is_bit_identical_afterwards(noisy_run, noisy_audit):
    run_dir, model, opt, loader = noisy_run
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    model[0].bias.requires_grad_(False)  # a frozen parameter, which the unfreeze arm unfreezes in its copy
    try:
        before = (_state(model, opt, loader), copy.deepcopy(scheduler.state_dict()))
        dataaudit.probe(run_dir, model=model, optimizer=opt, loader=loader, loss_fn=cross_entropy, audit=noisy_audit,
                        scheduler=scheduler, arms=["relabel_flagged", "lr_restart", "reset_state", "unfreeze"],
                        progress=False, verbose=False)
        assert _same(before, (_state(model, opt, loader), scheduler.state_dict()))
        # and the optimizer still steps the user's own parameters
        assert all(p is q for p, q in zip(opt.param_groups[0]["params"], model.parameters(), strict=True))
    finally:
        model[0].bias.requires_grad_(True)
        for g in opt.param_groups:
            g.pop("initial_lr", None)


def test_ctrl_c_keeps_what_was_measured(noisy_run, noisy_audit, capsys):
    run_dir, model, opt, loader = noisy_run
    calls = {"n": 0}

    def interrupted(m, batch):  # a Ctrl-C during the third arm
        calls["n"] += 1
        if calls["n"] > 4 * 9 + 3:  # 9 batches an arm-epoch (half of 19): control and relabel, 2 seeds each
            raise KeyboardInterrupt
        return cross_entropy(m(batch[0]), batch[1])

    p = dataaudit.probe(run_dir, model=model, optimizer=opt, loader=loader, batch_loss=interrupted, audit=noisy_audit,
                        epochs=1, subset=0.5, progress=False)
    assert not p.complete
    assert "interrupted" in capsys.readouterr().err
    saved = results.latest(run_dir)
    assert saved["complete"] is False
    done = results.runs_table(run_dir, saved["id"])
    assert set(done["arm"]) == {"control", "relabel_flagged"} and len(done) == 4
    assert done["level"].notna().all()


def test_analyze_rests_on_the_probe(noisy_run, tmp_path):
    run_dir, model, opt, loader = noisy_run
    passive = dataaudit.analyze(run_dir)
    p = dataaudit.probe(run_dir, model=model, optimizer=opt, loader=loader, loss_fn=cross_entropy,
                        audit=passive, progress=False, verbose=False)
    audit = dataaudit.analyze(run_dir)
    assert audit.data_share == pytest.approx(p.data_share) and audit.verdict == p.verdict
    audit.write_json(tmp_path / "audit.json")
    written = json.loads((tmp_path / "audit.json").read_text())
    assert written["attribution"]["rests_on"] == "probe"
    assert written["attribution"]["passive"]["data_share"] == passive.data_share
    section = written["probes"]
    assert section["share"]["share"] == p.data_share and section["complete"] is True
    assert {a["arm"] for a in section["arms"]} >= {"relabel_flagged", "lr_restart", "both"}
    html = audit.write_html(tmp_path / "audit.html").read_text()
    assert "Probes: the data share measured by experiment" in html and "relabel_flagged" in html


def test_cost_is_stated_and_bounded(noisy_run, noisy_audit, capsys):
    run_dir, model, opt, loader = noisy_run
    with pytest.raises(ValueError, match="over its budget of 20%"):
        dataaudit.probe(run_dir, model=model, optimizer=opt, loader=loader, loss_fn=cross_entropy, epochs=5,
                        subset=1.0, audit=noisy_audit, progress=False)
    p = dataaudit.probe(run_dir, model=model, optimizer=opt, loader=loader, loss_fn=cross_entropy, progress=False,
                        arms=["lr_restart"], seeds=[0], audit=noisy_audit)
    err = capsys.readouterr().err
    assert "2 arms x 1 seeds x 2 epochs" in err and "of the original run's 18,000" in err
    # the plan counts whole batches: an upper bound, met within the last batch's shortfall
    assert 0.95 * p.summary["plan"]["samples"] <= p.summary["cost"]["samples_done"] <= p.summary["plan"]["samples"]


def test_bad_arguments_name_what_was_expected(noisy_run, noisy_audit):
    run_dir, model, opt, loader = noisy_run
    with pytest.raises(ValueError, match="exactly one of loss_fn="):
        dataaudit.probe(run_dir, model=model, optimizer=opt, loader=loader)
    with pytest.raises(ValueError, match="arms="):
        dataaudit.probe(run_dir, model=model, optimizer=opt, loader=loader, loss_fn=cross_entropy, arms=["nope"],
                        audit=noisy_audit)
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        dataaudit.probe(run_dir, model=model, optimizer="adam", loader=loader, loss_fn=cross_entropy)
