"""The field zoo: every realistic loop of fixtures/field, trained and audited, against its truth.

The default suite trains each loop's quick version; `nox -s field` (DATAAUDIT_FIELD=full) the full ones.
New modules in fixtures/field with a LOOPS list are picked up without touching this file.
"""
from __future__ import annotations

import os
import warnings

import pytest

import dataaudit
from fixtures.field import FieldTruth, discover, score

FULL = os.environ.get("DATAAUDIT_FIELD", "quick") == "full"
LOOPS = discover()
# Known misses, with the reason: kept visible as xfail, not dropped.
KNOWN: dict[str, str] = {}


def test_the_field_zoo_has_loops():
    assert len(LOOPS) >= 5
    assert all(isinstance(name, str) and loop.train for name, loop in LOOPS.items())


@pytest.mark.parametrize("name", sorted(LOOPS))
def test_field_loop(name, tmp_path, request):
    if name in KNOWN:
        request.applymarker(pytest.mark.xfail(reason=KNOWN[name], strict=False))
    run_dir = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # training-loop warnings (autocast, sklearn) are not what is judged
        truth = LOOPS[name].train(run_dir, quick=not FULL)
        assert isinstance(truth, FieldTruth)
        audit = dataaudit.analyze(run_dir)
    rows = score(truth, audit.to_dict())
    failed = [f"{criterion}: {detail}" for criterion, ok, detail in rows if not ok]
    assert rows and not failed, f"{name}: " + "; ".join(failed)
