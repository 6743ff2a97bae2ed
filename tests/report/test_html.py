"""tests for dataaudit/report: the HTML page renders, stays self-contained, small and escaped."""
from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import dataaudit
from dataaudit.checks import CheckResult, Finding
from dataaudit.report import render_html
from dataaudit.report.tables import MAX_FLAGGED_ROWS
from dataaudit.run import Run

EVIL = "<script>alert(1)</script>"
CHROMIUM = "/usr/bin/chromium"


def _noisy_probs(rng: np.random.Generator, n: int, k: int, noise: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Labels (n,) with a `noise` share flipped, and probabilities (n, k) that mostly know the true class."""
    truth = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), truth] += 3.0
    probs = np.exp(logits)
    probs /= probs.sum(1, keepdims=True)
    labels = truth.copy()
    flip = rng.random(n) < noise
    labels[flip] = (truth[flip] + rng.integers(1, k, flip.sum())) % k
    return labels, probs


def assert_self_contained(html: str) -> None:
    # the only scripts: the flagged table's data and its inline code, neither loading anything
    scripts = re.findall(r"<script[^>]*>", html, re.I)
    assert all(s in ('<script type="application/json" id="flagged-data">', "<script>") for s in scripts), scripts
    assert len(scripts) <= 2
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert "@import" not in html and "url(http" not in html
    assert "http://" not in html.replace("http://www.w3.org/", "") and "https://" not in html


@pytest.fixture(scope="module")
def trained_audit(tmp_path_factory):
    """A demo-like run: a small MLP on blobs with 20% of the labels flipped, a val split, a watched optimizer."""
    from fixtures.training import blobs, train_loop

    X, y = blobs(n=480, d=8, k=4, seed=1)
    rng = np.random.default_rng(1)
    noisy = y.copy()
    flip = rng.random(len(y)) < 0.2
    noisy[flip] = (y[flip] + 1) % 4
    Xv, yv = blobs(n=120, d=8, k=4, seed=2)
    run = train_loop(tmp_path_factory.mktemp("trained") / "run", X, noisy, epochs=12, val=(Xv, yv), lr=0.05)
    return dataaudit.analyze(run)


@pytest.fixture(scope="module")
def scan_audit():
    labels, probs = _noisy_probs(np.random.default_rng(0), 2_000, 5)
    return dataaudit.analyze(Run.from_arrays(labels, probs))


def test_trained_run_reads_top_down(trained_audit, tmp_path):
    html = trained_audit.write_html(tmp_path / "audit.html").read_text()
    assert_self_contained(html)
    sections = ["<h1>", "Training loss per epoch", "<h2>Findings", "Flagged samples", "Loss per class",
                "Coverage per epoch", "Drift per epoch", "Optimizer telemetry"]
    positions = [html.index(s) for s in sections]
    assert positions == sorted(positions)
    assert trained_audit.attribution["method"] in html
    assert "D = labels " in html and "R = L - D = " in html  # the method as a formula, numbers plugged in
    # loss curve, classes, coverage, drift, optimizer
    assert html.count("<svg") == 5
    assert "clean (unflagged)" in html and "val" in html
    for finding in trained_audit.findings:
        assert finding.severity in html
    if trained_audit.label_issues:
        first = trained_audit.label_issues[0]
        assert re.search(rf"<td>1</td><td>{first}</td>", html)
        rows = re.findall(r"<tr><td>\d+</td><td>\d+</td>", html.split("Flagged samples")[1].split("<h2>")[0])
        assert len(rows) == min(50, len(trained_audit.label_issues))
    assert len(html.encode()) < 1_000_000


def test_headline_states_verdict_and_share(trained_audit):
    from dataaudit.report.html import headline

    text = headline(trained_audit)
    assert text.endswith(".") and f"{100 * trained_audit.data_share:.0f}%" in text


def test_empty_run_renders(run_dir, tmp_path):
    dataaudit.Tracker(run_dir).close()
    audit = dataaudit.analyze(run_dir)
    html = audit.write_html(tmp_path / "empty.html").read_text()
    assert_self_contained(html)
    assert "Nothing to judge" in html and "No training samples were recorded" in html


def test_from_arrays_run_renders_without_steps(scan_audit, tmp_path):
    html = scan_audit.write_html(tmp_path / "scan.html").read_text()
    assert_self_contained(html)
    assert "Loss per sample, clean and flagged" in html  # one epoch: a histogram, not a curve
    assert "Optimizer telemetry" in html and "tracker.watch" in html
    assert "<svg" in html


def test_labels_check_missing_or_skipped(scan_audit, tmp_path):
    without = dataclasses.replace(scan_audit, results={k: v for k, v in scan_audit.results.items() if k != "labels"},
                                  label_issues=())
    assert "the labels check was not run" in render_html(without)
    skipped = dict(scan_audit.results, labels=CheckResult.skipped("labels", "no probabilities"))
    html = render_html(dataclasses.replace(scan_audit, results=skipped, label_issues=()))
    assert "No label issues: no probabilities" in html


def test_only_some_checks(tmp_path):
    labels, probs = _noisy_probs(np.random.default_rng(3), 300, 3)
    audit = dataaudit.analyze(Run.from_arrays(labels, probs), checks=["coverage"])
    assert_self_contained(render_html(audit))


def test_data_strings_are_escaped(scan_audit):
    labels = scan_audit.results["labels"]
    per_sample = labels.per_sample.copy()
    per_sample["label"] = per_sample["label"].astype(object)
    first = scan_audit.label_issues[0]
    per_sample.loc[per_sample["sample_id"] == first, "label"] = EVIL
    evil_labels = dataclasses.replace(labels, per_sample=per_sample, findings=labels.findings + (
        Finding("labels", "warning", f"class {EVIL} looks wrong", remedy=EVIL, evidence={EVIL: EVIL}),))
    optimizer = CheckResult.from_findings("optimizer", [Finding(
        "optimizer", "critical", "frozen parameters", evidence={"frozen_params": [EVIL, "layer.<b>0</b>"]})],
        score=0.5, details={"signals": ["frozen"], "frozen_params": [EVIL]})
    results = dict(scan_audit.results, labels=evil_labels, optimizer=optimizer)
    attribution = dict(scan_audit.attribution, method=EVIL, optimizer_signals=[EVIL])
    audit = dataclasses.replace(scan_audit, results=results, attribution=attribution,
                                run_summary=dict(scan_audit.run_summary, path=EVIL))
    html = render_html(audit)
    assert EVIL not in html and "<b>0</b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert_self_contained(html)


def test_large_run_is_small_and_fast():
    # 30% noise: more flagged samples than the page's table holds, so the page is at its largest
    labels, probs = _noisy_probs(np.random.default_rng(0), 100_000, 10, noise=0.3)
    audit = dataaudit.analyze(Run.from_arrays(labels, probs))
    assert len(audit.label_issues) > MAX_FLAGGED_ROWS
    start = time.perf_counter()
    html = render_html(audit)
    elapsed = time.perf_counter() - start
    assert len(html.encode()) < 1_000_000
    assert elapsed < 5.0, f"rendering 100,000 samples took {elapsed:.1f}s"
    assert_self_contained(html)


def test_importing_dataaudit_does_not_import_matplotlib():
    code = "import dataaudit, dataaudit.report, sys; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_figures_downsample_long_series():
    from dataaudit.report.figures import MAX_POINTS, downsample

    table = pd.DataFrame({"lr": np.linspace(1, 0, 10_000)}, index=np.arange(10_000) / 100)
    small = downsample(table)
    assert len(small) == MAX_POINTS
    assert small.index.is_monotonic_increasing and small["lr"].iloc[0] > small["lr"].iloc[-1]


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed")
def test_chromium_renders_without_console_errors(trained_audit, tmp_path):
    page = trained_audit.write_html(tmp_path / "audit.html")
    png = tmp_path / "shot.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           f"--screenshot={png}", "--window-size=1200,3000", "--enable-logging=stderr", "--v=0", page.as_uri()]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert png.exists() and png.stat().st_size > 20_000, out.stderr[-2000:]
    console = [line for line in out.stderr.splitlines()
               if "Uncaught" in line or ("CONSOLE" in line and "error" in line.lower())]
    assert not console, console
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)


_LAYOUT_CHECK = """<script>
window.addEventListener("load", function () {
  var root = document.documentElement, out = {width: window.innerWidth, scrollWidth: root.scrollWidth, figures: []};
  out.wide = Array.from(document.body.querySelectorAll("*")).filter(function (e) {
    var r = e.getBoundingClientRect(); return r.width > 0 && r.right > window.innerWidth + 1 && !e.closest(".scroll");
  }).slice(0, 5).map(function (e) { return e.tagName + "." + e.className; });
  document.querySelectorAll("svg.plot").forEach(function (svg) {
    var text = function (sel) { return Array.from(svg.querySelectorAll(sel)).map(function (g) {
      return g.textContent.trim(); }).filter(Boolean); };
    out.figures.push({x: text(".axis-label.x"), y: text(".axis-label.y"),
                      panels: svg.querySelectorAll("[id^=axes_]").length});
  });
  out.flaggedRows = document.querySelectorAll("#flagged-table tr").length;
  var pre = document.createElement("pre"); pre.id = "layout-check"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _chromium(page: Path, width: int, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / f'profile{width}'}", f"--window-size={width},6500", *args, page.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed")
@pytest.mark.parametrize("width", [1280, 760])
def test_chromium_layout_fits_and_every_figure_has_labelled_axes(trained_audit, tmp_path, width):
    """Headless Chromium at a desktop and a narrow width: nothing overflows the page sideways (wide tables
    scroll in their own box), every plot has x and y axis labels, the flagged table's script ran."""
    import json as _json
    import os

    html = render_html(trained_audit)
    page = tmp_path / "audit.html"
    page.write_text(html.replace("</body>", _LAYOUT_CHECK + "</body>"))
    out = _chromium(page, width, tmp_path, "--dump-dom", "--virtual-time-budget=5000")
    found = re.search(r'<pre id="layout-check">(.*?)</pre>', out.stdout, re.S)
    assert found, out.stderr[-2000:]
    check = _json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<")
                        .replace("&gt;", ">"))
    assert check["scrollWidth"] <= check["width"], check
    assert check["wide"] == [], check
    assert len(check["figures"]) == html.count('<svg') == 5
    for figure in check["figures"]:
        assert figure["x"] and figure["y"], figure
        assert len(figure["x"]) == len(figure["y"]) == figure["panels"], figure  # each panel labelled
    assert check["flaggedRows"] == min(100, len(trained_audit.label_issues)) + 1  # header + first page

    # the screenshot a person looks at (kept where DATAAUDIT_SCREENSHOTS points, if set)
    shots = Path(os.environ.get("DATAAUDIT_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    png = shots / f"audit-{width}.png"
    plain = tmp_path / "plain.html"
    plain.write_text(html)
    done = _chromium(plain, width, tmp_path, f"--screenshot={png}")
    assert png.exists() and png.stat().st_size > 20_000, done.stderr[-2000:]
    shutil.rmtree(tmp_path / f"profile{width}", ignore_errors=True)
