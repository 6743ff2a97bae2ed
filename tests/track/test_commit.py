"""The manifest is serialised on the training thread and written after the files it lists."""
from __future__ import annotations

import json
import threading

from dataaudit import store
from dataaudit.track.commit import Committer

FILE = "records/split=train/epoch=0/rank=0/part-a-00000.parquet"


def _on_disk(run_dir):
    return json.loads((run_dir / "manifest.json").read_text())


def test_the_manifest_is_written_after_the_files_submitted_before_it(tmp_path):
    writer = store.Writer()
    committer = Committer(tmp_path, writer)
    manifest = {"files": []}
    release = threading.Event()
    seen = []

    def write_file():
        release.wait(5)
        (tmp_path / FILE).parent.mkdir(parents=True)
        (tmp_path / FILE).write_text("x")

    writer.submit(write_file)
    committer.list_files(manifest, [FILE])
    committer.commit(manifest, 0, wait=False)      # returns at once: the file is not written yet
    seen.append((tmp_path / "manifest.json").exists())
    release.set()
    writer.flush()
    assert seen == [False]
    assert _on_disk(tmp_path)["files"] == [FILE]
    writer.close()


def test_a_listed_file_that_was_never_written_is_left_out_and_unlisted(tmp_path):
    writer = store.Writer()
    committer = Committer(tmp_path, writer)
    manifest = {"files": []}
    committer.list_files(manifest, [FILE])          # its job failed: nothing writes it
    committer.commit(manifest, 0, wait=True)
    assert _on_disk(tmp_path)["files"] == []
    assert manifest["files"] == [FILE]              # unlisted at the next commit, on this thread
    committer.commit(manifest, 0, wait=True)
    assert manifest["files"] == []
    writer.close()


def test_what_the_writer_thread_finds_reaches_the_manifest_at_the_next_commit(tmp_path):
    writer = store.Writer()
    committer = Committer(tmp_path, writer)
    manifest = {"files": [], "epochs": [{"epoch": 0, "nonfinite_losses": None}]}
    committer.submit_patch(lambda: lambda m: m["epochs"][0].__setitem__("nonfinite_losses", 3))
    assert manifest["epochs"][0]["nonfinite_losses"] is None   # never changed from the writer thread
    committer.commit(manifest, 0, wait=True)
    assert manifest["epochs"][0]["nonfinite_losses"] == 3
    assert _on_disk(tmp_path)["epochs"][0]["nonfinite_losses"] == 3
    writer.close()
