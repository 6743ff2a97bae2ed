"""tests for dataaudit/progress.py: the stderr progress line, and analyze's progress= switch."""
from __future__ import annotations

import io

import numpy as np

import dataaudit
from dataaudit.progress import Progress, wanted
from dataaudit.run import Run


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_when_not_a_terminal_unless_asked():
    pipe = io.StringIO()
    bar = Progress(3, "phase", stream=pipe)
    for name in "abc":
        bar.step(name)
    bar.done()
    assert pipe.getvalue() == ""
    assert wanted(None, _Terminal()) and not wanted(None, io.StringIO()) and wanted(True, io.StringIO())


def test_terminal_line_shows_steps_time_and_estimate(monkeypatch):
    clock = iter(np.arange(0.0, 100.0, 1.0))
    monkeypatch.setattr("dataaudit.progress.time.perf_counter", lambda: float(next(clock)))
    tty = _Terminal()
    bar = Progress(4, "analyze", stream=tty, unit="steps")
    for name in ("coverage", "labels", "drift", "plateau"):
        bar.step(name)
    bar.done("4 checks")
    text = tty.getvalue()
    assert "\r" in text and text.endswith("\n") and text.count("\n") == 1  # one line, rewritten in place
    assert "analyze [3/4 steps] drift" in text
    assert "left" in text  # after the first step: an estimate of the time left
    assert "analyze: 4 checks in" in text


def test_update_counts_samples_and_is_throttled():
    log = io.StringIO()
    bar = Progress(10_000, "forward passes", enabled=True, stream=log, unit="samples")
    for done in range(100, 10_001, 100):
        bar.update(done)
    lines = log.getvalue().splitlines()
    assert 1 <= len(lines) <= 3 and "[10000/10000 samples]" in lines[-1]  # the last step always shows


def test_analyze_progress_switch(capsys, rng):
    labels = rng.integers(0, 3, 300)
    probs = rng.dirichlet(np.ones(3), 300)
    dataaudit.analyze(Run.from_arrays(labels, probs), checks=["labels", "class_imbalance"])
    assert capsys.readouterr().err == ""
    dataaudit.analyze(Run.from_arrays(labels, probs), checks=["labels", "class_imbalance"], progress=True)
    err = capsys.readouterr().err
    assert "check labels" in err and "check class_imbalance" in err and "analyze: 2 checks in" in err


def test_a_long_step_keeps_ticking_and_stops_with_the_phase():
    import time

    tty = _Terminal()
    bar = Progress(2, "scan", stream=tty)
    bar.step("near-duplicates")
    time.sleep(2.3)  # a step with no progress of its own: the line still moves
    assert tty.getvalue().count("\r") >= 2
    bar.done()
    ticker = bar._ticker
    assert ticker is None or not ticker.is_alive() or (ticker.join(1.5) or not ticker.is_alive())
    after = tty.getvalue()
    time.sleep(1.2)
    assert tty.getvalue() == after  # nothing drawn once the phase is done
