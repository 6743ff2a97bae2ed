from __future__ import annotations

import pytest

from dataaudit.checks import units
from dataaudit.checks.units import _compute_units
from fixtures.causes import causes_loop
from fixtures.training import blobs


@pytest.fixture(scope="module")
def data():
    return blobs(n=320, d=8, k=3)


def test_dead_relus_from_a_large_negative_bias(tmp_path, data):
    run = causes_loop(tmp_path / "run", *data, epochs=3, widths=(64, 64), bias_init=-20.0, activations=2)
    result = units.check(run)
    assert result.status == "warning" and result.details["signals"] == ["dead_units"]
    assert {row["layer"] for row in result.findings[0].evidence["layers"]} == {"1", "3"}


def test_saturated_sigmoids(tmp_path, data):
    run = causes_loop(tmp_path / "run", *data, epochs=3, activation="sigmoid", bias_init=30.0, activations=2)
    result = units.check(run)
    assert result.status == "warning" and result.details["signals"] == ["saturated_units"]


def test_a_healthy_relu_mlp_raises_nothing(tmp_path, data):
    result = units.check(causes_loop(tmp_path / "run", *data, epochs=3, widths=(64, 64), activations=2))
    assert result.status == "info" and not result.details["signals"]
    assert all(row["share"] < 0.25 for row in result.details["layers"])


def test_a_quarter_dead_is_info_and_too_few_outputs_are_not_judged():
    def epoch(e, dead, outputs=640):
        return {"epoch": e, "every": 2, "layers": [{"layer": "1", "kind": "rectifier", "units": 64,
                                                    "outputs": outputs, "dead": dead}]}
    assert _compute_units([epoch(0, 0.3), epoch(1, 0.3)]).status == "info"
    assert _compute_units([epoch(0, 0.3), epoch(1, 0.3)]).findings[0].evidence["layers"][0]["share"] == 0.3
    assert not _compute_units([epoch(0, 0.9, outputs=16)]).details["layers"]


def test_no_probe_skips(tmp_path, data):
    assert units.check(causes_loop(tmp_path / "run", *data, epochs=1)).status == "skipped"
