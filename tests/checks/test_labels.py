from __future__ import annotations

import numpy as np
import pytest

import dataaudit
from dataaudit.checks import labels
from dataaudit.run import Run
from fixtures.label_noise import load, plant
from fixtures.training import blobs, train


def _f1(found, truth) -> float:
    found, truth = set(map(int, found)), set(map(int, truth))
    tp = len(found & truth)
    return 2 * tp / (len(found) + len(truth)) if found or truth else 1.0


@pytest.fixture(scope="module")
def noisy_blobs(tmp_path_factory):
    """A tracked run on separable blobs with 25% of labels flipped at random."""
    X, y = blobs(n=800, d=10, k=4, seed=3)
    y_noisy, flipped = plant(y, "symmetric", 0.25, seed=3)
    run_dir = tmp_path_factory.mktemp("labels") / "run"
    train(run_dir, X, y_noisy, epochs=20, batch_size=64, lr=1e-3, hidden=64, depth=2)
    return dataaudit.load_run(run_dir), flipped


def test_finds_random_flips(noisy_blobs):
    run, flipped = noisy_blobs
    result = labels.check(run)
    found = result.details["label_issues"]
    assert _f1(found, flipped) > 0.9
    assert result.status == "critical" and result.details["evidence"] == "strong"
    assert abs(result.details["estimated_noise_rate"] - 0.25) < 0.08
    # most suspicious first: the head of the list is almost all truly flipped
    assert np.isin(found[:50], flipped).mean() > 0.95


def test_suggests_the_true_label(noisy_blobs):
    run, flipped = noisy_blobs
    X, y = blobs(n=800, d=10, k=4, seed=3)
    per_sample = labels.check(run).per_sample.set_index("sample_id")
    hits = per_sample.loc[flipped]
    assert (hits["suggested_label"].to_numpy() == y[flipped]).mean() > 0.9
    assert hits["label_quality"].mean() < per_sample.drop(index=flipped)["label_quality"].mean() - 0.4


def test_systematic_flips_are_found_and_named(tmp_path):
    X, y = load("wine")
    y_noisy, flipped = plant(y, "pairwise", 0.25, seed=0)
    train(tmp_path / "run", X, y_noisy, epochs=40, batch_size=32, lr=1e-3, hidden=64, depth=2)
    result = labels.check(dataaudit.load_run(tmp_path / "run"))
    assert _f1(result.details["label_issues"], flipped) > 0.8
    top = result.details["confused_pairs"][0]
    assert top["suggested"] == (top["given"] - 1) % 3     # c was relabelled c + 1


def test_clean_data_flags_few(tmp_path):
    X, y = blobs(n=600, d=10, k=4, seed=5)
    train(tmp_path / "run", X, y, epochs=15, batch_size=64, lr=1e-3, hidden=64, depth=2)
    result = labels.check(dataaudit.load_run(tmp_path / "run"))
    assert len(result.details["label_issues"]) <= 0.02 * 600


def test_a_model_that_learnt_nothing_flags_nothing():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 500)
    probs = rng.dirichlet(np.ones(5) * 50, size=500)   # near-uniform: no information
    result = labels.check(Run.from_arrays(y, probs))
    assert result.details["label_issues"] == [] and result.details["evidence"] == "weak"
    assert "learnt too little" in result.findings[0].summary


def test_out_of_sample_probabilities_from_scan():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    probs = np.full((300, 3), 0.05)
    probs[np.arange(300), y] = 0.9
    wrong = np.arange(0, 300, 10)
    probs[wrong] = 0.05
    probs[wrong, (y[wrong] + 1) % 3] = 0.9
    result = labels.check(Run.from_arrays(y, probs))
    assert sorted(result.details["label_issues"]) == wrong.tolist()
    assert all(p["suggested"] == (p["given"] + 1) % 3 for p in result.details["confused_pairs"])


def test_without_logits_the_check_is_skipped(run_dir):
    X, y = blobs(n=100)
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    with dataaudit.Tracker(run_dir) as tracker:
        for x, t in tracker.wrap(DataLoader(TensorDataset(torch.from_numpy(X), torch.from_numpy(y)), batch_size=20)):
            tracker.record(torch.zeros(len(x)), targets=t)
    assert labels.check(dataaudit.load_run(run_dir)).status == "skipped"


def _dynamics(mispredicted: np.ndarray, other: np.ndarray, *, n_epochs: int = 10) -> labels.Dynamics:
    """1000 samples of 10 classes (label = id % 10), margins only: the `mispredicted` (n,) samples are
    predicted as other (n,) with margin -1 every epoch, the rest as their label with margin +2."""
    n = 1000
    y = np.arange(n) % 10
    pred = np.where(mispredicted, other, y)[:, None].repeat(n_epochs, 1).astype(np.int32)
    margin = np.where(mispredicted, -1.0, 2.0)[:, None].repeat(n_epochs, 1)
    return labels.Dynamics(np.arange(n), y, margin, pred, None, list(range(n_epochs)))


def test_classes_the_model_cannot_fit_are_not_called_mislabeled(rng):
    # a model that fits classes 0-4 and sends 70% of each of 5-9 to another of 5-9: it cannot fit them
    y = np.arange(1000) % 10
    unfit = (y >= 5) & (rng.random(1000) < 0.7)
    result = labels._compute_label_issues(_dynamics(unfit, 5 + (y - 5 + 1) % 5), 10)
    assert result.status == "info" and result.details["evidence"] == "cannot fit"
    assert result.details["unfit_classes"] == [5, 6, 7, 8, 9]
    assert result.details["not_judged"] >= 0.9 * unfit.sum()
    assert "does not fit" in " ".join(f.summary for f in result.findings)


def test_wrong_labels_in_every_class_stay_critical(rng):
    # the same share of disagreement, spread over classes the model fits: wrong labels
    y = np.arange(1000) % 10
    flipped = rng.random(1000) < 0.15
    result = labels._compute_label_issues(_dynamics(flipped, (y + 1) % 10), 10)
    assert result.status == "critical" and result.details["unfit_classes"] == []
    assert _f1(result.details["label_issues"], np.flatnonzero(flipped)) > 0.95


def test_flips_learnt_late_are_judged_on_the_epochs_after_learning(rng):
    # a hard dataset: for the first half of the run the model still guesses (every sample, clean or not);
    # then it predicts each flipped sample as its true class every epoch. The early guessing is not doubt.
    n, k, n_epochs, learnt = 1000, 10, 12, 6
    y = np.arange(n) % k
    flipped = rng.random(n) < 0.15
    true = np.where(flipped, (y + 1) % k, y)
    guessing = rng.integers(0, k, (n, learnt))
    pred = np.concatenate([guessing, true[:, None].repeat(n_epochs - learnt, 1)], axis=1).astype(np.int32)
    margin = np.concatenate([np.where(flipped, -0.3, 0.3)[:, None].repeat(learnt, 1),
                             np.where(flipped, -1.0, 2.0)[:, None].repeat(n_epochs - learnt, 1)], axis=1)
    result = labels._compute_label_issues(
        labels.Dynamics(np.arange(n), y, margin, pred, None, list(range(n_epochs))), k)
    assert result.status == "critical" and result.details["evidence"] == "strong"
    assert _f1(result.details["label_issues"], np.flatnonzero(flipped)) > 0.95


@pytest.mark.parametrize("top_k", [8, 0])
def test_many_classes_use_the_stored_top_k_or_say_why_not(tmp_path, top_k):
    """40 classes (above max_prob_classes=32): confident learning runs on the top-k probabilities the tracker
    stored, and says so; without them, a finding says it was left out instead of going quiet."""
    X, y = blobs(n=1_200, d=24, k=40, seed=5)
    rng = np.random.default_rng(5)
    flipped = rng.choice(len(y), 180, replace=False)
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + rng.integers(1, 40, len(flipped))) % 40
    train(tmp_path / "run", X, noisy, epochs=12, batch_size=64, lr=3e-3, hidden=96, top_k_probs=top_k)
    result = labels.check(dataaudit.load_run(tmp_path / "run"))
    assert _f1(result.details["label_issues"], flipped) >= 0.85
    quality = result.per_sample.set_index("sample_id")["label_quality"]
    assert quality.drop(flipped).median() > 0.5 > quality.loc[flipped].median()  # not 0.000 for every row
    if top_k:
        assert result.details["probabilities"] == "top-k" and "top-k" in result.details["method"]
        assert "note" not in result.details
        assert not any("left out" in f.summary for f in result.findings)
    else:
        assert result.details["probabilities"] == "none"
        assert any(f.severity == "info" and "Confident learning was left out" in f.summary
                   and "40 classes" in f.summary for f in result.findings)


def test_count_issues_is_cleanlabs_calibrated_estimate(rng):
    from cleanlab.count import num_label_issues

    from dataaudit.checks.labels import _count_issues

    for k, noise in ((2, 0.05), (5, 0.2), (10, 0.4)):
        true = rng.integers(0, k, 3000)
        given = np.where(rng.random(3000) < noise, rng.integers(0, k, 3000), true)
        logits = rng.normal(size=(3000, k)) + 2.5 * np.eye(k)[true]
        pp = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        assert _count_issues(given, pp) == num_label_issues(given, pp, estimation_method="off_diagonal_calibrated")
