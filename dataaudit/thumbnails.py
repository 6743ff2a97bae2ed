"""Small PNG thumbnails of the flagged samples, for the HTML report only (never written to audit.json).

From an image folder (`scan`, or `analyze(..., dataset="folder/")`) or from any indexable training dataset
whose items are images: a PIL image, or an array or tensor shaped (H, W), (H, W, C) or (C, H, W).
"""
from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np

# Thumbnails drawn at most: the report's flagged table shows them for its first rows; more add bytes only.
MAX_THUMBNAILS = 100
SIZE = 32


def dataset_thumbnails(dataset: Any, ids, *, limit: int = MAX_THUMBNAILS, size: int = SIZE) -> dict[int, str]:
    """sample id -> base64 PNG (size x size) of the first `limit` of `ids`; {} when the items are not images.

    dataset : an image folder (str or Path: `<class>/<image>`), or an object with `dataset[i]` returning
        an image or a tuple whose first element is one.
    An item that cannot be read or is not an image is left out: its row shows no thumbnail.
    """
    ids = [int(i) for i in list(ids)[:limit]]
    if isinstance(dataset, str | Path):
        from dataaudit.scan.datasets import ScanInputError, load_dataset

        try:
            data = load_dataset(dataset)
        except ScanInputError:
            return {}
        if data.kind != "images" or not data.files:
            return {}
        return folder_thumbnails(Path(data.path), data.files, ids, size=size)
    out = {}
    for i in ids:
        try:
            item = dataset[i]
        except Exception:  # an index the dataset does not have: no thumbnail
            continue
        if isinstance(item, tuple | list):
            item = item[0] if item else None
        png = encode(item, size=size)
        if png is None and not out:
            return {}  # the first item is not an image: the inputs are not images
        if png is not None:
            out[i] = png
    return out


def folder_thumbnails(root: Path, files: list[str], ids, *, size: int = SIZE) -> dict[int, str]:
    """sample id -> base64 PNG of `root / files[id]` for each of `ids` whose file still reads."""
    from PIL import Image

    out = {}
    for i in ids:
        i = int(i)
        if not 0 <= i < len(files):
            continue
        try:
            with Image.open(root / files[i]) as im:
                png = encode(im, size=size)
        except Exception:  # removed or corrupted since loading: no thumbnail, the report still renders
            continue
        if png is not None:
            out[i] = png
    return out


def encode(image: Any, *, size: int = SIZE) -> str | None:
    """`image` as a base64 PNG, size x size (aspect kept, padded white); None when it is not an image."""
    from PIL import Image

    if image is None:
        return None
    if not isinstance(image, Image.Image):
        array = _as_array(image)
        if array is None:
            return None
        image = Image.fromarray(array)
    image = image.convert("RGB")
    image.thumbnail((size, size))
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _as_array(x: Any) -> np.ndarray | None:
    """An (H, W) or (H, W, 3) uint8 array from an image-shaped array or tensor; None otherwise."""
    if hasattr(x, "detach"):  # a torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    try:
        a = np.asarray(x)
    except Exception:
        return None
    if a.dtype.kind not in "fiub":
        return None
    a = np.squeeze(a)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.moveaxis(a, 0, -1)  # (C, H, W), torchvision's layout
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] == 3)) or min(a.shape[:2]) < 4:
        return None
    a = a.astype(np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return None
    lo, hi = float(a[finite].min()), float(a[finite].max())
    # already 0..255 pixels stay as they are; anything else (normalised tensors) is stretched to them
    if not (lo >= 0 and hi <= 255 and hi > 1.5):
        a = (a - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(a)
    return np.nan_to_num(a).clip(0, 255).astype(np.uint8)
