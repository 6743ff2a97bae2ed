"""Load a DATASET_DIR: data.npz, one .csv/.parquet table, an image folder, or labels.npy (+ features.npy).

Class names (image folders, string labels) map to indices in sorted order; the names are kept for the report.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
# An image claiming more pixels is skipped (8192 x 8192: decoded, at most 256 MB as RGBA bytes).
MAX_IMAGE_PIXELS = 8192 * 8192
_RESIZABLE = {"L", "LA", "RGB", "RGBA"}  # modes Pillow resizes with any filter


class ScanInputError(ValueError):
    """Bad input to `scan`: the message names the file or option and says what is wrong (one line)."""


@dataclass(frozen=True)
class Dataset:
    """What a DATASET_DIR holds.

    labels : (n,) int64 class indices.
    features : (n, ...) float32 inputs (images as (n, C, H, W) in [0, 1]), or None (labels.npy alone).
    class_names : names of classes 0..k-1, or None when the labels were integers already.
    files : (n,) paths of the samples relative to the folder (image folders), or None.
    warnings : what was skipped or repaired while loading, one line each.
    kind : "npz", "table", "images" or "labels".
    """

    labels: np.ndarray
    features: np.ndarray | None
    path: Path
    kind: str
    class_names: list[str] | None = None
    files: list[str] | None = None
    warnings: tuple[str, ...] = field(default=())

    @property
    def num_classes(self) -> int:
        if self.class_names is not None:
            return len(self.class_names)
        return int(self.labels.max()) + 1 if len(self.labels) else 0


def load_dataset(path: str | Path, *, label_col: str = "label") -> Dataset:
    """Read the dataset in `path`, whichever of the supported layouts it holds; raises ScanInputError."""
    path = Path(path)
    if not path.is_dir():
        raise ScanInputError(f"{path}: not a directory (expected a DATASET_DIR)")
    if (path / "data.npz").is_file():
        return _load_npz(path / "data.npz")
    if (path / "labels.npy").is_file():
        return _load_label_files(path)
    tables = sorted(p for p in path.iterdir() if p.suffix.lower() in {".csv", ".parquet"} and p.is_file())
    if len(tables) > 1:
        raise ScanInputError(f"{path}: expected one .csv or .parquet table; got {len(tables)} "
                             f"({', '.join(p.name for p in tables[:4])})")
    if tables:
        return _load_table(tables[0], label_col)
    if any(p.is_dir() for p in path.iterdir()):
        return _load_images(path)
    raise ScanInputError(f"{path}: no data.npz, labels.npy, .csv/.parquet table or class folders of images found")


def _encode(values: np.ndarray, source: Path) -> tuple[np.ndarray, list[str] | None]:
    """Labels as int64 indices; string (or float non-integer) labels map to sorted names."""
    values = np.asarray(values)
    if values.ndim != 1:
        raise ScanInputError(f"{source}: labels must be one-dimensional; got shape {values.shape}")
    if len(values) == 0:
        raise ScanInputError(f"{source}: holds no samples; expected at least one labelled sample")
    if values.dtype.kind in "iu":
        if len(values) and values.min() < 0:
            raise ScanInputError(f"{source}: labels must be class indices >= 0; got {values.min()}")
        return values.astype(np.int64), None
    if values.dtype.kind == "f" and np.all(np.isfinite(values)) and np.all(values == np.round(values)) \
            and (len(values) == 0 or values.min() >= 0):
        return values.astype(np.int64), None
    if values.dtype.kind == "f":
        raise ScanInputError(f"{source}: labels must be class indices or names; got non-integer or missing numbers")
    names, index = np.unique(values.astype(str), return_inverse=True)
    return index.astype(np.int64), [str(s) for s in names]


def _load_npz(file: Path) -> Dataset:
    try:
        with np.load(file, allow_pickle=False) as data:
            missing = [k for k in ("X", "y") if k not in data.files]
            if missing:
                raise ScanInputError(f"{file}: expected arrays X and y; got {sorted(data.files)}")
            X, y = data["X"], data["y"]
    except ScanInputError:
        raise
    except Exception as e:  # a corrupt archive, or object arrays needing pickle
        raise ScanInputError(f"{file}: cannot read ({type(e).__name__}: {e})") from None
    labels, names = _encode(y, file)
    if len(X) != len(labels):
        raise ScanInputError(f"{file}: X and y must have the same length; got {len(X)} and {len(labels)}")
    if X.dtype.kind not in "iufb" or X.ndim < 2:
        raise ScanInputError(f"{file}: X must be a numeric array of shape (n, features...); got shape {X.shape}, "
                             f"dtype {X.dtype}")
    X = X.astype(np.float32)
    check_finite(X, f"{file} (X)")
    return Dataset(labels, X, file.parent, "npz", names)


def _load_label_files(path: Path) -> Dataset:
    labels_file = path / "labels.npy"
    labels, names = _encode(_read_npy(labels_file), labels_file)
    features = None
    if (path / "features.npy").is_file():
        features = _read_npy(path / "features.npy")
        if len(features) != len(labels) or features.dtype.kind not in "iufb" or features.ndim < 2:
            raise ScanInputError(f"{path / 'features.npy'}: expected numeric features with {len(labels)} rows "
                                 f"(one per label, shape (n, features...)); got shape {features.shape}, "
                                 f"dtype {features.dtype}")
        features = features.astype(np.float32)
        check_finite(features, str(path / "features.npy"))
    return Dataset(labels, features, path, "labels", names)


def check_finite(X: np.ndarray, source: str, *, columns: list[str] | None = None) -> None:
    """Raise ScanInputError naming `source` and the first bad rows and columns when X (n, ...) holds NaN or inf.

    Refused rather than dropped: a dropped row would shift the sample ids that --pred-probs rows, --run ids
    and flagged.csv refer to. Rows and columns count from 0 (columns of the flattened sample).
    """
    if X.dtype.kind != "f":
        return
    flat = X.reshape(len(X), -1)
    bad_rows = np.flatnonzero(~np.isfinite(flat).all(axis=1))
    if not len(bad_rows):
        return
    first = flat[bad_rows[:1000]]
    cols = np.flatnonzero(~np.isfinite(first).all(axis=0))
    names = [columns[c] for c in cols[:5]] if columns is not None else cols[:5].tolist()
    kinds = " and ".join(k for k, f in (("NaN", np.isnan), ("inf", np.isinf)) if f(first).any())
    raise ScanInputError(
        f"{source}: {len(bad_rows)} of {len(X)} samples hold {kinds} (first rows {bad_rows[:5].tolist()}, "
        f"columns {names}{'...' if len(cols) > 5 else ''}); expected finite features: impute or drop them first")


def _read_npy(file: Path) -> np.ndarray:
    try:
        return np.load(file, allow_pickle=False)
    except Exception as e:
        raise ScanInputError(f"{file}: cannot read as a .npy array ({type(e).__name__}: {e})") from None


def _load_table(file: Path, label_col: str) -> Dataset:
    import pandas as pd

    try:
        frame = pd.read_csv(file) if file.suffix.lower() == ".csv" else pd.read_parquet(file)
    except Exception as e:
        raise ScanInputError(f"{file}: cannot read the table ({type(e).__name__}: {e})") from None
    if label_col not in frame.columns:
        raise ScanInputError(f"{file}: no label column {label_col!r} (pass --label-col); "
                             f"columns are {list(frame.columns)[:10]}")
    if frame[label_col].isna().any():
        raise ScanInputError(f"{file}: label column {label_col!r} has {int(frame[label_col].isna().sum())} "
                             "missing values")
    labels, names = _encode(frame[label_col].to_numpy(), file)
    rest = frame.drop(columns=[label_col])
    numeric = rest.select_dtypes(include=["number", "bool"])
    warnings = []
    dropped = [c for c in rest.columns if c not in numeric.columns]
    if dropped:
        warnings.append(f"{file.name}: non-numeric columns left out of the features: {dropped[:10]}")
    features = numeric.to_numpy(np.float32) if numeric.shape[1] else None
    if features is not None:
        check_finite(features, str(file), columns=[str(c) for c in numeric.columns])
    return Dataset(labels, features, file.parent, "table", names, warnings=tuple(warnings))


def _load_images(path: Path) -> Dataset:
    """Class folders of images, every image decoded straight to the commonest size.

    Two passes: the headers first (size and mode, no pixels), then each image decoded reduced to that size
    (JPEG's draft mode, Pillow's reduce), so memory stays bounded per image whatever its size. An image
    over MAX_IMAGE_PIXELS (a decompression bomb: a small file that claims a huge canvas) is skipped, named.
    """
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is normally there (matplotlib needs it)
        Image = None
    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    headers, warnings = [], []  # (file, class index, (width, height), mode)
    for index, name in enumerate(classes):
        for file in sorted((path / name).iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES or not file.is_file():
                continue
            try:
                size, mode = _image_header(file, Image)
            except Exception as e:  # corrupt or truncated: name it and go on
                warnings.append(f"skipped unreadable image {file.relative_to(path)} ({type(e).__name__}: {e})")
                continue
            if size[0] * size[1] > MAX_IMAGE_PIXELS:
                warnings.append(f"skipped {file.relative_to(path)}: {size[0]}x{size[1]} pixels, over the "
                                f"{MAX_IMAGE_PIXELS:,} a scan decodes (a decompression bomb, or far too large)")
                continue
            headers.append((file, index, size, mode))
    if not headers:
        raise ScanInputError(f"{path}: no readable images in the class folders {classes[:10]}")
    # one channel layout and one size for all: the commonest size; others are resized
    channels = 1 if all(mode == "L" for *_, mode in headers) else 3
    width, height = Counter(size for _, _, size, _ in headers).most_common(1)[0][0]
    X = np.empty((len(headers), channels, height, width), np.float32)  # (n, C, H, W), as torch models take them
    labels, files, resized, kept = [], [], 0, 0
    for file, index, size, _ in headers:
        try:
            a = _read_image(file, Image, (width, height), channels)
        except Exception as e:  # a header that read but pixels that do not
            warnings.append(f"skipped unreadable image {file.relative_to(path)} ({type(e).__name__}: {e})")
            continue
        X[kept] = a.transpose(2, 0, 1)
        kept += 1
        resized += size != (width, height)
        labels.append(index)
        files.append(str(file.relative_to(path)))
    if not kept:
        raise ScanInputError(f"{path}: no readable images in the class folders {classes[:10]}")
    if resized:
        warnings.append(f"resized {resized} images to the commonest size {width}x{height}")
    return Dataset(np.asarray(labels, np.int64), X[:kept], path, "images", classes, files, tuple(warnings))


def _image_header(file: Path, Image) -> tuple[tuple[int, int], str]:
    """(width, height) and mode from the header alone (no pixels decoded)."""
    if Image is None:
        a = _read_image(file, None, None, 3)
        return (a.shape[1], a.shape[0]), "RGB"
    import warnings

    with warnings.catch_warnings():
        # Pillow's own bomb warning; the size is judged here against MAX_IMAGE_PIXELS instead
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            with Image.open(file) as im:
                return im.size, im.mode
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _read_image(file: Path, Image, size: tuple[int, int] | None, channels: int) -> np.ndarray:
    """(H, W, channels) float32 in [0, 1], decoded reduced to `size` (width, height) (None: as it is)."""
    if Image is None:
        import matplotlib.image
        a = np.asarray(matplotlib.image.imread(file), dtype=np.float32)
        a = _to_channels(a / 255.0 if a.max() > 1.0 else a, channels)
        return a if size is None or a.shape[:2] == size[::-1] else _resize(a, size[::-1], None)
    mode = "L" if channels == 1 else "RGB"
    with Image.open(file) as im:
        if size is not None and im.size != size:
            im.draft(mode, size)  # JPEG decodes at 1/2, 1/4 or 1/8 scale directly: less memory and time
        if im.mode not in _RESIZABLE:  # palette, 16-bit...: convert first, or resizing falls back to nearest
            im = im.convert(mode)
        if size is not None and im.size != size:
            im = im.resize(size, Image.BILINEAR, reducing_gap=2.0)  # reduce() by an integer factor first
        im = im.convert(mode) if im.mode != mode else im  # after resizing: converting a small image is cheap
        return np.asarray(im, dtype=np.float32).reshape(im.size[1], im.size[0], channels) / 255.0


def _to_channels(a: np.ndarray, channels: int) -> np.ndarray:
    if a.ndim == 2:
        a = a[:, :, None]
    a = a[:, :, :3]  # alpha dropped
    if channels == 3 and a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return a


def _resize(a: np.ndarray, size: tuple[int, int], Image) -> np.ndarray:
    if Image is None:  # nearest neighbour without Pillow
        rows = (np.arange(size[0]) * a.shape[0] / size[0]).astype(int)
        cols = (np.arange(size[1]) * a.shape[1] / size[1]).astype(int)
        return a[rows][:, cols]
    planes = [np.asarray(Image.fromarray(a[:, :, c]).resize((size[1], size[0]), Image.BILINEAR))
              for c in range(a.shape[2])]
    return np.stack(planes, axis=2).astype(np.float32)
