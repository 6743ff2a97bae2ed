from __future__ import annotations

import pytest

from dataaudit.checks import accumulation
from fixtures.causes import causes_loop
from fixtures.training import blobs


@pytest.fixture(scope="module")
def data():
    return blobs(n=320, d=8, k=3)


def test_gradients_never_zeroed(tmp_path, data):
    result = accumulation.check(causes_loop(tmp_path / "run", *data, epochs=2, lr=0.005, zero_grad=False))
    assert result.status == "critical" and result.details["signals"] == ["grads_not_cleared"]
    assert result.details["grad_not_cleared"] == result.details["steps"] - 1     # all but the first step
    assert "zero_grad" in result.findings[0].remedy


def test_accumulation_that_adds_micro_batch_losses(tmp_path, data):
    result = accumulation.check(causes_loop(tmp_path / "run", *data, epochs=2, accumulate=4, scale_loss=False))
    assert result.status == "warning" and result.details["signals"] == ["unscaled_accumulation"]
    assert result.details["typical_passes"] == 4 and result.details["loss_weight"] == pytest.approx(4.0)


def test_accumulation_that_averages_is_info(tmp_path, data):
    result = accumulation.check(causes_loop(tmp_path / "run", *data, epochs=2, accumulate=4, scale_loss=True))
    assert result.status == "info" and not result.details["signals"]
    assert result.details["loss_weight"] == pytest.approx(1.0) and "averaged" in result.findings[0].summary


def test_a_healthy_loop_raises_nothing(tmp_path, data):
    result = accumulation.check(causes_loop(tmp_path / "run", *data, epochs=2))
    assert result.status == "info" and not result.details["signals"]
    assert result.details["passes_per_step"] == {"1": 10} and result.details["grad_not_cleared"] == 0
