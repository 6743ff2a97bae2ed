"""Reading a run directory written by the Tracker into a `Run` (see `dataaudit.run`).

Ranks are merged; the epoch in progress (not in a manifest) is skipped. A run whose records pass the row
budget is streamed epoch by epoch, holding some epochs' records only (see `dataaudit.budget`). Every file
is checked as it is read: a corrupt or hand-moved file is a `RunFormatError` naming it, never a traceback
from inside pyarrow.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from dataaudit import budget, store
from dataaudit.run import (
    OPTIONAL_RECORD_COLUMNS,
    RECORD_COLUMNS,
    Run,
    Split,
    coverage_from_counts,
    coverage_table,
    empty_layers,
    empty_records,
    empty_steps,
)


def load_run(run_dir: str | Path) -> Run:
    """Read a run directory written by `dataaudit.Tracker`, merging ranks; the epoch in progress is skipped."""
    run_dir = Path(run_dir)
    manifests = store.read_run_manifests(run_dir)
    # what each rank saw of each split, to tell ranks that disagree on the dataset
    meta = {**manifests[0], "ranks": [{"rank": m.get("rank", 0), "splits": m["splits"]} for m in manifests]}
    files: dict[tuple[str, str | None, int], list[Path]] = defaultdict(list)
    step_files: dict[str, dict[int, list[Path]]] = {"steps": defaultdict(list), "layers": defaultdict(list)}
    for manifest in manifests:
        for rel in manifest["files"]:
            m = store.LISTED_FILE.match(rel)
            if m["table"] in step_files:
                step_files[m["table"]][int(m["rank"])].append(run_dir / rel)
            else:
                files[(m["table"], m["split"], int(m["epoch"]))].append(run_dir / rel)
    epochs = [e for m in manifests for e in m["epochs"]]
    classes = meta.get("num_classes")
    splits = {name: _load_split(name, info, epochs, files, classes) for name, info in meta["splits"].items()}
    # Data-parallel replicas step alike: one rank's optimizer telemetry stands for all (the lowest rank's).
    steps = _concat(_lowest_rank(step_files["steps"]), empty_steps(), "steps")
    layers = _concat(_lowest_rank(step_files["layers"]), empty_layers(), "layers")
    if len(steps):
        steps = steps.sort_values(["epoch", "attempt"], kind="stable").reset_index(drop=True)
    return Run(splits, steps, layers, meta, path=run_dir)


def _lowest_rank(by_rank: dict[int, list[Path]]) -> list[Path]:
    return sorted(by_rank[min(by_rank)]) if by_rank else []


def _load_split(name: str, info: dict, epochs: list[dict], files: dict, num_classes: int | None) -> Split:
    entries = [e for e in epochs if e["split"] == name]
    complete: dict[int, bool] = {}
    for e in entries:  # a rank that did not finish its pass makes the epoch incomplete
        complete[e["epoch"]] = complete.get(e["epoch"], True) and bool(e["complete"])
    numbers = sorted(complete)
    record_files = {e: files.get(("records", name, e), []) for e in numbers}
    size = info.get("dataset_size") if info.get("id_source", "index") == "index" else None
    limit = budget.max_rows()
    rows = {e: sum(store.count_rows(p, "records") for p in fs) for e, fs in record_files.items()}
    held = budget.choose_held(numbers, [e for e in numbers if complete[e]], rows, limit)
    extra: dict[str, Any] = {}
    if held is not None:  # beyond the row budget: stream the store, hold some epochs' records
        records, draws, coverage, extra = _stream_split(record_files, complete, held, size, num_classes)
        extra["held_note"] = budget.held_note(held, numbers, sum(rows.values()), limit)
    else:
        records, draws = _load_records(record_files, numbers, num_classes)
        coverage = coverage_table(draws, complete, size)
    features, reservoir = {}, {}
    for e in numbers:
        for path in files.get(("sketch", name, e), []):
            if path.name.startswith("features"):
                features[e] = store.read_table(path, "features").to_pandas()
            elif path.name.startswith("reservoir"):
                table = store.read_table(path, "reservoir")
                values = table.column("value").combine_chunks()
                reservoir[e] = (table.column("sample_id").to_numpy(),
                                values.values.to_numpy().reshape(len(values), values.type.list_size))
    has_probs = {e: fs for e in numbers if (fs := files.get(("records", name, e)))
                 and _has_probs(fs, num_classes)}
    shape = info.get("input_shape")
    return Split(name, records, coverage, draws=draws, features=features, reservoir=reservoir, dataset_size=size,
                 input_shape=tuple(shape) if shape else None, probs_source=has_probs, **extra)


def _load_records(record_files: dict[int, list[Path]], numbers: list[int], num_classes: int | None
                  ) -> tuple[pd.DataFrame, dict[int, np.ndarray]]:
    """(records, draws) of every epoch, read at once."""
    # The records of an epoch, in order and with the drawn-but-unrecorded rows, are its draws.
    paths = [(e, f) for e in numbers for f in record_files[e]]
    if not paths:
        return empty_records(), {e: np.empty(0, np.int64) for e in numbers}
    rows = _read_records(paths, num_classes)
    epoch_of = rows.column("epoch").to_numpy()
    ids = rows.column("sample_id").to_numpy()
    draws = {e: ids[epoch_of == e] for e in numbers}
    del epoch_of, ids
    # filtered and converted in arrow, which frees each column as pandas takes it: at 20M rows
    # the table is about 1 GB, and a copy of it in pandas would double the peak
    rows = recorded_only(rows)
    records = _loss_above_entropy(rows.to_pandas(split_blocks=True, self_destruct=True))
    del rows
    pa.default_memory_pool().release_unused()  # hand the table's memory back to the system now
    return records, draws


def recorded_only(table: pa.Table) -> pa.Table:
    """The rows of a records table that record() recorded (not the drawn-but-unrecorded ones), without the
    `recorded` column."""
    recorded = table.column("recorded")
    if recorded.null_count or not pa.compute.all(recorded).as_py():
        table = table.filter(pa.compute.fill_null(recorded, False))
    return table.drop_columns(["recorded"])


def _stream_split(record_files: dict[int, list[Path]], complete: dict[int, bool], held: list[int],
                  size: int | None, num_classes: int | None) -> tuple[pd.DataFrame, Mapping, pd.DataFrame, dict]:
    """(records of the `held` epochs, draws of every epoch, coverage, Split fields) read one epoch at a time."""
    got = budget.stream(record_files, complete, held,
                        lambda e, paths, columns: _read_records([(e, p) for p in paths], num_classes, columns),
                        universe=size is None)
    tables = got["tables"]
    wide = any(t.schema.field("sample_id").type != pa.int32() for t in tables)
    if wide:  # one epoch's ids did not fit int32: all of them int64, as a full load would
        tables = [t.set_column(t.schema.get_field_index("sample_id"), "sample_id",
                               pa.compute.cast(t.column("sample_id"), pa.int64())) for t in tables]
    if tables:
        rows = store.concat(tables, [p for e in held for p in record_files[e]])
        del tables, got["tables"]
        records = rows.to_pandas(split_blocks=True, self_destruct=True)
        del rows
        if got["curve"].above_entropy:
            records = _loss_above_entropy(records, subtract=True)
        pa.default_memory_pool().release_unused()
    else:
        records = empty_records()
    coverage = coverage_from_counts(got["counts"], complete, size if size is not None else len(got["drawn"]))
    draws = budget.StoredDraws(record_files, got["draws"])
    return records, draws, coverage, {"held_epochs": tuple(held), "epoch_curve": got["curve"].table()}


def _loss_above_entropy(records: pd.DataFrame, *, subtract: bool | None = None) -> pd.DataFrame:
    """Records whose loss is less the soft targets' entropy, where the losses are cross-entropies against them
    (decided on `records`, unless `subtract` says so: a streamed run decides on all its epochs)."""
    if "target_entropy" not in records:
        return records
    loss = records["loss"].to_numpy()
    entropy = np.nan_to_num(records["target_entropy"].to_numpy(), nan=0.0)
    if subtract is None:
        subtract = budget.cross_entropies(*budget.entropy_counts(loss, entropy))
    if subtract:
        records["loss"] = np.maximum(loss - entropy, 0.0).astype(np.float32)
    return records


def _has_probs(paths: list[Path], num_classes: int | None) -> bool:
    """Whether the records in `paths` store probabilities: all of them (one per class of the run) or the top k."""
    schema = store.read_schema(paths[0], "records")
    if "topk_probs" in schema.names:
        return True
    if "probs" not in schema.names:
        return False
    width = schema.field("probs").type.list_size
    if num_classes is not None and width != num_classes:
        raise store.RunFormatError(f"{paths[0]}: stores probabilities of {width} classes; the run has "
                                   f"{num_classes} (num_classes in the manifest)")
    return True


def _read_records(paths: list[tuple[int, Path]], num_classes: int | None = None,
                  columns: list[str] | None = None) -> pa.Table:
    """The records of (epoch, path) pairs as one table, narrowed file by file (label and pred to int32,
    sample_id to int32 when every id fits), so that the wide columns of all the files are never held at once.

    Each file's epochs must be its partition's, and its labels and predictions class indices of the run
    (below num_classes; below MAX_CLASSES when the run recorded no logits): a corrupt value would make
    the checks allocate per class.
    """
    small = pa.int32()
    limit = np.iinfo(np.int32)
    classes = max(num_classes, 2) if num_classes else store.MAX_CLASSES  # one logit: binary, labels 0 and 1
    parts = []
    for epoch, path in paths:
        present = set(store.read_schema(path, "records").names)
        optional = [c for c in OPTIONAL_RECORD_COLUMNS if c in present]
        wanted = [*RECORD_COLUMNS, *optional, "recorded"]
        if columns is not None:
            wanted = [c for c in wanted if c in {"epoch", "sample_id", "label", "pred", *columns}]
        table = store.read_table(path, "records", columns=wanted)
        bounds = pa.compute.min_max(table.column("epoch")).as_py()
        if table.num_rows and not bounds["min"] == bounds["max"] == epoch:
            raise store.RunFormatError(f"{path}: holds rows of epochs {bounds['min']}..{bounds['max']}; "
                                       f"its partition is epoch {epoch} (a file moved or copied by hand?)")
        for column in ("label", "pred"):
            top = pa.compute.max(table.column(column)).as_py()
            if top is not None and top >= classes:
                raise store.RunFormatError(
                    f"{path}: holds {column} {top}; the run has {classes} classes"
                    + (" (num_classes in the manifest)" if num_classes else " at most (MAX_CLASSES, no logits)"))
        for name in ("label", "pred", "epoch"):
            i = table.schema.get_field_index(name)
            if i >= 0 and table.schema.field(i).type != small:
                # any negative class index means "no label": -1 (a NaN target cast to int is -2^63)
                column = pa.compute.max_element_wise(table.column(i), -1) if name != "epoch" else table.column(i)
                try:
                    table = table.set_column(i, name, pa.compute.cast(column, small))
                except pa.ArrowException as e:
                    raise store.RunFormatError(f"{path}: column {name!r} out of range ({e})") from None
        parts.append(table)
    ids = [t.column("sample_id") for t in parts if t.num_rows]
    bounds = [pa.compute.min_max(c).as_py() for c in ids]
    fits = all(b["min"] is None or (limit.min <= b["min"] and b["max"] <= limit.max) for b in bounds)
    target = small if fits else pa.int64()
    for k, table in enumerate(parts):
        i = table.schema.get_field_index("sample_id")
        if table.schema.field(i).type != target:
            parts[k] = table.set_column(i, "sample_id", pa.compute.cast(table.column(i), target))
    return store.concat(parts, [p for _, p in paths])


def _concat(paths: list[Path], empty: pd.DataFrame, schema: str) -> pd.DataFrame:
    if not paths:
        return empty
    return store.concat([store.read_table(p, schema) for p in paths], paths).to_pandas()
