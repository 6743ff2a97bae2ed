"""Noisy-label cases for the label-issue benchmark: bundled or generated datasets, planted noise.

Each case trains a small MLP with dataaudit tracking (the zoo's setting: hidden 128,
two layers, Adam, batch 64), so that the training dynamics are those of a real run.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Case:
    dataset: str
    noise: str          # "symmetric" | "pairwise"
    rate: float
    epochs: int = 50
    seed: int = 0

    @property
    def name(self) -> str:
        return f"{self.dataset}-{self.noise}-{int(self.rate * 100)}"


def load(name: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from sklearn import datasets
    from sklearn.preprocessing import StandardScaler

    if name == "digits":
        X, y = datasets.load_digits(return_X_y=True)
        X = X / 16.0
    elif name == "wine":
        X, y = datasets.load_wine(return_X_y=True)
        X = StandardScaler().fit_transform(X)
    elif name == "breast_cancer":
        X, y = datasets.load_breast_cancer(return_X_y=True)
        X = StandardScaler().fit_transform(X)
    elif name == "synthetic":
        X, y = datasets.make_classification(n_samples=3000, n_features=24, n_informative=12, n_redundant=4,
                                            n_classes=5, n_clusters_per_class=2, class_sep=1.5, flip_y=0.0,
                                            random_state=seed + 11)
        X = StandardScaler().fit_transform(X)
    else:
        raise ValueError(f"unknown dataset {name!r}")
    return X.astype(np.float32), y.astype(np.int64)


def plant(y: np.ndarray, noise: str, rate: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Flip labels: symmetric (to any other class) or pairwise (class c -> c+1). Returns (noisy y, flipped ids)."""
    rng = np.random.default_rng(seed + 1000)
    k = int(y.max()) + 1
    y = y.copy()
    if noise == "symmetric":
        ids = rng.choice(len(y), size=int(round(rate * len(y))), replace=False)
        y[ids] = (y[ids] + rng.integers(1, k, size=len(ids))) % k
    elif noise == "pairwise":
        ids = np.concatenate([rng.choice(np.flatnonzero(y == c), size=int(round(rate * (y == c).sum())),
                                         replace=False) for c in range(k)])
        y[ids] = (y[ids] + 1) % k
    else:
        raise ValueError(f"unknown noise {noise!r}")
    return y, np.sort(ids)


def run_case(case: Case, root: Path) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray]:
    """Train (or reuse) the tracked run of a case: (run_dir, X, noisy y, flipped ids)."""
    from dataaudit.demo import train_mlp

    X, y = load(case.dataset, case.seed)
    y_noisy, flipped = plant(y, case.noise, case.rate, case.seed)
    run_dir = root / case.name
    if not (run_dir / "manifest.json").exists():
        train_mlp(run_dir, X, y_noisy, epochs=case.epochs, batch_size=64, lr=1e-3, hidden=128, seed=case.seed,
                  depth=2)
    return run_dir, X, y_noisy, flipped


def cleanlab_standard(X: np.ndarray, y: np.ndarray, seed: int = 0) -> np.ndarray:
    """cleanlab's standard usage: 5-fold cross-validated logistic regression + find_label_issues."""
    from cleanlab.filter import find_label_issues
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    probs = cross_val_predict(LogisticRegression(max_iter=2000), X, y, cv=5, method="predict_proba")
    return np.flatnonzero(find_label_issues(y, probs))


def prf(found: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    found, truth = set(map(int, found)), set(map(int, truth))
    tp = len(found & truth)
    p = tp / len(found) if found else 0.0
    r = tp / len(truth) if truth else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)
