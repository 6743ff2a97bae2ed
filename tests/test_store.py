from __future__ import annotations

import json

import pytest

from dataaudit import store


def test_manifest_of_a_newer_format_is_refused(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"format": store.FORMAT, "version": 99}))
    with pytest.raises(store.RunFormatError, match="newer than this dataaudit reads"):
        store.read_manifest(tmp_path)


def test_not_a_dataaudit_manifest(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(store.RunFormatError, match="not a dataaudit run manifest"):
        store.read_manifest(tmp_path)


def test_atomic_write_replaces_whole(tmp_path):
    path = tmp_path / "a.json"
    store.write_json_atomic(path, {"x": 1})
    store.write_json_atomic(path, {"x": 2})
    assert json.loads(path.read_text()) == {"x": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_writer_surfaces_errors_on_the_caller():
    writer = store.Writer()

    def fail():
        raise OSError("disk full")

    writer.submit(fail)
    with pytest.raises(RuntimeError, match="could not write the run: disk full"):
        writer.flush()
    writer.close()


def test_move_uncommitted_keeps_committed(tmp_path):
    for rel in ("records/split=train/epoch=0/rank=0/a.parquet", "records/split=train/epoch=1/rank=0/b.parquet"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    moved = store.move_uncommitted(tmp_path, {"records/split=train/epoch=0/rank=0/a.parquet"}, rank=0)
    assert moved == ["records/split=train/epoch=1/rank=0/b.parquet"]
    assert (tmp_path / "records/split=train/epoch=0/rank=0/a.parquet").exists()
    assert list((tmp_path / "_partial").rglob("b.parquet"))
