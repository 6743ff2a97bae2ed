"""Arrow columns built from numpy buffers equal pyarrow's own conversion, and a tracked run never imports pandas."""
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pytest

from dataaudit.track import arrow

VALUES = {
    "int64": np.array([3, -1, 7], dtype=np.int64),
    "int32": np.arange(5, dtype=np.int32),
    "uint64": np.array([2**63 + 5, 1], dtype=np.uint64),
    "float32 with NaN": np.array([0.5, np.nan, -np.inf], dtype=np.float32),
    "float64": np.linspace(0, 1, 4),
    "bool, not a whole byte": np.array([True, False, True, True, False, False, True, False, True, True, False]),
    "strings": np.array(["fc1.weight", "", "ünïcode.bias"], dtype=object),
    "empty": np.empty(0, np.float32),
    "strided": np.arange(10, dtype=np.int64)[::3],
}


@pytest.mark.parametrize("name", VALUES)
def test_a_column_equals_pyarrows_conversion(name):
    values = VALUES[name]
    got = arrow.column(values)
    expected = pa.array(values, type=pa.string() if values.dtype == object else None)
    assert got.type == expected.type and len(got) == len(expected) and got.null_count == 0
    np.testing.assert_array_equal(got.to_numpy(zero_copy_only=False), expected.to_numpy(zero_copy_only=False))


def test_lists_and_tables():
    probs = np.arange(12, dtype=np.float32).reshape(4, 3)
    table = arrow.table({"sample_id": np.arange(4), "probs": arrow.lists(probs), "ok": probs[:, 0] > 4})
    assert table.column_names == ["sample_id", "probs", "ok"]
    assert table.column("probs").to_pylist() == probs.tolist()
    assert table.column("ok").to_pylist() == [False, False, True, True]


def test_a_column_of_more_than_one_dimension_is_refused():
    with pytest.raises(ValueError, match="needs a 1-d array; got shape"):
        arrow.column(np.zeros((2, 2)))


def test_a_tracked_run_does_not_import_pandas(tmp_path):
    """pyarrow's own conversions import pandas; on the writer thread that import stalls the training loop."""
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        from dataaudit.demo import train_mlp

        X = np.random.default_rng(0).normal(size=(256, 8)).astype(np.float32)
        train_mlp({str(tmp_path / "run")!r}, X, (X[:, 0] > 0).astype(np.int64), epochs=2)  # watched, inputs recorded
        print("pandas" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
    assert len(list((tmp_path / "run" / "records").rglob("*.parquet"))) == 2
