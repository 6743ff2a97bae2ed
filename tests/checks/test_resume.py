from __future__ import annotations

import pytest

from dataaudit.checks import resume
from dataaudit.checks.resume import _compute_resume
from fixtures.causes import causes_loop
from fixtures.training import blobs


@pytest.fixture(scope="module")
def data():
    return blobs(n=300, d=8, k=3)


def _resumed(tmp_path, data, **kw):
    return causes_loop(tmp_path / "run", *data, epochs=4, resume_at=2, schedule="warmup", **kw)


def test_adam_resumed_without_its_state_or_its_scheduler(tmp_path, data):
    result = resume.check(_resumed(tmp_path, data, optimizer="adam", lr=0.01, restore=()))
    assert result.status == "warning" and result.details["state_lost_at"] == [2]
    assert result.details["schedule_restarted_at"] == [2]
    lost = result.findings[0]
    assert "step count from 10 to 0" in lost.summary and "exp_avg_sq" in lost.summary
    assert "state_dict" in lost.remedy


def test_sgd_momentum_lost_is_found_from_its_buffer(tmp_path, data):
    result = resume.check(_resumed(tmp_path, data, restore=("scheduler",)))
    assert result.details["state_lost_at"] == [2]
    assert "momentum_buffer" in result.findings[0].summary


def test_a_scheduler_not_restored_restarts_the_schedule(tmp_path, data):
    result = resume.check(_resumed(tmp_path, data, optimizer="adam", lr=0.01, restore=("optimizer",)))
    assert result.details["state_lost_at"] == [] and result.details["schedule_restarted_at"] == [2]
    assert "position went back from 1 to 0" in result.findings[0].summary


def test_a_full_restore_raises_nothing(tmp_path, data):
    result = resume.check(_resumed(tmp_path, data, optimizer="adam", lr=0.01))
    assert result.status == "info" and result.details["resumes"] == 1
    assert not result.details["state_lost_at"] and not result.details["schedule_restarted_at"]


def test_without_a_scheduler_a_learning_rate_back_at_its_start_is_a_restart():
    def entry(at, session, lr, step):
        return {"at": at, "epoch": 0, "session": session, "groups": [{"lr": lr, "step": step}], "scheduler": None}
    states = [entry("start", "a", 1e-4, None), entry("end", "a", 1e-3, 50.0), entry("start", "b", 1e-4, 50.0)]
    result = _compute_resume(states, {})
    assert result.details["schedule_restarted_at"] == [0] and not result.details["state_lost_at"]
    # a schedule that moved on by one of its own steps is no restart
    states[-1]["groups"][0]["lr"] = 9e-4
    assert not _compute_resume(states, {}).details["schedule_restarted_at"]
    # a warm-up from 0, per step (transformers' linear schedule), back at 0
    states = [entry("start", "a", 0.0, None), entry("end", "a", 5e-5, 50.0), entry("start", "b", 0.0, 50.0)]
    assert _compute_resume(states, {}).details["schedule_restarted_at"] == [0]
    states[-1]["groups"][0]["lr"] = 5.1e-5
    assert not _compute_resume(states, {}).details["schedule_restarted_at"]


def test_a_run_never_resumed_says_so(tmp_path, data):
    result = resume.check(causes_loop(tmp_path / "run", *data, epochs=2, optimizer="adam", lr=0.01))
    assert result.status == "info" and result.details["resumes"] == 0
