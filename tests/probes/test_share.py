from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from dataaudit.attribution import Attribution
from dataaudit.probes import share


def _table(levels: dict[str, list[float]]) -> pd.DataFrame:
    kinds = {"control": "control", "relabel_flagged": "data", "lr_restart": "optimizer", "both": "both"}
    rows = [{"arm": arm, "seed": s, "level": v, "kind": kinds[arm]} for arm, vs in levels.items()
            for s, v in enumerate(vs)]
    return share.reductions(pd.DataFrame(rows))


def test_shapley_splits_what_both_remove():
    # data alone removes 0.6, the optimizer alone 0.2, both 0.8: additive, so 0.75 of it is the data's
    assert share.shapley(0.6, 0.2, 0.8, first_loss=2.0)[0] == pytest.approx(0.75)
    # an interaction is split evenly: each alone removes 0.1, both 0.8
    assert share.shapley(0.1, 0.1, 0.8, first_loss=2.0)[0] == pytest.approx(0.5)


def test_shapley_counts_a_harmful_arm_as_no_fix_and_a_negligible_gap_as_nothing():
    assert share.shapley(0.5, -0.3, 0.4, first_loss=2.0)[0] == pytest.approx(1.0)
    assert share.shapley(0.05, 0.0, 0.05, first_loss=2.0)[0] == 0.0  # under 5% of the first epoch's loss


def test_measure_gives_the_interval_over_seeds_and_says_when_it_is_inconclusive():
    table = _table({"control": [1.0, 1.1], "relabel_flagged": [0.4, 0.4], "lr_restart": [0.9, 1.0],
                    "both": [0.3, 0.3]})
    m = share.measure(table, data_arm="relabel_flagged", opt_arm="lr_restart", first_loss=2.0, control_level=1.05)
    assert m["interval"][0] <= m["share"] <= m["interval"][1] and m["interval"][0] < m["interval"][1]
    assert m["conclusive"] and share.verdict(m) == "data"
    flat = _table({"control": [1.0], "relabel_flagged": [0.99], "lr_restart": [1.0], "both": [0.99]})
    m = share.measure(flat, data_arm="relabel_flagged", opt_arm="lr_restart", first_loss=2.0, control_level=1.0)
    assert not m["conclusive"] and share.verdict(m) == "inconclusive"
    converged = share.measure(flat, data_arm="relabel_flagged", opt_arm="lr_restart", first_loss=20.0,
                              control_level=0.5)
    assert converged["conclusive"] and share.verdict(converged) == "none"


def test_best_is_the_arm_that_removes_most():
    table = _table({"control": [1.0], "relabel_flagged": [0.5], "lr_restart": [1.0], "both": [0.5]})
    dropped = table.iloc[[0]].assign(arm="drop_flagged", reduction=0.9)
    assert share.best(pd.concat([table, dropped]), "data") == "drop_flagged"
    assert share.best(table, "optimizer") == "lr_restart" and share.best(table.iloc[:0], "data") is None


def test_apply_rests_the_verdict_on_a_conclusive_probe_and_keeps_the_passive_estimate():
    passive = Attribution("mixed", 0.5, (0.4, 0.6), {"method": "records"})
    probe = {"share": {"share": 0.9, "interval": [0.85, 0.95], "negligible": False, "conclusive": True}}
    out = share.apply(passive, probe)
    assert (out.verdict, out.data_share) == ("data", 0.9)
    assert out.details["passive"]["data_share"] == 0.5 and out.details["rests_on"] == "probe"
    unsure = dict(probe, share={**probe["share"], "conclusive": False})
    kept = share.apply(passive, unsure)
    assert dataclasses.replace(kept, details=passive.details) == passive
    assert kept.details["rests_on"].startswith("passive")
    assert share.apply(passive, None) is passive
