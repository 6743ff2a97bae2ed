from __future__ import annotations

import base64
import io
import json

import numpy as np

from dataaudit.scan import scan

_COLOURS = {"blue": (0, 0, 255), "green": (0, 255, 0), "red": (255, 0, 0)}  # sorted: class 0, 1, 2


def _image_folder(tmp_path, rng):
    """3 classes x 8 PNGs (some 48x24, to test the padding); samples 0 and 9 are in the wrong folder."""
    from PIL import Image

    root = tmp_path / "images"
    names = sorted(_COLOURS)
    true = np.repeat(np.arange(3), 8)
    given = true.copy()
    given[[0, 9]] = [1, 0]  # a blue image filed under green, a green one under blue
    for name in names:
        (root / name).mkdir(parents=True)
    files = []
    for i, (t, g) in enumerate(zip(true, given, strict=True)):
        pixels = np.clip(np.array(_COLOURS[names[t]]) + rng.integers(-20, 20, size=(24, 48 if i % 2 else 24, 3)),
                         0, 255).astype(np.uint8)
        files.append(root / names[g] / f"{i:02d}.png")
        Image.fromarray(pixels).save(files[-1])
    # image folders load class by class, files sorted: rows follow that order
    order = sorted(range(len(files)), key=lambda i: (int(given[i]), files[i].name))
    probs = np.full((len(files), 3), 0.02)
    probs[np.arange(len(files)), true[order]] = 0.96
    return root, probs, [int(np.flatnonzero(np.array(order) == i)[0]) for i in (0, 9)]


def test_image_scan_puts_thumbnails_in_the_html_but_not_the_json(tmp_path, rng):
    from PIL import Image

    root, probs, swapped = _image_folder(tmp_path, rng)
    audit = scan(root, pred_probs=probs)
    assert set(swapped) <= set(audit.label_issues)
    assert set(audit.thumbnails) == set(audit.label_issues[:50])
    for text in audit.thumbnails.values():

        with Image.open(io.BytesIO(base64.b64decode(text, validate=True))) as im:
            assert im.format == "PNG" and im.size == (32, 32)

    html = audit.write_html(tmp_path / "out" / "audit.html").read_text()
    assert html.count('src="data:image/png;base64,') == len(audit.thumbnails)
    for text in audit.thumbnails.values():
        assert f"data:image/png;base64,{text}" in html
    assert len(html.encode()) < 1_000_000

    raw = audit.write_json(tmp_path / "out" / "audit.json").read_text()
    assert "\"thumbnails\"" not in raw and "base64" not in raw
    assert not any(text in raw for text in audit.thumbnails.values())
    assert json.loads(raw)["label_issues"] == list(audit.label_issues)


def test_non_image_scan_has_no_thumbnails(tmp_path, rng):
    y = np.repeat(np.arange(3), 8)
    np.savez(tmp_path / "data.npz", X=rng.normal(size=(24, 2)), y=y)
    probs = np.full((24, 3), 0.02)
    probs[np.arange(24), (y + np.eye(24, dtype=int)[0]) % 3] = 0.96  # sample 0 looks mislabeled
    audit = scan(tmp_path, pred_probs=probs)
    assert audit.thumbnails == {}
    assert "data:image/png" not in audit.write_html(tmp_path / "audit.html").read_text()
