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
import re
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
# Class indices a run without logits may hold (its labels then set the number of classes; the checks
# allocate per class).
MAX_CLASSES = 1 << 20
_DICTIONARY_COLUMNS = {"epoch", "label", "pred", "param", "skipped", "clipped", "recorded"}


class RunFormatError(ValueError):
    """A run directory, or one of its files, that is missing, unreadable, damaged or of an unknown format.

    The one error the store raises for what it reads; the message names the file and what is wrong (one line).
    """


# What each table's files must hold: column -> kind ("int", "float", "bool", "str", "list").
SCHEMAS: dict[str, dict[str, str]] = {
    "records": {"epoch": "int", "sample_id": "int", "recorded": "bool", "loss": "float", "prob": "float",
                "margin": "float", "label": "int", "pred": "int", "fingerprint": "float"},
    "features": {"feature": "int", "count": "int", "mean": "float", "m2": "float", "min": "float", "max": "float"},
    "reservoir": {"sample_id": "int", "value": "list"},
    "steps": {"epoch": "int", "step": "int", "attempt": "int", "skipped": "bool", "loss": "float",
              "grad_norm": "float", "lr": "float"},
    "layers": {"epoch": "int", "step": "int", "param": "str", "update_norm": "float", "weight_norm": "float",
               "grad_norm": "float"},
}
# A listed file: <table>/[split=<name>/]epoch=<n>/rank=<r>/<file>.parquet, inside the run directory.
LISTED_FILE = re.compile(r"^(?P<table>records|sketch|steps|layers)/(?:split=(?P<split>\w+)/)?"
                         r"epoch=(?P<epoch>\d+)/rank=(?P<rank>\d+)/(?P<name>[\w.-]+\.parquet)$")


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
    # Min/max statistics where a reader can skip by them (epochs, ids, labels), not on floating-point values:
    # on a records file they are an eighth of the write time.
    statistics = [f.name for f in table.schema if not (pa.types.is_floating(f.type) or pa.types.is_nested(f.type))]
    # lz4: writes about twice as fast as zstd here, for files a few percent larger
    pq.write_table(table, tmp, compression="lz4", use_dictionary=dictionary, write_statistics=statistics)
    os.replace(tmp, path)


def read_manifest(run_dir: Path, rank: int = 0) -> dict:
    """The manifest of `rank`, checked: a JSON object of this format and a version this dataaudit reads,
    with `splits`, `epochs` (split, epoch, complete) and `files` (relative paths of the run's tables).

    Raises RunFormatError naming the file and what is wrong.
    """
    path = Path(run_dir) / manifest_name(rank)
    if not path.is_file():
        raise RunFormatError(f"{path}: no such run manifest; expected a run directory written by dataaudit.Tracker")
    try:
        text = path.read_bytes().decode("utf-8")
        manifest = json.loads(text)
    except UnicodeDecodeError as e:
        raise RunFormatError(f"{path}: unreadable run manifest (not UTF-8 text: byte {e.start})") from None
    except (OSError, json.JSONDecodeError, RecursionError) as e:
        raise RunFormatError(f"{path}: unreadable run manifest ({type(e).__name__}: {_first_line(e)})") from None
    if not isinstance(manifest, dict):
        raise RunFormatError(f"{path}: expected a JSON object as run manifest; got a {_json_type(manifest)}")
    if manifest.get("format") != FORMAT:
        raise RunFormatError(f"{path}: not a dataaudit run manifest (format {manifest.get('format')!r})")
    version = manifest.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise RunFormatError(f"{path}: expected an integer format version (1 to {FORMAT_VERSION}); got {version!r}")
    if version > FORMAT_VERSION:
        raise RunFormatError(
            f"{path}: run format version {version} is newer than this dataaudit reads "
            f"({FORMAT_VERSION}); upgrade dataaudit"
        )
    _check_manifest_fields(path, manifest)
    return manifest


def _check_manifest_fields(path: Path, manifest: dict) -> None:
    for key, kind in (("splits", dict), ("epochs", list), ("files", list)):
        if key not in manifest:
            raise RunFormatError(f"{path}: damaged run manifest: no {key!r} field")
        if not isinstance(manifest[key], kind):
            raise RunFormatError(f"{path}: damaged run manifest: expected {key!r} to be a JSON "
                                 f"{_json_type(kind())}; got a {_json_type(manifest[key])}")
    for name, info in manifest["splits"].items():
        if not isinstance(info, dict) or not str(name).isidentifier():
            raise RunFormatError(f"{path}: damaged run manifest: split {name!r} is not a name with an object")
        shape = info.get("input_shape")
        if not (_is_count(info.get("dataset_size"), 0) and (shape is None or (
                isinstance(shape, list) and all(_is_count(d, 1) for d in shape)))):
            raise RunFormatError(f"{path}: damaged run manifest: split {name!r} has dataset_size "
                                 f"{info.get('dataset_size')!r} and input_shape {shape!r}; expected a count and a "
                                 "list of positive sizes (or null)")
    if not _is_count(manifest.get("num_classes"), 1):
        raise RunFormatError(f"{path}: damaged run manifest: expected num_classes to be a positive integer or "
                             f"null; got {manifest.get('num_classes')!r}")
    if not isinstance(manifest.get("sessions", []), list):
        raise RunFormatError(f"{path}: damaged run manifest: expected 'sessions' to be a JSON list")
    for i, entry in enumerate(manifest["epochs"]):
        ok = (isinstance(entry, dict) and isinstance(entry.get("split"), str) and entry["split"] in manifest["splits"]
              and _is_int(entry.get("epoch")) and entry["epoch"] >= 0 and isinstance(entry.get("complete"), bool)
              and _is_count(entry.get("rank"), 0))
        if not ok:
            raise RunFormatError(f"{path}: damaged run manifest: epochs[{i}] is not an entry with a known split, "
                                 f"an epoch number and complete: true/false; got {str(entry)[:80]}")
    for rel in manifest["files"]:
        if not isinstance(rel, str) or not LISTED_FILE.match(rel):
            raise RunFormatError(f"{path}: damaged run manifest: lists {str(rel)[:80]!r}, not a file of the run's "
                                 "tables (records/, sketch/, steps/, layers/ partitions)")


def read_run_manifests(run_dir: str | Path) -> list[dict]:
    """Every rank's manifest of the run in `run_dir` (rank 0's first, then each manifest.rankN.json), checked,
    and the run checked whole: a run that lists files it does not hold is damaged (its verdict would silently
    change). Raises RunFormatError naming the directory or file."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        what = "is a file, not a run directory" if run_dir.exists() else "no such run directory"
        raise RunFormatError(f"{run_dir}: {what}")
    manifests = [read_manifest(run_dir, 0)]
    for path in sorted(run_dir.glob("manifest.rank*.json")):
        rank = re.fullmatch(r"manifest\.rank([1-9]\d*)\.json", path.name)
        if rank is None:
            raise RunFormatError(f"{path}: not a rank manifest name (expected manifest.rankN.json, N >= 1)")
        manifests.append(read_manifest(run_dir, int(rank[1])))
    missing = [f"{manifest_name(m.get('rank', 0))}: {rel}" for m in manifests for rel in missing_files(run_dir, m)]
    if missing:
        raise RunFormatError(f"{run_dir}: damaged run: {len(missing)} listed files are missing "
                             f"({'; '.join(missing[:3])}{'...' if len(missing) > 3 else ''}); "
                             "restore them from a full copy of the run")
    return manifests


def missing_files(run_dir: Path, manifest: dict) -> list[str]:
    """The files `manifest` lists that `run_dir` does not hold (a damaged or partly copied run)."""
    return [rel for rel in manifest["files"] if not (Path(run_dir) / rel).is_file()]


def read_table(path: Path, schema: str, *, columns: list[str] | None = None) -> pa.Table:
    """Read one Parquet file of the run, checked against SCHEMAS[schema] (columns present, of the right kind).

    columns : the columns to read (default: all). Raises RunFormatError naming the file and what is wrong.
    """
    file_schema = _guarded(path, pq.read_schema)
    check_schema(path, file_schema, schema)
    if columns is not None:
        columns = [c for c in columns if c in file_schema.names]
    return _guarded(path, lambda p: pq.read_table(p, columns=columns))


def read_schema(path: Path, schema: str) -> pa.Schema:
    """The checked schema of one Parquet file of the run (see `read_table`)."""
    file_schema = _guarded(path, pq.read_schema)
    check_schema(path, file_schema, schema)
    return file_schema


def count_rows(path: Path, schema: str) -> int:
    """Rows in one Parquet file of the run, from its footer (nothing else is read); checked as `read_schema`."""
    read_schema(path, schema)
    return _guarded(path, lambda p: pq.read_metadata(p).num_rows)


def check_schema(path: Path, file_schema: pa.Schema, schema: str) -> None:
    wrong = []
    for column, kind in SCHEMAS[schema].items():
        i = file_schema.get_field_index(column)
        if i < 0:
            wrong.append(f"no column {column!r}")
        elif not _KINDS[kind](file_schema.field(i).type):
            wrong.append(f"column {column!r} is {file_schema.field(i).type}, expected {kind}")
    if schema == "records" and "probs" in file_schema.names \
            and not pa.types.is_fixed_size_list(file_schema.field("probs").type):
        wrong.append(f"column 'probs' is {file_schema.field('probs').type}, expected a fixed-size list")
    if wrong:
        raise RunFormatError(f"{path}: not a {schema} file of a dataaudit run: {'; '.join(wrong[:3])}")


def concat(tables: list[pa.Table], paths: list[Path]) -> pa.Table:
    """The tables read from `paths` as one; RunFormatError when they do not fit together."""
    try:
        return pa.concat_tables(tables, promote_options="default")
    except (pa.ArrowException, ValueError) as e:
        raise RunFormatError(f"{paths[0].parent}: the files {', '.join(p.name for p in paths[:3])} do not fit "
                             f"together ({_first_line(e)})") from None


_KINDS = {
    "int": lambda t: pa.types.is_integer(t) or (pa.types.is_dictionary(t) and pa.types.is_integer(t.value_type)),
    "float": lambda t: pa.types.is_floating(t) or pa.types.is_null(t),
    "bool": lambda t: pa.types.is_boolean(t) or (pa.types.is_dictionary(t) and pa.types.is_boolean(t.value_type)),
    "str": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)
    or (pa.types.is_dictionary(t) and pa.types.is_string(t.value_type)),
    "list": lambda t: pa.types.is_fixed_size_list(t),
}


def _guarded(path: Path, read: Callable[[Path], Any]) -> Any:
    """`read(path)`, with whatever pyarrow raises on a missing, truncated or corrupt file as RunFormatError."""
    try:
        return read(path)
    except FileNotFoundError:
        raise RunFormatError(f"{path}: listed in the run manifest but missing") from None
    except Exception as e:  # pyarrow's errors on damaged files: ArrowInvalid, OSError, ArrowNotImplementedError...
        raise RunFormatError(f"{path}: unreadable Parquet file, damaged or truncated "
                             f"({type(e).__name__}: {_first_line(e)})") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_count(value: Any, least: int) -> bool:
    """None, or an integer >= least."""
    return value is None or (_is_int(value) and value >= least)


def _json_type(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


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

    def __init__(self, max_pending: int = 8, *, pass_through: tuple[type[BaseException], ...] = ()):
        # errors of these types are the caller's (bad input found late), raised as they are
        self._pass_through = pass_through
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self.cpu_s = 0.0  # CPU time the thread spent on jobs (read by benchmarks)
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
            if isinstance(error, self._pass_through):
                raise error
            raise RuntimeError(f"dataaudit could not write the run: {error}") from error

    def _loop(self) -> None:
        while True:
            fn = self._queue.get()
            try:
                if fn is None:
                    return
                if self._error is None:
                    start = time.thread_time()
                    fn()
                    self.cpu_s += time.thread_time() - start
            except BaseException as e:  # surfaced on the training thread
                self._error = e
            finally:
                self._queue.task_done()
                fn = None  # hold nothing of the caller's between jobs (a dropped Tracker can be collected)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")
