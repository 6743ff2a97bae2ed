"""The bundled example: a small MLP trained on scikit-learn's digits with planted label noise,
tracked by dataaudit, then audited into a report. No network needed."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np


def digits_with_noise(noise_rate: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Digits scaled to [0, 1]: X (1797, 64), noisy labels y (1797,), and the ids whose label was flipped."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    flipped = np.sort(rng.choice(len(y), size=int(round(noise_rate * len(y))), replace=False))
    y = y.copy()
    y[flipped] = (y[flipped] + rng.integers(1, 10, size=len(flipped))) % 10
    return (X / 16.0).astype(np.float32), y.astype(np.int64), flipped


def train_mlp(run_dir: str | Path | None, X: np.ndarray, y: np.ndarray, *, epochs: int = 3, batch_size: int = 32,
              lr: float = 1e-2, hidden: int = 32, depth: int = 1, seed: int = 0, loader_kwargs: dict | None = None,
              transform: Callable | None = None, watch: bool = True, every: int | None = 10,
              clip: float | None = None,
              progress: bool | None = False, **tracker_kwargs):
    """Train an MLP with `depth` hidden layers on (X, y) with Adam, tracked into run_dir (untracked when None).

    transform(epoch, x) -> x, when given, is applied to each batch after the loader.
    every : `Tracker.watch(every=)`; a fixed cadence by default, so that the run does not depend on the
        machine's speed (None: the adaptive one).
    progress : a progress line of the epochs on stderr (True), only on a terminal (None), or none (False).
    Returns the trained model.
    """
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    import dataaudit
    from dataaudit.progress import Progress

    torch.manual_seed(seed)
    ds = TensorDataset(torch.from_numpy(X), torch.from_numpy(y))
    kwargs = {"batch_size": batch_size, "shuffle": True, "generator": torch.Generator().manual_seed(seed)}
    kwargs.update(loader_kwargs or {})
    loader = DataLoader(ds, **kwargs)
    widths = [X.shape[1]] + [hidden] * depth
    layers = [m for a, b in zip(widths, widths[1:], strict=False) for m in (nn.Linear(a, b), nn.ReLU())]
    model = nn.Sequential(*layers, nn.Linear(widths[-1], int(y.max()) + 1))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    tracker = dataaudit.Tracker(run_dir, **tracker_kwargs) if run_dir is not None else None
    if tracker is not None:
        loader = tracker.wrap(loader)
        if watch:
            tracker.watch(opt, model=model, every=every)
    bar = Progress(epochs, "training", enabled=progress, unit="epochs")
    for epoch in range(epochs):
        bar.step(f"epoch {epoch}")
        for xb, yb in loader:
            if transform is not None:
                xb = transform(epoch, xb)
            logits = model(xb)
            losses = F.cross_entropy(logits, yb, reduction="none")
            if tracker is not None:
                tracker.record(losses, logits=logits, targets=yb, inputs=xb)
            opt.zero_grad()
            losses.mean().backward()
            if clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
    if tracker is not None:
        tracker.close()
    bar.done(f"{epochs} epochs")
    return model


def run_demo(out: str | Path = "reports", *, epochs: int = 30, noise_rate: float = 0.2, seed: int = 0,
             progress: bool | None = False):
    """Train on digits with `noise_rate` of the labels flipped, audit the run, write the report to `out`.

    progress : progress lines for the training epochs and the checks on stderr (True), only on a terminal
        (None), or none (False).
    Returns the Audit; the run itself is kept in `out/run`.
    """
    import shutil

    import dataaudit

    out = Path(out)
    run_dir = out / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    X, y, flipped = digits_with_noise(noise_rate, seed)
    train_mlp(run_dir, X, y, epochs=epochs, batch_size=64, lr=1e-3, hidden=128, depth=2, seed=seed,
              progress=progress)
    audit = dataaudit.analyze(run_dir, progress=progress)
    audit.write_json(out / "audit.json")
    audit.write_html(out / "audit.html")
    (out / "planted_label_errors.txt").write_text("\n".join(map(str, flipped.tolist())) + "\n")
    return audit
