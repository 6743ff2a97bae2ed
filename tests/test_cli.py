from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from dataaudit.cli import app

runner = CliRunner()


def _noisy(tmp_path, rng, *, n=400, k=4, rate=0.1, names=None):
    """labels.npy (or data.npz with named classes) and confident out-of-sample probabilities, `rate` flipped."""
    truth = rng.integers(0, k, n)
    given = truth.copy()
    flipped = rng.choice(n, int(rate * n), replace=False)
    given[flipped] = (truth[flipped] + rng.integers(1, k, len(flipped))) % k
    probs = np.full((n, k), 0.1 / (k - 1))
    probs[np.arange(n), truth] = 0.9
    probs = 0.8 * probs + 0.2 * rng.dirichlet(np.ones(k), n)
    data = tmp_path / "data"
    data.mkdir()
    if names is None:
        np.save(data / "labels.npy", given)
    else:
        np.savez(data / "data.npz", X=rng.normal(size=(n, 3)), y=np.asarray(names)[given])
    np.save(tmp_path / "pp.npy", probs)
    return data, tmp_path / "pp.npy", flipped


def _scan(*args):
    return runner.invoke(app, ["scan", *map(str, args)])


def test_cli_module_imports_nothing_heavy():
    code = "import sys, dataaudit.cli; print([m for m in ('torch', 'sklearn', 'cleanlab') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_scan_pred_probs_writes_reports_and_flagged_csv(tmp_path, rng):
    names = ["cat", "dog", "eel", "fox"]
    data, pp, flipped = _noisy(tmp_path, rng, names=names)
    out = tmp_path / "out"
    result = _scan(data, "--pred-probs", pp, "--out", out)
    assert result.exit_code == 1, result.output  # 10% mislabeled: a critical finding
    assert {p.name for p in out.iterdir()} >= {"audit.html", "audit.json", "flagged.csv"}
    audit = json.loads((out / "audit.json").read_text())
    flagged = pd.read_csv(out / "flagged.csv")
    assert list(flagged.columns[:4]) == ["sample_id", "given_label", "suggested_label", "label_quality"]
    assert flagged["sample_id"].tolist() == audit["label_issues"]
    assert set(flagged["given_class"]) <= set(names) and set(flagged["suggested_class"]) <= set(names)
    assert np.isin(flagged["sample_id"][:30], flipped).mean() > 0.9
    assert audit["run"]["scan"]["class_names"] == names
    assert set(audit["checks"]) == {"labels", "class_imbalance", "feature_scale"}


@pytest.mark.parametrize("rate, fail_on, status", [(0.0, "critical", 0), (0.1, "critical", 1),
                                                   (0.03, "critical", 0), (0.03, "warning", 1)])
def test_exit_status_follows_fail_on(tmp_path, rng, rate, fail_on, status):
    data, pp, _ = _noisy(tmp_path, rng, rate=rate)
    result = _scan(data, "--pred-probs", pp, "--out", tmp_path / "out", "--fail-on", fail_on)
    assert result.exit_code == status, result.output


def test_rounding_is_renormalised_with_a_warning(tmp_path, rng):
    data, pp, _ = _noisy(tmp_path, rng)
    np.save(pp, np.load(pp) * 1.0002)
    result = _scan(data, "--pred-probs", pp, "--out", tmp_path / "out")
    assert result.exit_code == 1
    assert "warning:" in result.stderr and "pp.npy" in result.stderr and "renormalised" in result.stderr


@pytest.mark.parametrize("case", ["logits", "shape"])
def test_bad_pred_probs_exit_2_with_one_line_and_no_traceback(tmp_path, rng, case):
    data, pp, _ = _noisy(tmp_path, rng)
    p = np.load(pp)
    np.save(pp, np.log(p) if case == "logits" else p[:-1])
    done = subprocess.run([sys.executable, "-c", "from dataaudit.cli import main; main()", "scan", str(data),
                           "--pred-probs", str(pp)], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(pp) in lines[0]


@pytest.mark.parametrize("args, message", [
    ([], "exactly one of --model CKPT or --pred-probs"),
    (["--pred-probs", "PP", "--model", "PP"], "exactly one of"),
    (["--pred-probs", "MISSING"], "no such file"),
    (["--pred-probs", "PP", "--device", "tpu"], "--device"),
])
def test_bad_options_exit_2(tmp_path, rng, args, message):
    data, pp, _ = _noisy(tmp_path, rng)
    args = [str(pp) if a == "PP" else str(tmp_path / "missing.npy") if a == "MISSING" else a for a in args]
    result = _scan(data, *args, "--out", tmp_path / "out")
    assert result.exit_code == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_pickled_module_is_refused_without_trust_pickle(tmp_path, rng):
    import torch
    from torch import nn

    X = rng.normal(size=(50, 4)).astype(np.float32)
    data = tmp_path / "data"
    data.mkdir()
    np.savez(data / "data.npz", X=X, y=rng.integers(0, 2, 50))
    torch.save(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), tmp_path / "whole.pt")
    result = _scan(data, "--model", tmp_path / "whole.pt", "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert "whole.pt" in result.stderr and "--trust-pickle" in result.stderr
    result = _scan(data, "--model", tmp_path / "whole.pt", "--trust-pickle", "--out", tmp_path / "out")
    assert result.exit_code in (0, 1) and (tmp_path / "out" / "flagged.csv").is_file()


def test_digits_with_planted_noise_and_a_torchscript_mlp(tmp_path):
    """20% symmetric noise on digits; a small MLP trained on it, scripted; scan finds the noise (F1 >= 0.85)."""
    import torch
    from sklearn.datasets import load_digits
    from torch import nn

    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)
    rng = np.random.default_rng(0)
    flipped = rng.choice(len(y), int(0.2 * len(y)), replace=False)
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + rng.integers(1, 10, len(flipped))) % 10
    data = tmp_path / "digits"
    data.mkdir()
    np.savez(data / "data.npz", X=X, y=noisy)
    torch.manual_seed(0)
    torch.set_num_threads(1)  # a tiny MLP: threads only spin against each other
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(noisy)
    for _ in range(5):
        for batch in torch.randperm(len(yt)).split(64):
            loss = nn.functional.cross_entropy(model(Xt[batch]), yt[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    torch.jit.save(torch.jit.script(model.eval()), tmp_path / "mlp.pt")

    out = tmp_path / "out"
    result = _scan(data, "--model", tmp_path / "mlp.pt", "--out", out)
    assert result.exit_code == 1, result.output
    found = set(json.loads((out / "audit.json").read_text())["label_issues"])
    f1 = 2 * len(found & set(flipped.tolist())) / (len(found) + len(flipped))
    assert f1 >= 0.85
    assert "128-dimensional embeddings" in result.stderr  # the penultimate layer, not the logits


def test_image_folder_with_a_corrupt_image(tmp_path, rng):
    import torch
    from PIL import Image
    from torch import nn

    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)).save(tmp_path / "imgs" / cls / f"{i}.png")
    (tmp_path / "imgs" / "b" / "bad.png").write_bytes(b"garbage")
    model = nn.Sequential(nn.Flatten(), nn.Linear(108, 8), nn.ReLU(), nn.Linear(8, 2))
    torch.jit.save(torch.jit.script(model), tmp_path / "cnn.pt")
    out = tmp_path / "out"
    result = _scan(tmp_path / "imgs", "--model", tmp_path / "cnn.pt", "--out", out)
    assert result.exit_code == 0, result.output
    assert "b/bad.png" in result.stderr
    assert json.loads((out / "audit.json").read_text())["run"]["scan"]["samples"] == 24


def test_scan_with_a_tracked_run_adds_the_scan_labels(tmp_path, rng):
    from fixtures.training import blobs, train_loop

    X, y = blobs(n=300, d=6, k=3, seed=1)
    train_loop(tmp_path / "run", X, y, epochs=4)
    data, pp, _ = _noisy(tmp_path, rng, n=300, k=3)
    out = tmp_path / "out"
    result = _scan(data, "--pred-probs", pp, "--run", tmp_path / "run", "--out", out)
    assert result.exit_code in (0, 1), result.output
    audit = json.loads((out / "audit.json").read_text())
    assert {"coverage", "plateau", "optimizer", "labels", "scan_labels"} <= set(audit["checks"])
    assert audit["run"]["scan"]["labels_from"] == "run"
    assert pd.read_csv(out / "flagged.csv")["sample_id"].tolist()[:5] == \
        [f["ids"] for f in audit["findings"] if f["check"] == "scan_labels"][0][:5]


def test_report_on_a_tracked_run(tmp_path):
    from dataaudit.demo import digits_with_noise
    from fixtures.training import train

    X, y, flipped = digits_with_noise(0.2, seed=1)
    train(tmp_path / "run", X[:600], y[:600], epochs=12, batch_size=64, lr=1e-3, hidden=64, depth=2)
    result = CliRunner().invoke(app, ["report", str(tmp_path / "run"), "--out", str(tmp_path / "out"),
                                      "--fail-on", "critical"])
    assert result.exit_code in (0, 1), result.output
    audit = json.loads((tmp_path / "out" / "audit.json").read_text())
    flagged = pd.read_csv(tmp_path / "out" / "flagged.csv")
    assert flagged["sample_id"].tolist() == audit["label_issues"]
    assert "file" not in flagged.columns          # tracked runs have no sample files
    assert (tmp_path / "out" / "audit.html").stat().st_size > 0


def test_report_on_a_regression_run_lists_the_suspected_targets(tmp_path):
    from fixtures.tasks import regression_data, train_regression

    X, y, corrupted = regression_data(300, outliers=0.15, seed=2)
    train_regression(tmp_path / "run", X, y, epochs=10)
    result = CliRunner().invoke(app, ["report", str(tmp_path / "run"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "suspected target errors" in result.output, result.output
    flagged = pd.read_csv(tmp_path / "out" / "flagged.csv")
    assert list(flagged.columns) == ["sample_id", "loss", "residual"]
    assert set(flagged["sample_id"]) <= set(corrupted.tolist()) and len(flagged) >= 0.8 * len(corrupted)
    html = (tmp_path / "out" / "audit.html").read_text()
    assert "samples flagged for their targets" in html and "regression" in html


def test_report_on_a_missing_run_exits_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "dataaudit.cli", "report", str(tmp_path / "nope")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "no such run directory" in result.stderr
    assert "Traceback" not in result.stderr


# ------------------------------------------------- every failure: one line on stderr and a status that says which


def _run_app(capsys, *args):
    """The program as the console script runs it: (exit status, stdout, stderr)."""
    with pytest.raises(SystemExit) as done:
        app([str(a) for a in args])
    out, err = capsys.readouterr()
    return done.value.code, out, err


def _one_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dataaudit: "), err
    assert "Traceback" not in err and "─" not in err and "╭" not in err
    return lines[0]


def test_a_damaged_run_exits_2_with_one_line(run_copy, capsys):
    part = sorted(run_copy.glob("records/*/epoch=1/*/*.parquet"))[0]
    part.write_bytes(part.read_bytes()[:100])
    status, _, err = _run_app(capsys, "report", run_copy, "--out", run_copy.parent / "out")
    assert status == 2
    assert part.name in _one_line(err) and "unreadable Parquet file" in err


def test_a_run_missing_a_file_exits_2_naming_it(run_copy, capsys):
    part = sorted(run_copy.glob("sketch/*/epoch=2/*/features.parquet"))[0]
    part.unlink()
    status, _, err = _run_app(capsys, "report", run_copy, "--out", run_copy.parent / "out")
    assert status == 2 and "damaged run" in _one_line(err) and "epoch=2/rank=0/features.parquet" in err


def test_out_naming_a_file_exits_2(built_run, tmp_path, capsys):
    (tmp_path / "taken").write_text("mine")
    status, _, err = _run_app(capsys, "report", built_run, "--out", tmp_path / "taken")
    assert status == 2 and "--out" in _one_line(err) and "is a file" in err
    assert (tmp_path / "taken").read_text() == "mine"


@pytest.mark.parametrize("args, expected", [
    (["scan", "DATA", "--pred-probs", "pp.npy", "--batch-size", "0"], "--batch-size"),
    (["report", "RUN", "--fail-on", "bogus"], "expected one of info, warning, critical, never; got 'bogus'"),
    (["report", "RUN", "--no-such-option"], "--no-such-option"),
    (["report"], "Missing argument"),
])
def test_usage_errors_are_one_line_exit_2(capsys, args, expected):
    status, _, err = _run_app(capsys, *args)
    assert status == 2 and expected in _one_line(err)


def test_an_internal_error_exits_3_with_one_line_and_a_hint(built_run, tmp_path, capsys, monkeypatch):
    import dataaudit

    def broken(*_a, **_k):
        raise KeyError("a bug")

    monkeypatch.setattr(dataaudit, "analyze", broken)
    monkeypatch.delenv("DATAAUDIT_DEBUG", raising=False)
    status, _, err = _run_app(capsys, "report", built_run, "--out", tmp_path / "out")
    assert status == 3 and "internal error: KeyError" in _one_line(err) and "DATAAUDIT_DEBUG=1" in err
    monkeypatch.setenv("DATAAUDIT_DEBUG", "1")
    with pytest.raises(KeyError):
        app(["report", str(built_run), "--out", str(tmp_path / "out")])


def test_the_program_exits_with_the_findings_status(built_run, tmp_path, capsys):
    status, out, _ = _run_app(capsys, "report", built_run, "--out", tmp_path / "out", "--fail-on", "info")
    findings = json.loads((tmp_path / "out" / "audit.json").read_text())["findings"]
    assert status == (1 if findings else 0) and "verdict:" in out


def _npz(tmp_path, rng, *, n=41, k=2, d=5, y=None):
    data = tmp_path / "data"
    data.mkdir()
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.integers(0, k, n) if y is None else y
    X[y == 1] += 2.0
    np.savez(data / "data.npz", X=X, y=y)
    return data


def _scripted(tmp_path, d=5, k=2):
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(d, 8), torch.nn.ReLU(), torch.nn.Linear(8, k)).eval()
    torch.jit.save(torch.jit.script(model), tmp_path / "m.pt")
    return model, tmp_path / "m.pt"


def test_non_finite_features_exit_2_naming_the_file(tmp_path, rng, capsys):
    data = _npz(tmp_path, rng)
    with np.load(data / "data.npz") as z:
        X, y = z["X"], z["y"]
    X[3, 1] = np.nan
    np.savez(data / "data.npz", X=X, y=y)
    np.save(tmp_path / "pp.npy", np.full((41, 2), 0.5))
    _, model = _scripted(tmp_path)
    for source in (["--pred-probs", tmp_path / "pp.npy"], ["--model", model]):
        status, _, err = _run_app(capsys, "scan", data, *source, "--out", tmp_path / "out")
        assert status == 2 and "data.npz (X): 1 of 41 samples hold NaN (first rows [3], columns [1])" in _one_line(err)


def test_a_one_class_dataset_with_a_model_exits_2(tmp_path, rng, capsys):
    data = _npz(tmp_path, rng, y=np.zeros(41, np.int64))
    _, model = _scripted(tmp_path)
    status, _, err = _run_app(capsys, "scan", data, "--model", model, "--out", tmp_path / "out")
    assert status == 2 and "every label is class [0]" in _one_line(err)


def test_a_program_exported_with_a_static_batch_is_batched_to_its_size(tmp_path, rng):
    import torch

    data = _npz(tmp_path, rng)  # 41 samples: the last batch is padded to 2
    model, _ = _scripted(tmp_path)
    torch.export.save(torch.export.export(model, (torch.zeros(2, 5),)), tmp_path / "static.pt2")
    result = _scan(data, "--model", tmp_path / "static.pt2", "--trust-pickle", "--batch-size", "16",
                   "--out", tmp_path / "out", "--fail-on", "critical")
    assert result.exit_code in (0, 1), result.output
    assert json.loads((tmp_path / "out" / "audit.json").read_text())["run"]["scan"]["samples"] == 41


def test_a_pickle_renamed_pt2_exits_2_with_one_line_and_runs_nothing(tmp_path, rng, capfd):
    import pickle

    data = _npz(tmp_path, rng)
    marker = tmp_path / "PWNED"
    (tmp_path / "evil.pt2").write_bytes(pickle.dumps(_Opener(str(marker)), protocol=2))
    capfd.readouterr()
    with pytest.raises(SystemExit) as done:
        app(["scan", str(data), "--model", str(tmp_path / "evil.pt2"), "--out", str(tmp_path / "out")])
    _, err = capfd.readouterr()
    assert done.value.code == 2 and "evil.pt2: holds a pickled object" in _one_line(err)
    assert not marker.exists()


class _Opener:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("case, expected", [
    ("no rows", "data.npz: holds no samples"),
    ("X one-dimensional", "X must be a numeric array of shape (n, features...); got shape (30,)"),
    ("out under a file", "taken is a file; expected a folder"),
])
def test_hostile_datasets_and_outputs_exit_2_with_one_line(tmp_path, capsys, case, expected):
    data = tmp_path / "data"
    data.mkdir()
    out = tmp_path / "out"
    if case == "no rows":
        np.savez(data / "data.npz", X=np.zeros((0, 3)), y=np.zeros(0, np.int64))
    elif case == "X one-dimensional":
        np.savez(data / "data.npz", X=np.zeros(30), y=np.arange(30) % 2)
    else:
        np.savez(data / "data.npz", X=np.zeros((30, 3)), y=np.arange(30) % 2)
        (tmp_path / "taken").write_text("mine")
        out = tmp_path / "taken" / "reports"
    np.save(tmp_path / "pp.npy", np.full((30, 2), 0.5))
    status, _, err = _run_app(capsys, "scan", data, "--pred-probs", tmp_path / "pp.npy", "--out", out)
    assert status == 2 and expected in _one_line(err)
