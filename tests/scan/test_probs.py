from __future__ import annotations

import numpy as np
import pytest

from dataaudit.scan.datasets import ScanInputError
from dataaudit.scan.probs import load_pred_probs, validate_pred_probs

LABELS = np.array([0, 1, 2, 1])


def _probs(rng, n=4, k=3):
    p = rng.random((n, k)) + 0.1
    return p / p.sum(1, keepdims=True)


def test_valid_probabilities_pass_unchanged(rng):
    p = _probs(rng)
    out, warnings = validate_pred_probs(p, LABELS)
    assert warnings == [] and np.allclose(out, p)


def test_rounding_is_renormalised_with_a_warning(rng, tmp_path):
    p = _probs(rng) * 1.00002
    np.save(tmp_path / "pp.npy", p.astype(np.float32))
    out, warnings = load_pred_probs(tmp_path / "pp.npy", LABELS)
    assert np.allclose(out.sum(1), 1, atol=1e-12)
    assert len(warnings) == 1 and "pp.npy" in warnings[0] and "renormalised" in warnings[0]


@pytest.mark.parametrize("case, message", [
    ("negative", "negative values"),
    ("nan", "NaN or inf"),
    ("inf", "NaN or inf"),
    ("logits", "rows must sum to 1"),
    ("rows", r"expected shape \(4, 3\)"),
    ("columns", r"expected shape \(4, 3\)"),
    ("1d", r"expected shape \(n_samples, n_classes\)"),
])
def test_bad_probabilities_name_the_file_and_the_problem(rng, tmp_path, case, message):
    p = _probs(rng)
    if case == "negative":
        p[1, 0] = -0.1
        p[1, 1] += 0.1
    elif case == "nan":
        p[2, 1] = np.nan
    elif case == "inf":
        p[0, 0] = np.inf
    elif case == "logits":
        p = rng.random((4, 3)) * 3 + 0.5  # positive scores: logits of a ReLU head, unnormalised
    elif case == "rows":
        p = _probs(rng, n=5)
    elif case == "columns":
        p = _probs(rng, k=2)
    elif case == "1d":
        p = p[:, 0]
    np.save(tmp_path / "bad.npy", p)
    with pytest.raises(ScanInputError, match=message) as info:
        load_pred_probs(tmp_path / "bad.npy", LABELS)
    text = str(info.value)
    assert text.startswith(str(tmp_path / "bad.npy")) and "\n" not in text


def test_unreadable_file(tmp_path):
    (tmp_path / "x.npy").write_text("garbage")
    with pytest.raises(ScanInputError, match=r"x\.npy: cannot read"):
        load_pred_probs(tmp_path / "x.npy", LABELS)
    with pytest.raises(ScanInputError, match="no such file"):
        load_pred_probs(tmp_path / "missing.npy", LABELS)
