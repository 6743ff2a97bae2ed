"""The run directory: plain, versioned files that outlive the process that wrote them.

Layout (format version 1; every table is Parquet, partitioned Hive-style so that
pyarrow, duckdb or Spark read it without dataaudit)::

    RUN_DIR/
      manifest.json                                   run metadata and the committed epochs
      records/split=train/epoch=3/rank=0/part-<session>-<n>.parquet
                                                      one row per draw, in the order the loader drew;
                                                      recorded=False for batches never passed to record()
      sketch/split=train/epoch=3/rank=0/features.parquet   per-feature moments of the inputs
      sketch/split=train/epoch=3/rank=0/reservoir.parquet  fixed-size sample of projected inputs
      steps/epoch=3/rank=0/part-...                    one row per optimizer step
      layers/epoch=3/rank=0/part-...                   per-parameter norms on sampled steps
      _partial/                                        uncommitted files of a killed session

Every file is written under a temporary name and renamed into place, so a killed
process never leaves a half-written file under a real name. An epoch counts only
once the manifest lists it: its files are written first, then the manifest.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

FORMAT = "dataaudit-run"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_DICTIONARY_COLUMNS = {"epoch", "label", "pred", "param", "skipped", "clipped", "recorded"}


class RunFormatError(ValueError):
    """A run directory that is missing, unreadable or of an unknown format."""


def is_run_entry(name: str) -> bool:
    """Whether a name in a run directory is dataaudit's own (another rank may be writing it already)."""
    return name.startswith((".", "manifest")) or name in ("records", "sketch", "steps", "layers", "_partial")


def manifest_name(rank: int) -> str:
    return MANIFEST if rank == 0 else f"manifest.rank{rank}.json"


def partition_dir(table: str, *, epoch: int, rank: int, split: str | None = None) -> Path:
    """Relative folder of one (table, split, epoch, rank) partition."""
    parts = [table]
    if split is not None:
        parts.append(f"split={split}")
    parts += [f"epoch={epoch}", f"rank={rank}"]
    return Path(*parts)


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so that a reader sees either the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1, default=_json_default))


def write_parquet_atomic(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    # Dictionary encoding only where values repeat: on float columns it costs most of the write time.
    dictionary = [c for c in table.column_names if c in _DICTIONARY_COLUMNS]
    # lz4: writes about twice as fast as zstd here, for files a few percent larger
    pq.write_table(table, tmp, compression="lz4", use_dictionary=dictionary)
    os.replace(tmp, path)


def read_manifest(run_dir: Path, rank: int = 0) -> dict:
    path = Path(run_dir) / manifest_name(rank)
    if not path.is_file():
        raise RunFormatError(f"{path}: no such run manifest; expected a run directory written by dataaudit.Tracker")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise RunFormatError(f"{path}: unreadable run manifest ({e})") from None
    if manifest.get("format") != FORMAT:
        raise RunFormatError(f"{path}: not a dataaudit run manifest (format {manifest.get('format')!r})")
    if manifest.get("version", 0) > FORMAT_VERSION:
        raise RunFormatError(
            f"{path}: run format version {manifest['version']} is newer than this dataaudit reads "
            f"({FORMAT_VERSION}); upgrade dataaudit"
        )
    return manifest


def move_uncommitted(run_dir: Path, committed: set[str], *, rank: int) -> list[str]:
    """Move this rank's files that no committed epoch lists into `_partial/`.

    They are what a killed session left of the epoch in progress; keeping them
    aside (not deleting) loses nothing, and keeps them out of readers' way.
    """
    moved = []
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for table in ("records", "sketch", "steps", "layers"):
        root = run_dir / table
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            if not path.is_file() or f"rank={rank}" not in path.parts:
                continue
            rel = path.relative_to(run_dir).as_posix()
            if rel in committed:
                continue
            dest = run_dir / "_partial" / stamp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(path, dest)
            moved.append(rel)
    return moved


class Writer:
    """Writes files on a background thread, in submission order.

    Training only hands over host arrays; Parquet encoding and the disk stay off
    its path. The queue is bounded, so a slow disk slows training down rather
    than growing memory without limit. An error on the thread is raised on the
    next call from the training thread.
    """

    def __init__(self, max_pending: int = 8):
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="dataaudit-writer", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], None]) -> None:
        self.raise_error()
        self._queue.put(fn)

    def flush(self) -> None:
        """Block until everything submitted so far is on disk."""
        self._queue.join()
        self.raise_error()

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self.raise_error()

    def raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"dataaudit could not write the run: {error}") from error

    def _loop(self) -> None:
        while True:
            fn = self._queue.get()
            try:
                if fn is None:
                    return
                if self._error is None:
                    fn()
            except BaseException as e:  # surfaced on the training thread
                self._error = e
            finally:
                self._queue.task_done()


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")
