from __future__ import annotations

import json

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
    assert "same order" in html and "<script" not in html


def test_unknown_check_lists_the_valid_ones(run_dir):
    dataaudit.Tracker(run_dir).close()
    with pytest.raises(ValueError, match=r"unknown check 'nope'; valid checks are \["):
        dataaudit.analyze(run_dir, checks=["nope"])
