"""Committing a rank's manifest without making the training loop wait for it.

The manifest belongs to the training thread: it alone changes it, and it
serialises it at each commit. The writer thread writes that text after the
files submitted before it, so a manifest on disk only lists files already
written. What the writer thread learns about an epoch (its non-finite losses,
the probes' host copies) comes back as patches, applied on the training thread
at the next commit.

A file the manifest lists may still fail to be written (a full disk, targets
found out of range while encoding): each commit checks on disk the files listed
since the last one it wrote, and leaves out, then unlists, those missing.
"""
from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from pathlib import Path

from dataaudit import store
from dataaudit.track.manifest import now


class Committer:
    def __init__(self, run_dir: Path, writer: store.Writer):
        self.run_dir = run_dir
        self.writer = writer
        self._patches: deque[Callable[[dict], None]] = deque()  # from the writer thread
        self._unchecked: deque[list[str]] = deque()             # listed files, per commit, not yet seen on disk
        self._listed: list[str] = []                            # listed since the last commit

    def list_files(self, manifest: dict, files: list[str]) -> None:
        """List files that jobs submitted before the next commit will write."""
        manifest["files"].extend(files)
        self._listed.extend(files)

    def submit_patch(self, job: Callable[[], Callable[[dict], None]]) -> None:
        """Run `job` on the writer thread; the manifest change it returns is applied at the next commit."""
        self.writer.submit(lambda: self._patches.append(job()))

    def commit(self, manifest: dict, rank: int, *, wait: bool) -> None:
        """Serialise `manifest` now and write it once everything submitted before is written.

        wait=True also waits for what was submitted before, so that every patch is in, and for the write.
        """
        if wait:
            self.writer.flush()
        while self._patches:
            self._patches.popleft()(manifest)
        manifest["updated"] = now()
        text, batch = json.dumps(manifest), self._listed
        self._listed = []
        self._unchecked.append(batch)
        path = self.run_dir / store.manifest_name(rank)
        self.writer.submit(lambda: self._write(path, text, batch))
        if wait:
            self.writer.flush()

    def _write(self, path: Path, text: str, batch: list[str]) -> None:
        """On the writer thread. A commit skipped after a failed job leaves its files to the next one."""
        checked = []
        while True:
            listed = self._unchecked.popleft()
            checked += listed
            if listed is batch:
                break
        missing = {rel for rel in checked if not (self.run_dir / rel).is_file()}
        if missing:
            data = json.loads(text)
            data["files"] = [rel for rel in data["files"] if rel not in missing]
            text = json.dumps(data)
            self._patches.append(lambda manifest: manifest.__setitem__(
                "files", [rel for rel in manifest["files"] if rel not in missing]))
        store.write_text_atomic(path, text)
