from __future__ import annotations

import json

import numpy as np
import pytest

import dataaudit
from fixtures.training import blobs, train


def test_analyze_writes_json_and_html(tmp_path, run_dir):
    X, y = blobs(n=50)
    train(run_dir, X, y, epochs=2, loader_kwargs={"shuffle": False})
    audit = dataaudit.analyze(run_dir)
    data = json.loads(audit.write_json(tmp_path / "out" / "audit.json").read_text())
    assert data["verdict"] in ("data", "optimizer", "mixed", "none")
    assert 0 <= data["data_share"] <= 1
    assert data["checks"]["coverage"]["order_repeated"] is True
    coverage = [f for f in data["findings"] if f["check"] == "coverage"]
    assert "same order" in coverage[0]["summary"] and coverage[0]["remedy"]
    html = audit.write_html(tmp_path / "out" / "audit.html").read_text()
    assert "same order" in html and "<script src" not in html  # only the inline flagged-table script


def test_unknown_check_lists_the_valid_ones(run_dir):
    dataaudit.Tracker(run_dir).close()
    with pytest.raises(ValueError, match=r"unknown check 'nope'; valid checks are \["):
        dataaudit.analyze(run_dir, checks=["nope"])


def test_repr_is_short_and_the_notebook_shows_card_findings_and_a_plot(rng):
    import re

    from dataaudit.run import Run

    n, k = 2_000, 5
    truth = rng.integers(0, k, n)
    given = truth.copy()
    given[:300] = (truth[:300] + 1) % k
    probs = np.full((n, k), 0.02)
    probs[np.arange(n), truth] = 0.92
    audit = dataaudit.analyze(Run.from_arrays(given, probs))
    text = repr(audit)
    assert len(text) < 200 and "\n" not in text
    assert audit.verdict in text and f"{len(audit.label_issues):,} label issues" in text and "critical" in text
    html = audit._repr_html_()
    assert audit.verdict in html and "<script" not in html and "<html" not in html
    from markupsafe import escape
    assert all(str(escape(f.summary)) in html for f in audit.findings[:3])
    assert html.count("<svg") == 1
    assert re.search(r'class="axis-label x"', html) and re.search(r'class="axis-label y"', html)
