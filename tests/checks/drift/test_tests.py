from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import ks_2samp

from dataaudit.checks.drift import tests


def test_ks_columns_match_scipy_per_column_with_ties(rng):
    a = rng.normal(size=(300, 6))
    b = rng.normal(0.2, 1.1, size=(250, 6))
    a[:, 2], b[:, 2] = np.round(a[:, 2]), np.round(b[:, 2])   # heavy ties
    b[:, 4] = a[:250, 4]                                        # shared values
    statistic, p = tests.ks_columns(a, b)
    for j in range(6):
        expected = ks_2samp(a[:, j], b[:, j], method="asymp")
        assert statistic[j] == pytest.approx(expected.statistic, abs=1e-12)
        assert p[j] == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-300)


def test_ks_columns_are_calibrated_under_the_null(rng):
    _, p = tests.ks_columns(rng.normal(size=(200, 400)), rng.normal(size=(180, 400)))
    assert 0.02 <= np.mean(p <= 0.05) <= 0.09                  # 5% expected of 400 independent columns
    assert np.all((p >= 0) & (p <= 1))


def test_ks_scan_adjusts_over_dimensions_and_skips_small_reservoirs(rng):
    reservoir = {e: (np.arange(100), rng.normal(size=(100, 8))) for e in range(4)}
    reservoir[2] = (np.arange(100), rng.normal(size=(100, 8)) + np.r_[1.0, np.zeros(7)])
    reservoir[3] = (np.arange(5), rng.normal(size=(5, 8)))
    scan = tests.ks_scan(reservoir, [0, 1, 2, 3], min_rows=20)
    assert scan["reference"] == 0 and scan["tested"].tolist() == [False, True, True, False]
    _, raw = tests.ks_columns(reservoir[0][1], reservoir[2][1])
    assert scan["p_value"][2] == pytest.approx(min(1.0, 8 * raw.min()))
    assert scan["p_value"][2] < 1e-4 and scan["p_value"][1] > 0.01


def test_mmd_finds_a_small_multivariate_shift_and_is_calibrated(rng):
    x_ref = rng.normal(size=(256, 16))
    p_shift, mmd2 = tests.mmd_test(x_ref, rng.normal(0.25, 1.0, size=(256, 16)))
    assert p_shift == pytest.approx(1 / (1 + tests.MMD_PERMUTATIONS)) and mmd2 > 0
    # under the null the p-value is roughly uniform: few small ones over independent pairs
    nulls = [tests.mmd_test(rng.normal(size=(60, 4)), rng.normal(size=(50, 4)), permutations=200, seed=s)[0]
             for s in range(40)]
    assert sum(p <= 0.05 for p in nulls) <= 6 and np.median(nulls) > 0.25


def test_mmd_is_deterministic_and_sees_a_change_of_spread_the_mean_misses(rng):
    x_ref, x = rng.normal(size=(200, 8)), rng.normal(0, 1.6, size=(200, 8))
    assert tests.mmd_test(x_ref, x, seed=3) == tests.mmd_test(x_ref, x, seed=3)
    assert tests.mmd_test(x_ref, x)[0] <= 0.01


def test_holm_controls_many_epochs():
    p = np.array([0.5, 0.001, 0.0001, 0.02])
    assert tests.holm(p, 0.01).tolist() == [False, True, True, False]
    tested = np.r_[False, [True] * 4]
    assert tests.rejected(np.r_[np.nan, p], tested, 0.01).tolist() == [False, False, True, True, False]


def test_the_backend_comes_from_the_argument_then_the_environment(monkeypatch):
    monkeypatch.delenv(tests.BACKEND_ENV, raising=False)
    assert tests.resolve_backend(None) == "scipy"
    monkeypatch.setenv(tests.BACKEND_ENV, "SciPy")
    assert tests.resolve_backend(None) == "scipy"
    monkeypatch.setenv(tests.BACKEND_ENV, "torch")
    with pytest.raises(ValueError, match=r"DATAAUDIT_DRIFT_BACKEND must be one of \('scipy', 'alibi'\); got 'torch'"):
        tests.resolve_backend(None)
    with pytest.raises(ValueError, match="backend must be one of"):
        tests.resolve_backend("numba")


def test_the_alibi_backend_without_alibi_says_how_to_install_it():
    code = ("import sys; sys.modules['alibi_detect'] = None\n"
            "from dataaudit.checks.drift import tests\n"
            "try:\n    tests.resolve_backend('alibi')\n"
            "except ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert 'pip install "dataaudit[alibi]"' in out


def test_the_alibi_backend_gives_the_same_ks_and_mmd_decisions(rng):
    pytest.importorskip("alibi_detect")
    x_ref = rng.normal(size=(256, 8)).astype(np.float32)
    for shift in (0.0, 0.4):
        x = (rng.normal(size=(256, 8)) + shift).astype(np.float32)
        ours = tests.ks_scan({0: (None, x_ref), 1: (None, x)}, [0, 1])
        theirs = tests.ks_scan({0: (None, x_ref), 1: (None, x)}, [0, 1], backend="alibi")
        np.testing.assert_allclose(ours["p_value"], theirs["p_value"], rtol=1e-6)
        p_ours, mmd_ours = tests.mmd_test(x_ref, x, permutations=100)
        p_alibi, mmd_alibi = tests.mmd_test(x_ref, x, permutations=100, backend="alibi")
        assert (p_ours <= 0.01) == (p_alibi <= 0.01)
        assert mmd_ours == pytest.approx(mmd_alibi, rel=1e-3, abs=1e-5)
