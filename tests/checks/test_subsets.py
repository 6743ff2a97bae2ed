from __future__ import annotations

import json

import numpy as np

from dataaudit.checks import subsets
from dataaudit.checks.subsets import _compute_subsets
from fixtures.causes import blank_subset, causes_loop


def _table(curves: dict[int, np.ndarray], sizes: dict[int, int], rng) -> tuple[np.ndarray, ...]:
    """Rows (epoch, id, loss, label) for classes whose mean loss per epoch follows `curves`."""
    epochs, ids, loss, labels = [], [], [], []
    start = 0
    for c, curve in curves.items():
        n = sizes[c]
        base = rng.gamma(4.0, 0.25, size=n)            # per-sample spread around the class curve, mean 1
        for e, level in enumerate(curve):
            epochs.append(np.full(n, e))
            ids.append(np.arange(start, start + n))
            loss.append(level * base)
            labels.append(np.full(n, c))
        start += n
    return tuple(np.concatenate(a) for a in (epochs, ids, loss, labels))


def test_a_flat_hard_class_under_a_falling_mean_is_flagged(rng):
    e = np.arange(15)
    falling = 1.2 * np.exp(-e / 6) + 0.02
    flat = np.r_[np.linspace(1.6, 1.3, 4), np.full(11, 1.3)]
    epochs, ids, loss, labels = _table({0: falling, 1: falling * 0.8, 2: falling * 1.1, 3: flat},
                                       {0: 300, 1: 300, 2: 300, 3: 60}, rng)
    result = _compute_subsets(epochs, ids, loss, labels)
    assert result.status == "warning"
    flagged = [(f["kind"], f["group"]) for f in result.details["flat"]]
    assert ("class", 3) in flagged and not any(k == "class" and g != 3 for k, g in flagged)
    assert "class 3 (60 samples)" in result.findings[0].summary
    json.dumps(result.details)


def test_a_converged_easy_class_is_flat_but_not_flagged(rng):
    e = np.arange(15)
    falling = 1.2 * np.exp(-e / 6) + 0.05
    done = np.r_[np.linspace(1.0, 0.001, 4), np.full(11, 0.001)]   # flat, at zero
    result = _compute_subsets(*_table({0: falling, 1: falling, 2: done}, {0: 300, 1: 300, 2: 300}, rng))
    assert result.status == "info" and not result.details["flat"]


def test_a_flat_mean_is_not_judged(rng):
    flat = np.r_[np.linspace(2.0, 1.0, 5), np.full(10, 1.0)]
    result = _compute_subsets(*_table({0: flat, 1: flat * 2}, {0: 300, 1: 300}, rng))
    assert not result.details["judged"] and result.status == "info"


def test_a_blank_input_subset_is_found_in_a_real_loop(tmp_path):
    X, y = blank_subset()
    run = causes_loop(tmp_path / "run", X, y, epochs=15, lr=0.003, widths=(16,))
    result = subsets.check(run)
    assert result.status == "warning"
    flat = result.details["flat"]
    assert [f["kind"] for f in flat] == ["difficulty"]
    # the flagged bin is mostly the blank samples (ids 800 on)
    assert 150 <= flat[0]["size"] <= 250
    assert len(result.details["difficulty"]["loss"]) == 5 and len(result.details["class"]["loss"]) == 4


def test_a_healthy_loop_raises_nothing(tmp_path):
    X, y = blank_subset(blank=False)
    result = subsets.check(causes_loop(tmp_path / "run", X, y, epochs=15, lr=0.003, widths=(16,)))
    assert result.status == "info" and result.details["judged"] and not result.details["flat"]


def test_few_epochs_skip(tmp_path):
    X, y = blank_subset(n=200, blank=False)
    assert subsets.check(causes_loop(tmp_path / "run", X, y, epochs=3)).status == "skipped"


def test_a_large_flat_class_that_pulls_the_mean_up_to_itself_is_still_flagged(rng):
    # 40% of the samples flat at 1.0: the mean ends at 0.54, more than half of it, but the rest ends at 0.23
    e = np.arange(15)
    falling = 1.2 * np.exp(-e / 8) + 0.02
    flat = np.r_[np.linspace(1.4, 1.0, 3), np.full(12, 1.0)]
    result = _compute_subsets(*_table({0: falling, 1: falling, 2: flat}, {0: 300, 1: 300, 2: 400}, rng))
    assert [(f["kind"], f["group"]) for f in result.details["flat"]][:1] == [("class", 2)]
    level = result.details["flat"][0]["level"]
    assert result.findings[0].evidence["vs_rest"] >= 2 > level / result.details["mean_loss"][-1]


def test_a_flat_class_at_a_negligible_loss_is_not_flagged(rng):
    """Every class fit: the last one rests at 4x the others, but at a thousandth of the first epoch's loss
    (a converged run drawn by a rebalancing sampler): nothing there is worth learning."""
    e = np.arange(30)
    falling = 0.3 * np.exp(-e / 3) + 1e-4 * np.exp(-e / 20)
    flat = np.r_[0.3 * np.exp(-np.arange(20) / 3) + 0.0012, np.full(10, 0.0012)]
    result = _compute_subsets(*_table({0: falling, 1: falling, 2: flat}, {0: 300, 1: 300, 2: 300}, rng))
    assert not result.details["flat"] and result.status in ("ok", "info")
