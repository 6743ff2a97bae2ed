"""Validate predicted probabilities given on the command line (--pred-probs FILE.npy)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dataaudit.scan.datasets import ScanInputError

# Rows this far from summing to 1 are rounding (float32, CSV round trips): renormalised, with a warning.
RENORMALISE_TOLERANCE = 1e-3
# Below this, the deviation is float rounding of the probabilities themselves: renormalised silently.
_SILENT_TOLERANCE = 1e-5


def load_pred_probs(file: str | Path, labels: np.ndarray, *, num_classes: int | None = None
                    ) -> tuple[np.ndarray, list[str]]:
    """Read FILE.npy and validate it against labels (n,): (probabilities (n, k), warnings)."""
    file = Path(file)
    try:
        array = np.load(file, allow_pickle=False)
    except FileNotFoundError:
        raise ScanInputError(f"{file}: no such file") from None
    except Exception as e:
        raise ScanInputError(f"{file}: cannot read as a .npy array ({type(e).__name__}: {e})") from None
    return validate_pred_probs(array, labels, num_classes=num_classes, source=str(file))


def validate_pred_probs(pred_probs: np.ndarray, labels: np.ndarray, *, num_classes: int | None = None,
                        source: str = "pred_probs") -> tuple[np.ndarray, list[str]]:
    """Check that pred_probs (n, k) are probabilities for labels (n,); renormalise rows off by rounding.

    Raises ScanInputError (naming `source`) on a wrong shape, non-finite or negative values, or rows that
    do not sum to 1 within RENORMALISE_TOLERANCE (logits, or unnormalised scores).
    """
    p = np.asarray(pred_probs)
    labels = np.asarray(labels)
    if p.dtype.kind not in "iuf":
        raise ScanInputError(f"{source}: expected a numeric (n, k) array; got dtype {p.dtype}")
    if p.ndim != 2:
        raise ScanInputError(f"{source}: expected shape (n_samples, n_classes) = ({len(labels)}, k); "
                             f"got shape {p.shape}")
    k_needed = max(int(labels.max()) + 1 if len(labels) else 0, num_classes or 0)
    if p.shape[0] != len(labels) or p.shape[1] < max(k_needed, 2):
        raise ScanInputError(f"{source}: expected shape ({len(labels)}, {max(k_needed, 2)}) to match the labels "
                             f"({len(labels)} samples, {k_needed} classes); got shape {p.shape}")
    return _compute_validated(p.astype(np.float64), source)


def _compute_validated(p: np.ndarray, source: str) -> tuple[np.ndarray, list[str]]:
    bad = ~np.isfinite(p)
    if bad.any():
        row = int(np.flatnonzero(bad.any(1))[0])
        raise ScanInputError(f"{source}: {int(bad.any(1).sum())} rows hold NaN or inf (first: row {row}); "
                             "expected finite probabilities")
    if (p < 0).any():
        row = int(np.flatnonzero((p < 0).any(1))[0])
        raise ScanInputError(f"{source}: negative values in {int((p < 0).any(1).sum())} rows (first: row {row}, "
                             f"min {p.min():.4g}); expected probabilities (logits? apply a softmax first)")
    sums = p.sum(1)
    off = np.abs(sums - 1)
    if (off > RENORMALISE_TOLERANCE).any():
        row = int(np.argmax(off))
        raise ScanInputError(f"{source}: rows must sum to 1; {int((off > RENORMALISE_TOLERANCE).sum())} do not "
                             f"(row {row} sums to {sums[row]:.6g}): logits or scores? apply a softmax first")
    warnings = []
    if (off > _SILENT_TOLERANCE).any():
        warnings.append(f"{source}: {int((off > _SILENT_TOLERANCE).sum())} rows sum to 1 only within "
                        f"{off.max():.2g} (rounding): renormalised")
    return p / sums[:, None], warnings
