from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dataaudit import load_run
from dataaudit.checks import drift
from dataaudit.run import Run, Split, coverage_table, moments_table
from dataaudit.track.sketch import hash_ids
from fixtures.training import blobs, train

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    return (X / 16.0).astype(np.float32), y.astype(np.int64)


def _standardized(loader) -> tuple[np.ndarray, np.ndarray]:
    X, y = loader(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    return X.astype(np.float32), y.astype(np.int64)


def _noise(std: float, start: int = 0):
    """An augmentation that adds fresh Gaussian noise to every batch from epoch `start` on."""
    return lambda epoch, x: x + std * torch.randn_like(x) if epoch >= start else x


def _run_in_memory(X, y, epochs, *, transform=None, relabel=None, draw=None, reservoir=512, seed=0) -> Run:
    """A Run as the tracker would capture it, without training: per epoch the drawn ids, their inputs
    after `transform(epoch, x, rng)`, labels after `relabel(epoch, ids, labels)`, fingerprints on one
    fixed direction, moments, and a reservoir chosen by id hash (32-dim projection above 32 features).

    X : (n, d) inputs; y : (n,) labels; draw(epoch, rng) -> ids drawn that epoch (default: a permutation).
    """
    rng = np.random.default_rng(seed)
    n, d = X.shape
    direction = rng.normal(size=d)
    projection = rng.normal(size=(d, 32)) / np.sqrt(32) if d > 32 else np.eye(d)
    rows, features, res, draws = [], {}, {}, {}
    for e in range(epochs):
        ids = draw(e, rng) if draw is not None else rng.permutation(n)
        x = X[ids] if transform is None else transform(e, X[ids], rng)
        labels = y[ids] if relabel is None else relabel(e, ids, y[ids])
        rows.append(pd.DataFrame({"epoch": e, "sample_id": ids, "loss": 1.0, "prob": 0.5, "margin": 0.0,
                                  "label": labels, "pred": labels, "fingerprint": (x @ direction).astype(np.float32)}))
        features[e] = moments_table(x)
        # the reservoir's rule: the smallest id hashes of the first draws
        first = np.unique(ids, return_index=True)[1]
        keep = first[np.argsort(hash_ids(ids[first]))[:reservoir]]
        res[e] = (ids[keep], (x[keep] @ projection).astype(np.float32))
        draws[e] = ids
    records = pd.concat(rows, ignore_index=True).astype({"epoch": "int32", "sample_id": "int64", "label": "int64"})
    split = Split("train", records, coverage_table(draws, {e: True for e in draws}, n), draws=draws,
                  features=features, reservoir=res, dataset_size=n, input_shape=(d,))
    return Run({"train": split}, pd.DataFrame(), pd.DataFrame(), {"num_classes": int(y.max()) + 1})


# --------------------------------------------------------- in-memory runs


def test_random_augmentation_then_a_new_normalisation_is_dated_by_the_distribution_test(digits):
    X, y = digits

    def pipeline(epoch, x, rng):
        x = x + rng.normal(0, 0.1, size=x.shape)    # random every epoch: fingerprints cannot date anything
        return 0.25 * x + 0.5 if epoch >= 9 else x

    result = drift.check(_run_in_memory(X, y, 14, transform=pipeline))
    assert result.details["first_drift_epoch"] == 9
    assert result.details["method"] == "ks" and result.details["pipeline"] == "random"
    assert result.details["mmd_p_value"] <= 0.01
    assert result.status in ("warning", "critical")
    assert "epoch 9" in result.findings[0].summary and "epoch 9" in result.findings[0].remedy


def test_a_change_that_is_undone_is_flagged_only_while_it_lasts(digits):
    X, y = digits
    result = drift.check(_run_in_memory(X[:300], y[:300], 10, transform=lambda e, x, g: x * 2 if 4 <= e < 7 else x))
    assert result.details["first_drift_epoch"] == 4
    assert [e["epoch"] for e in result.details["per_epoch"] if e["input_drift"]] == [4, 5, 6]
    assert result.status == "warning"                  # the run ended on the data it started with


def test_a_new_data_source_with_new_ids_is_found(rng):
    X, y = blobs(n=1200, d=12)
    X[600:, :4] += 2.0                                # the second source: other ids, other inputs

    def draw(epoch, g):
        return g.permutation(600) if epoch < 6 else g.permutation(np.r_[0:300, 600:900])

    result = drift.check(_run_in_memory(X, y, 10, draw=draw))
    assert result.details["first_drift_epoch"] == 6
    assert result.details["pipeline"] == "deterministic"       # the ids seen before kept their inputs
    assert set(result.details["features"][:4]) == {0, 1, 2, 3}


def test_labels_remapped_mid_run_are_label_drift(digits):
    X, y = digits
    result = drift.check(_run_in_memory(X, y, 12, relabel=lambda e, ids, lab: (lab + 1) % 10 if e >= 8 else lab))
    assert result.details["first_drift_epoch"] == 8
    assert result.details["input_drift_epoch"] is None and result.details["method"] == "label ids"
    assert result.details["label_drift"]["detected"] and result.details["label_drift"]["first_epoch"] == 8
    label_finding = [f for f in result.findings if "labels changed" in f.summary]
    assert label_finding and label_finding[0].severity == "critical"


def test_class_proportions_that_move_are_label_drift(rng):
    X, y = blobs(n=900, d=6, k=3)
    minority = np.flatnonzero(y == 0)

    def draw(epoch, g):
        # from epoch 7 on a sampler oversamples class 0 threefold (with replacement)
        extra = g.choice(minority, 2 * len(minority)) if epoch >= 7 else np.empty(0, int)
        return g.permutation(np.r_[np.arange(900), extra])

    result = drift.check(_run_in_memory(X, y, 11, draw=draw))
    assert result.details["label_drift"]["first_epoch"] == 7
    assert result.details["first_drift_epoch"] == 7


def test_many_stable_epochs_raise_no_false_alarm(rng):
    X, y = blobs(n=1500, d=12, seed=3)
    # random augmentation on a subsampled sketch: other ids each epoch, independent KS tests
    result = drift.check(_run_in_memory(X, y, 40, transform=lambda e, x, g: x + g.normal(0, 0.3, x.shape),
                                        draw=lambda e, g: g.choice(1500, 600, replace=False), reservoir=256))
    assert result.status == "ok" and result.details["first_drift_epoch"] is None
    assert result.details["pipeline"] == "random"
    assert not any(e["drift"] for e in result.details["per_epoch"])


def test_the_result_is_deterministic_and_leaves_torch_rng_alone(digits):
    X, y = digits
    run = _run_in_memory(X, y, 6, transform=lambda e, x, g: x + g.normal(0, 0.1, x.shape) + (0.3 if e >= 4 else 0))
    state = torch.random.get_rng_state()
    first, second = drift.check(run), drift.check(run)
    assert torch.equal(state, torch.random.get_rng_state())
    assert first.details == second.details and first.status == second.status
    json.dumps(first.details), json.dumps([f.to_dict() for f in first.findings])
    assert first.details["first_drift_epoch"] == 4


def test_without_inputs_or_enough_epochs_the_check_is_skipped(digits):
    X, y = digits
    run = _run_in_memory(X[:100], y[:100], 5)
    run.train.records["fingerprint"] = np.nan
    run.train.reservoir.clear()
    no_inputs = drift.check(run)
    assert no_inputs.status == "skipped" and "inputs=" in no_inputs.details["skipped"]
    one_epoch = Run.from_arrays(np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]]))
    assert drift.check(one_epoch).status == "skipped"
    assert drift.check(_run_in_memory(X[:100], y[:100], 2)).status == "skipped"
    assert drift.check(one_epoch, split="val").status == "skipped"


def test_the_default_backend_runs_without_alibi_or_torch():
    # alibi_detect made unimportable: the default backend must not need it, nor torch
    code = ("import sys; sys.modules['alibi_detect'] = None\n"
            "from tests.checks.test_drift import _run_in_memory\n"
            "from dataaudit.demo import digits_with_noise\n"
            "from dataaudit.checks import drift\n"
            "X, y, _ = digits_with_noise(0.0)\n"
            "before = 'torch' in sys.modules\n"
            "r = drift.check(_run_in_memory(X, y, 8, transform=lambda e, x, g: x + g.normal(0, 0.1, x.shape)"
            " + (0.2 if e >= 5 else 0)))\n"
            "d = r.details\n"
            "print(d['first_drift_epoch'], d['method'], d['backend'], d['mmd_p_value'])\n"
            "print('torch imported by the check:', 'torch' in sys.modules and not before)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    first, method, backend, mmd_p = out.splitlines()[0].split()
    assert (first, method, backend) == ("5", "ks", "scipy") and float(mmd_p) <= 0.01
    assert out.splitlines()[1].endswith("False")


_SCENARIOS = {
    "normalisation under random augmentation": (14, dict(transform=lambda e, x, g: (x + g.normal(0, 0.1, x.shape))
                                                         * (0.25 if e >= 9 else 1.0))),
    "a change that is undone": (10, dict(transform=lambda e, x, g: x * 2 if 4 <= e < 7 else x)),
    "labels remapped": (12, dict(relabel=lambda e, ids, lab: (lab + 1) % 10 if e >= 8 else lab)),
    "stable augmentation": (12, dict(transform=lambda e, x, g: x + g.normal(0, 0.1, x.shape))),
}


@pytest.mark.parametrize("scenario", sorted(_SCENARIOS))
def test_the_alibi_backend_makes_the_same_decisions(digits, scenario, monkeypatch):
    pytest.importorskip("alibi_detect")
    X, y = digits
    epochs, kwargs = _SCENARIOS[scenario]
    run = _run_in_memory(X[:600], y[:600], epochs, **kwargs)
    ours = drift.check(run)
    monkeypatch.setenv("DATAAUDIT_DRIFT_BACKEND", "alibi")
    theirs = drift.check(run)
    assert theirs.details["backend"] == "alibi" and ours.details["backend"] == "scipy"
    assert ours.status == theirs.status
    for key in ("first_drift_epoch", "input_drift_epoch", "method", "pipeline", "features"):
        assert ours.details[key] == theirs.details[key], key
    assert [e["drift"] for e in ours.details["per_epoch"]] == [e["drift"] for e in theirs.details["per_epoch"]]
    p_values = [[np.nan if e["p_value"] is None else e["p_value"] for e in r.details["per_epoch"]]
                for r in (ours, theirs)]
    assert p_values[0] == pytest.approx(p_values[1], rel=1e-4, nan_ok=True)
    if ours.details["mmd_p_value"] is not None:
        assert (ours.details["mmd_p_value"] <= 0.01) == (theirs.details["mmd_p_value"] <= 0.01)


# ------------------------------------------------------------ tracked runs


@pytest.mark.parametrize("start", [5, 9])
def test_a_pipeline_change_is_dated_exactly(tmp_path, digits, start):
    X, y = digits
    train(tmp_path, X[:500], y[:500], epochs=12, batch_size=64,
          transform=lambda epoch, x: 0.25 * x + 0.5 if epoch >= start else x)
    result = drift.check(load_run(tmp_path))
    assert result.details["first_drift_epoch"] == start
    assert result.details["method"] == "fingerprint"
    assert result.details["per_epoch"][start]["changed_share"] > 0.9
    assert result.status == "critical"


def test_a_shift_of_a_third_of_the_features_names_them(tmp_path):
    from sklearn.datasets import load_wine
    X, y = _standardized(load_wine)
    shifted = np.arange(0, X.shape[1], 3)
    mask = torch.zeros(X.shape[1])
    mask[shifted] = 1.5
    train(tmp_path, X, y, epochs=10, batch_size=32, transform=lambda epoch, x: x + mask if epoch >= 4 else x)
    result = drift.check(load_run(tmp_path))
    assert result.details["first_drift_epoch"] == 4
    assert sorted(result.details["features"]) == shifted.tolist()


def test_random_augmentation_every_epoch_is_not_drift(tmp_path, digits):
    X, y = digits
    # a sketch smaller than the epoch: the reservoir holds other ids each epoch
    train(tmp_path, X[:600], y[:600], epochs=12, batch_size=64, transform=_noise(0.1), sketch_rows=256, reservoir=128)
    result = drift.check(load_run(tmp_path))
    assert result.status == "ok" and result.details["first_drift_epoch"] is None
    assert result.details["pipeline"] == "random"


def test_augmentation_switched_on_mid_run_is_drift(tmp_path, digits):
    X, y = digits
    train(tmp_path, X[:400], y[:400], epochs=10, batch_size=64, transform=_noise(0.05, start=6))
    result = drift.check(load_run(tmp_path))
    assert result.details["first_drift_epoch"] == 6
    assert result.details["pipeline"] == "deterministic"


def test_a_clean_run_has_no_drift(tmp_path):
    X, y = blobs(n=128)
    train(tmp_path, X, y, epochs=30, batch_size=64)
    result = drift.check(load_run(tmp_path))
    assert result.status == "ok" and result.score == 0
    assert result.details["first_drift_epoch"] is None and result.details["features"] == []
    assert len(result.details["per_epoch"]) == 30
