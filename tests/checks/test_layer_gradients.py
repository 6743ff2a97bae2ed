from __future__ import annotations

import numpy as np
import pandas as pd

from dataaudit.checks import layer_gradients
from dataaudit.checks.layer_gradients import _compute_layer_gradients
from fixtures.causes import causes_loop
from fixtures.training import blobs


def _layers(grad_ratios: list[float], update_ratios: list[float] | None = None, steps: int = 5) -> pd.DataFrame:
    rows = []
    for s in range(steps):
        for i, g in enumerate(grad_ratios):
            u = 1e-3 if update_ratios is None else update_ratios[i]
            for name, w in ((f"{2 * i}.weight", 2.0), (f"{2 * i}.bias", 0.1)):
                rows.append({"epoch": 0, "step": s * 10, "param": name, "weight_norm": w, "grad_norm": g * w,
                             "update_norm": u * w})
    return pd.DataFrame(rows)


def test_ratios_rising_with_depth_by_1000x_are_vanishing():
    result = _compute_layer_gradients(_layers([1e-6, 1e-5, 1e-4, 1e-3]))
    assert result.status == "warning" and result.details["vanishing"]
    assert result.details["off_layers"] == ["0.weight", "2.weight"]   # 100x or more below the last layer
    assert "1e+03x below" in result.findings[0].summary


def test_ratios_falling_with_depth_are_exploding():
    result = _compute_layer_gradients(_layers([1.0, 0.1, 1e-2, 1e-3]))
    assert result.status == "warning" and result.details["exploding"]


def test_a_spread_without_a_trend_through_depth_is_not_flagged():
    # one small middle layer (an attention projection, a layer after a norm) is no vanishing
    result = _compute_layer_gradients(_layers([1e-3, 1e-6, 2e-3, 1e-3]))
    assert result.status == "info" and not result.details["vanishing"]


def test_adaptive_optimizer_with_balanced_updates_is_only_info():
    result = _compute_layer_gradients(_layers([1e-6, 1e-5, 1e-4, 1e-3], [1e-3, 2e-3, 1e-3, 3e-3]), adaptive=True)
    assert result.details["vanishing"] and result.status == "info"


def test_biases_and_embeddings_are_not_judged():
    layers = _layers([1e-6, 1e-5, 1e-4, 1e-3])
    params = [{"name": n, "shape": [4, 4] if n.endswith("weight") else [4], "module": "Linear"}
              for n in dict.fromkeys(layers["param"])]
    params[0]["module"] = "Embedding"
    result = _compute_layer_gradients(layers, params=params)
    assert [row["param"] for row in result.details["layers"]] == ["2.weight", "4.weight", "6.weight"]


def test_a_deep_sigmoid_mlp_vanishes(tmp_path):
    X, y = blobs(n=400, d=8, k=3)
    run = causes_loop(tmp_path / "run", X, y, epochs=2, widths=(32,) * 8, activation="sigmoid")
    result = layer_gradients.check(run)
    assert result.status == "warning" and result.details["vanishing"]
    assert result.details["off_layers"][0] == "0.weight"
    assert "normalisation" in result.findings[0].remedy


def test_a_healthy_relu_mlp_raises_nothing(tmp_path):
    X, y = blobs(n=400, d=8, k=3)
    run = causes_loop(tmp_path / "run", X, y, epochs=2, widths=(64, 64, 64))
    result = layer_gradients.check(run)
    assert result.status == "info" and not result.details["vanishing"] and not result.details["exploding"]
    assert len(result.details["layers"]) == 4
    assert np.isfinite([row["grad_to_weight"] for row in result.details["layers"]]).all()
