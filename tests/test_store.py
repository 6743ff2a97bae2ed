from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dataaudit import analyze, load_run, store


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


# ---------------------------------------------------------------- damaged runs: one error, naming the file


def _first(run_dir, pattern):
    return sorted(run_dir.glob(pattern))[0]


def _manifest(run_dir):
    return json.loads((run_dir / "manifest.json").read_text())


def _set_manifest(run_dir, obj):
    (run_dir / "manifest.json").write_text(json.dumps(obj))


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _wrong_columns(path):
    pq.write_table(pa.table({"a": [1, 2], "b": ["x", "y"]}), path)


def _label_as_text(path):
    table = pq.read_table(path)
    i = table.schema.get_field_index("label")
    pq.write_table(table.set_column(i, "label", pa.array([str(v) for v in table.column(i).to_pylist()])), path)


def _set_column(path, name, value):
    table = pq.read_table(path)
    i = table.schema.get_field_index(name)
    pq.write_table(table.set_column(i, name, pa.array([value] * table.num_rows, table.schema.field(i).type)), path)


def _set_probs_width(path, width):
    import numpy as np

    table = pq.read_table(path)
    probs = pa.FixedSizeListArray.from_arrays(pa.array(np.full(table.num_rows * width, 1 / width, np.float32)), width)
    pq.write_table(table.set_column(table.schema.get_field_index("probs"), "probs", probs), path)


DAMAGE = {
    "manifest not UTF-8": (lambda d: (d / "manifest.json").write_bytes(b'{"format": "\xff\xfe"}'),
                           "manifest.json: unreadable run manifest (not UTF-8"),
    "manifest a JSON list": (lambda d: (d / "manifest.json").write_text("[1, 2]"),
                             "manifest.json: expected a JSON object as run manifest; got a list"),
    "manifest truncated": (lambda d: _truncate(d / "manifest.json"), "manifest.json: unreadable run manifest"),
    "version a string": (lambda d: _set_manifest(d, {**_manifest(d), "version": "2"}),
                         "manifest.json: expected an integer format version"),
    "no files": (lambda d: _set_manifest(d, {k: v for k, v in _manifest(d).items() if k != "files"}),
                 "manifest.json: damaged run manifest: no 'files' field"),
    "files not a list": (lambda d: _set_manifest(d, {**_manifest(d), "files": "records"}),
                         "expected 'files' to be a JSON list; got a string"),
    "file outside the run": (lambda d: _set_manifest(d, {**_manifest(d), "files": ["../../etc/passwd"]}),
                             "lists '../../etc/passwd', not a file of the run's tables"),
    "epoch entry damaged": (lambda d: _set_manifest(d, {**_manifest(d), "epochs": [{"split": "train"}]}),
                            "epochs[0] is not an entry"),
    "num_classes not a number": (lambda d: _set_manifest(d, {**_manifest(d), "num_classes": "three"}),
                                 "expected num_classes to be a positive integer or null; got 'three'"),
    "dataset size negative": (lambda d: _set_manifest(d, {**_manifest(d), "splits": {"train": {"dataset_size": -4}}}),
                              "split 'train' has dataset_size -4"),
    "label far out of range": (lambda d: _set_column(_first(d, "records/*/epoch=0/*/*.parquet"), "label", 10**9),
                               "holds label 1000000000; the run has 3 classes"),  # was: killed for memory
    "pred out of range": (lambda d: _set_column(_first(d, "records/*/epoch=2/*/*.parquet"), "pred", 7),
                          "holds pred 7; the run has 3 classes"),
    "num_classes below the labels": (lambda d: _set_manifest(d, {**_manifest(d), "num_classes": 2}),
                                     "the run has 2 classes (num_classes in the manifest)"),
    "probs of another width": (lambda d: _set_probs_width(_first(d, "records/*/epoch=1/*/*.parquet"), 5),
                               "stores probabilities of 5 classes; the run has 3"),
    "part truncated": (lambda d: _truncate(_first(d, "records/*/epoch=1/*/*.parquet")),
                       "epoch=1/rank=0/part-"),
    "sketch truncated": (lambda d: _truncate(_first(d, "sketch/*/epoch=0/*/features.parquet")),
                         "features.parquet: unreadable Parquet file"),
    "steps truncated": (lambda d: _truncate(_first(d, "steps/epoch=2/*/*.parquet")),
                        "unreadable Parquet file"),
    "part with wrong columns": (lambda d: _wrong_columns(_first(d, "records/*/epoch=0/*/*.parquet")),
                                "not a records file of a dataaudit run: no column 'epoch'"),
    "label column of text": (lambda d: _label_as_text(_first(d, "records/*/epoch=0/*/*.parquet")),
                             "column 'label' is string, expected int"),
    "reservoir with wrong columns": (lambda d: _wrong_columns(_first(d, "sketch/*/epoch=2/*/reservoir.parquet")),
                                     "reservoir.parquet: not a reservoir file"),
    "a part moved to another epoch": (
        lambda d: shutil.copyfile(_first(d, "records/*/epoch=0/*/*.parquet"),
                                  _first(d, "records/*/epoch=1/*/*.parquet")),
        "holds rows of epochs 0..0; its partition is epoch 1"),
    "rank manifest misnamed": (lambda d: (d / "manifest.rankX.json").write_text("{}"),
                               "manifest.rankX.json: not a rank manifest name"),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_a_damaged_run_gives_one_error_naming_the_file(run_copy, case):
    damage, message = DAMAGE[case]
    damage(run_copy)
    with pytest.raises(store.RunFormatError) as error:
        analyze(run_copy)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_run_missing_listed_files_is_refused_naming_them(run_copy):
    """Deleting an epoch's partition would otherwise change the verdict silently."""
    victim = _first(run_copy, "records/*/epoch=1/*/*.parquet")
    victim.unlink()
    with pytest.raises(store.RunFormatError, match="damaged run: 1 listed files are missing") as error:
        load_run(run_copy)
    assert victim.relative_to(run_copy).as_posix() in str(error.value)


def test_an_intact_run_still_loads(built_run):
    run = load_run(built_run)
    assert run.train.epochs == [0, 1, 2] and len(run.records) == 360 and len(run.steps) == 12
    assert run.train.probs(0)[1].shape == (120, 3)
