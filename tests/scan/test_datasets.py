from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from dataaudit.scan.datasets import ScanInputError, load_dataset


def test_npz_with_string_labels_maps_sorted_names(tmp_path, rng):
    X = rng.normal(size=(6, 3))
    np.savez(tmp_path / "data.npz", X=X, y=np.array(["dog", "cat", "dog", "bird", "cat", "dog"]))
    data = load_dataset(tmp_path)
    assert data.kind == "npz" and data.class_names == ["bird", "cat", "dog"]
    assert data.labels.tolist() == [2, 1, 2, 0, 1, 2]
    assert data.features.shape == (6, 3) and data.features.dtype == np.float32


def test_npz_without_y_is_refused_naming_the_file(tmp_path):
    np.savez(tmp_path / "data.npz", X=np.zeros((3, 2)))
    with pytest.raises(ScanInputError, match=r"data\.npz: expected arrays X and y"):
        load_dataset(tmp_path)


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_table_numeric_columns_are_features(tmp_path, suffix):
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0], "name": ["x", "y", "z"], "b": [0, 1, 0], "target": [1, 0, 1]})
    path = tmp_path / f"table.{suffix}"
    frame.to_csv(path, index=False) if suffix == "csv" else frame.to_parquet(path)
    data = load_dataset(tmp_path, label_col="target")
    assert data.kind == "table" and data.labels.tolist() == [1, 0, 1] and data.class_names is None
    assert data.features.tolist() == [[1, 0], [2, 1], [3, 0]]
    assert any("name" in w for w in data.warnings)


def test_table_without_the_label_column(tmp_path):
    pd.DataFrame({"a": [1, 2]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(ScanInputError, match=r"t\.csv: no label column 'label' \(pass --label-col\)"):
        load_dataset(tmp_path)


def test_two_tables_are_ambiguous(tmp_path):
    for name in ("a.csv", "b.csv"):
        pd.DataFrame({"label": [0, 1]}).to_csv(tmp_path / name, index=False)
    with pytest.raises(ScanInputError, match="expected one .csv or .parquet table; got 2"):
        load_dataset(tmp_path)


def _png(path, array):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder_skips_a_corrupt_image_by_name(tmp_path, rng):
    for cls in ("zebra", "ant"):
        for i in range(3):
            _png(tmp_path / cls / f"{i}.png", rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
    (tmp_path / "ant" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    _png(tmp_path / "zebra" / "big.png", rng.integers(0, 255, (16, 16), dtype=np.uint8))  # grey, other size
    data = load_dataset(tmp_path)
    assert data.kind == "images" and data.class_names == ["ant", "zebra"]
    assert data.features.shape == (7, 3, 8, 8) and 0 <= data.features.min() and data.features.max() <= 1
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert data.files[0] == "ant/0.png" and "zebra/big.png" in data.files
    assert any("ant/broken.png" in w for w in data.warnings)
    assert any("resized 1" in w for w in data.warnings)


def test_labels_and_optional_features(tmp_path, rng):
    np.save(tmp_path / "labels.npy", np.array([0, 2, 1], np.uint16))
    data = load_dataset(tmp_path)
    assert data.kind == "labels" and data.features is None and data.labels.dtype == np.int64
    np.save(tmp_path / "features.npy", rng.normal(size=(3, 4)))
    assert load_dataset(tmp_path).features.shape == (3, 4)
    np.save(tmp_path / "features.npy", rng.normal(size=(2, 4)))
    with pytest.raises(ScanInputError, match=r"features\.npy: expected numeric features with 3 rows"):
        load_dataset(tmp_path)


def test_empty_or_missing_directory(tmp_path):
    with pytest.raises(ScanInputError, match="no data.npz, labels.npy"):
        load_dataset(tmp_path)
    with pytest.raises(ScanInputError, match="not a directory"):
        load_dataset(tmp_path / "nope")


@pytest.mark.parametrize("layout", ["npz", "features.npy", "csv"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features_are_refused_naming_file_rows_and_columns(tmp_path, rng, layout, bad):
    X = rng.normal(size=(30, 4)).astype(np.float32)
    X[7, 2] = X[19, 2] = bad
    y = rng.integers(0, 2, 30)
    if layout == "npz":
        np.savez(tmp_path / "data.npz", X=X, y=y)
        where = "data.npz (X)"
    elif layout == "features.npy":
        np.save(tmp_path / "labels.npy", y)
        np.save(tmp_path / "features.npy", X)
        where = "features.npy"
    else:
        pd.DataFrame({**{f"f{j}": X[:, j] for j in range(4)}, "label": y}).to_csv(tmp_path / "t.csv", index=False)
        where = "t.csv"
    with pytest.raises(ScanInputError) as info:
        load_dataset(tmp_path)
    text = str(info.value)
    assert where in text and "2 of 30 samples hold" in text and "first rows [7, 19]" in text
    assert ("columns ['f2']" if layout == "csv" else "columns [2]") in text


def _claimed_png(path, width, height):
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's shape)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + b"\x00" * width  # filter byte + one grey row, repeated: compresses to almost nothing
    pixels = zlib.compress(row * 64)  # far fewer rows than claimed: never decoded anyway
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))


def _folder(tmp_path, rng, n=4):
    for cls in ("a", "b"):
        for i in range(n):
            _png(tmp_path / cls / f"{i}.png", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))


def test_a_decompression_bomb_is_skipped_by_name_without_decoding(tmp_path, rng, recwarn):
    import time

    from dataaudit.scan.datasets import MAX_IMAGE_PIXELS

    _folder(tmp_path, rng)
    _claimed_png(tmp_path / "a" / "bomb.png", 100_000, 100_000)  # 10^10 pixels in a few kB
    start = time.perf_counter()
    data = load_dataset(tmp_path)
    assert time.perf_counter() - start < 5
    assert "a/bomb.png" not in data.files and data.features.shape == (8, 3, 32, 32)
    assert any(w.startswith("skipped a/bomb.png: 100000x100000 pixels") and f"{MAX_IMAGE_PIXELS:,}" in w
               for w in data.warnings)
    assert not [w for w in recwarn if "DecompressionBomb" in type(w.message).__name__]  # said once, by us


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="peak memory read from Linux's /proc")
def test_a_large_image_is_decoded_reduced_in_bounded_memory(tmp_path, rng):
    """A 6000 x 6000 image among 32 x 32 ones: decoded at full size it costs over 400 MB as float32 RGB."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from PIL import Image

    _folder(tmp_path, rng)
    big = np.zeros((6000, 6000), np.uint8)
    big[::5] = 255
    Image.fromarray(big).save(tmp_path / "b" / "big.png")
    # peak memory of the process as VmHWM (ru_maxrss would count the pytest process it was forked from)
    code = ("import json, re, sys, time; t = time.perf_counter()\n"
            "from dataaudit.scan.datasets import load_dataset\n"
            "d = load_dataset(sys.argv[1])\n"
            "hwm = int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1])\n"
            "print(json.dumps({'shape': d.features.shape, 's': time.perf_counter() - t, 'mb': hwm / 1024, "
            "'mean': float(d.features[-1].mean())}))")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True,
                         cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    result = json.loads(out.stdout)
    assert result["shape"] == [9, 3, 32, 32]
    assert abs(result["mean"] - 0.2) < 0.02  # one row in five white, averaged down: still that image
    assert result["mb"] < 300, result  # measured: about 85 MB; decoded whole, as before: about 730 MB
    assert result["s"] < 10, result
