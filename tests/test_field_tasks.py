"""The field loops of fixtures/field/{tasks,text,sampling}.py, trained and scored against their truths.

The quick variants run in the default suite (a few seconds each); the full loops run under
`nox -s field` (DATAAUDIT_FIELD=full).
"""
from __future__ import annotations

import json
import os

import pytest

import dataaudit
from fixtures.field import discover, score

LOOPS = ["binary_one_logit_flat", "binary_one_logit_column", "regression_outliers", "regression_clean",
         "mixup_clean", "label_smoothing_clean", "text_dynamic_padding", "weighted_sampler", "drop_last_converged"]
# Known misses, with the reason (see the report to the lead): kept visible as xfail, not dropped.
KNOWN = {
    "regression_clean": "the plateau at the noise floor of a clean regression is blamed on the optimisation side "
                        "(no accuracy tells converged from stuck in regression)",
    "label_smoothing_clean": "the labels check's window on clean digits flags ~1% of hard samples (warning)",
}
FULL = os.environ.get("DATAAUDIT_FIELD") == "full"


def _audit(loop_name: str, tmp_path, quick: bool) -> list[tuple[str, bool, str]]:
    loop = discover()[loop_name]
    truth = loop.train(tmp_path / "run", quick=quick)
    dataaudit.analyze(tmp_path / "run").write_json(tmp_path / "audit.json")
    return score(truth, json.loads((tmp_path / "audit.json").read_text()))


@pytest.mark.parametrize("name", LOOPS)
def test_quick_field_loop(name, tmp_path, request):
    if name in KNOWN:
        request.applymarker(pytest.mark.xfail(reason=KNOWN[name], strict=False))
    rows = _audit(name, tmp_path, quick=True)
    failed = [r for r in rows if not r[1]]
    assert rows and not failed, failed


@pytest.mark.skipif(not FULL, reason="full field loops: nox -s field")
@pytest.mark.parametrize("name", LOOPS)
def test_full_field_loop(name, tmp_path, request):
    if name in KNOWN:
        request.applymarker(pytest.mark.xfail(reason=KNOWN[name], strict=False))
    rows = _audit(name, tmp_path, quick=False)
    failed = [r for r in rows if not r[1]]
    assert rows and not failed, failed


def test_every_loop_of_these_modules_is_tested():
    mine = {n for n, loop in discover().items() if loop.train.__module__.rsplit(".", 1)[-1] in
            ("tasks", "text", "sampling")}
    assert mine == set(LOOPS)
