"""tests for dataaudit/thumbnails.py: thumbnails from a training dataset's items or an image folder."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest

from dataaudit.thumbnails import dataset_thumbnails, encode


def _pixel(png: str) -> tuple[int, int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(png))) as im:
        assert im.size == (32, 32)
        return im.convert("RGB").getpixel((16, 16))


@pytest.mark.parametrize("layout", ["chw", "hwc", "hw"])
def test_arrays_and_tensors_become_pngs(layout):
    import torch

    red = np.zeros((3, 12, 12), np.float32)
    red[0] = 1.0
    red[0, 0, 0] = 0.0  # a range to stretch
    item = {"chw": torch.from_numpy(red), "hwc": np.moveaxis(red, 0, -1) * 255, "hw": red[0]}[layout]
    png = encode(item)
    r, g, b = _pixel(png)
    assert r > 200 and (layout == "hw" or g < 50 and b < 50)


def test_dataset_items_by_id_and_non_images_give_nothing():
    import torch
    from torch.utils.data import TensorDataset

    images = torch.zeros(5, 3, 8, 8)
    images[2, 2] = 1.0  # sample 2 is blue
    labels = torch.zeros(5, dtype=torch.long)
    thumbs = dataset_thumbnails(TensorDataset(images, labels), [2, 0, 99])
    assert set(thumbs) == {2, 0}  # id 99 is not in the dataset: left out
    assert _pixel(thumbs[2])[2] > 200
    assert dataset_thumbnails(TensorDataset(torch.zeros(5, 6), labels), [0, 1]) == {}  # feature vectors


def test_image_folder(tmp_path):
    from PIL import Image

    for name, rgb in (("a", (0, 255, 0)), ("b", (255, 0, 0))):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.fromarray(np.full((10, 20, 3), rgb, np.uint8)).save(tmp_path / name / f"{i}.png")
    thumbs = dataset_thumbnails(tmp_path, [4, 1])
    assert _pixel(thumbs[4])[0] > 200 and _pixel(thumbs[1])[1] > 200  # class folders in order: a (0-2), b (3-5)
    assert dataset_thumbnails(tmp_path / "missing", [0]) == {}
