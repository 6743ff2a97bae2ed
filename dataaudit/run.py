"""The one data model of a run: what was captured, as columnar tables.

Checks read a `Run`, never a DataLoader or a model. `load_run` builds it from a
run directory written by the Tracker; `Run.from_arrays` builds the same thing
from labels and out-of-sample probabilities (what `scan` has).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from dataaudit import budget, store

# sample_id is int32 in a loaded run whose ids all fit in it (dataset indices), int64 otherwise;
# label and pred are int32 (class indices, -1 = unknown): at 20M rows each int64 column costs 80 MB more.
RECORD_COLUMNS = {"epoch": "int32", "sample_id": "int64", "loss": "float32", "prob": "float32",
                  "margin": "float32", "label": "int32", "pred": "int32", "fingerprint": "float32"}
# Written only by some runs: the target of a regression run, the entropy of soft targets (float32; NaN elsewhere).
OPTIONAL_RECORD_COLUMNS = {"target": "float32", "target_entropy": "float32", "target_prob": "float32"}
COVERAGE_COLUMNS = ["epoch", "seen", "unique", "missing", "duplicates", "complete", "order_hash"]


@dataclass(frozen=True)
class Split:
    """What one split (train, val...) of a run captured.

    records : one row per (epoch, sample), of the `held_epochs` only when the run passed the row budget
        (see `dataaudit.budget`): epoch, sample_id, loss, label, pred, prob, margin,
        fingerprint (the input projected on a fixed random direction; NaN without inputs); regression
        runs add target (see `Run.task`). With soft targets (mixup, smoothed one-hots) the records add
        target_entropy and target_prob (the dominant class's target probability), and loss is what the
        model can still remove: the recorded cross-entropy less the targets' entropy, the least it can be
        (their KL divergence), so that the loss curves read as with hard labels. A recorded loss that is
        not a cross-entropy against those targets (below their entropy) is left as recorded.
    coverage : one row per epoch: epoch, seen, unique, missing, duplicates, complete, order_hash.
    draws : epoch -> ids in the order the loader drew them, shape (seen,). A mapping that reads the epochs
        whose records are not held back from the store on each access (see `budget.StoredDraws`).
    features : epoch -> per-feature moments of the inputs (feature, count, mean, m2, min, max).
    reservoir : epoch -> (ids (r,), projected inputs (r, dim)), the same ids each epoch when drawn.
    """

    name: str
    records: pd.DataFrame
    coverage: pd.DataFrame
    draws: dict[int, np.ndarray] = field(default_factory=dict)
    features: dict[int, pd.DataFrame] = field(default_factory=dict)
    reservoir: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    dataset_size: int | None = None
    input_shape: tuple[int, ...] | None = None
    probs_source: dict[int, Any] = field(default_factory=dict, repr=False)
    # Beyond the row budget (see `dataaudit.budget`): the epochs whose records are held (None: all of them),
    # the loss curve of every complete epoch read in the stream, and what audit.json says of it.
    held_epochs: tuple[int, ...] | None = None
    epoch_curve: pd.DataFrame | None = field(default=None, repr=False)
    held_note: dict | None = None

    @property
    def epochs(self) -> list[int]:
        """Epochs with a committed record, ascending."""
        return sorted(int(e) for e in self.coverage["epoch"]) if len(self.coverage) else []

    @property
    def complete_epochs(self) -> list[int]:
        return sorted(int(e) for e in self.coverage.loc[self.coverage["complete"], "epoch"])

    def with_records(self, epochs: list[int]) -> list[int]:
        """Those of `epochs` whose records are held: all of them, unless the run passed the row budget."""
        if self.held_epochs is None:
            return list(epochs)
        held = set(self.held_epochs)
        return [e for e in epochs if e in held]

    def probs(self, epoch: int, num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """(sample_ids (m,), probabilities (m, classes)) recorded in `epoch`, or None if not stored.

        Runs with more classes than the tracker's max_prob_classes store each sample's top-k classes only;
        their probabilities are rebuilt (see `top_k_probs`) with `num_classes` columns.
        """
        source = self.probs_source.get(epoch)
        if source is None:
            return None
        if isinstance(source, tuple):
            return source
        if probs_kind(source) == "top-k":
            return top_k_probs(source, num_classes)
        parts = [store.read_table(path, "records", columns=["sample_id", "probs", "recorded"]) for path in source]
        if any("probs" not in t.column_names for t in parts):
            return None
        table = store.concat(parts, list(source))
        table = table.filter(table.column("recorded"))
        column = table.column("probs").combine_chunks()
        if column.null_count == len(column):
            return None
        width = column.type.list_size
        values = column.values.to_numpy(zero_copy_only=False).reshape(-1, width)
        return table.column("sample_id").to_numpy(), values


@dataclass(frozen=True)
class Run:
    """A captured run.

    records : the train split's per-(epoch, sample) table (see `Split`).
    steps : one row per optimizer step: epoch, step, attempt, skipped, loss, grad_norm,
        grad_norm_raw, update_ratio, lr (and lr_1... for further param groups), clipped.
    coverage : the train split's per-epoch coverage.
    layers : per-parameter norms on sampled steps: epoch, step, param, update_norm, weight_norm, grad_norm.
    meta : the manifest (num_classes, optimizer, sessions...).
    """

    splits: dict[str, Split]
    steps: pd.DataFrame
    layers: pd.DataFrame
    meta: dict
    path: Path | None = None

    @property
    def train(self) -> Split:
        return self.splits.get("train") or _empty_split("train")

    @property
    def records(self) -> pd.DataFrame:
        return self.train.records

    @property
    def coverage(self) -> pd.DataFrame:
        return self.train.coverage

    @property
    def task(self) -> str:
        """"classification", "binary" (one logit) or "regression", as the tracker recorded it
        (runs recorded before the task was, and scans, are classification)."""
        return (self.meta.get("task") or {}).get("kind") or "classification"

    @property
    def soft_targets(self) -> bool:
        """Whether some recorded target was soft (mixup, cutmix, smoothed one-hots)."""
        return bool((self.meta.get("task") or {}).get("soft_targets"))

    @property
    def num_classes(self) -> int | None:
        if self.task == "regression":
            return None
        n = self.meta.get("num_classes")
        if n is None and len(self.records):
            n = int(max(self.records["label"].max(), self.records["pred"].max())) + 1
        return n

    def split(self, name: str) -> Split | None:
        return self.splits.get(name)

    @classmethod
    def from_arrays(cls, labels: np.ndarray, pred_probs: np.ndarray, *, features: np.ndarray | None = None,
                    ids: np.ndarray | None = None, meta: dict | None = None) -> Run:
        """A one-epoch run from labels (n,) and out-of-sample probabilities (n, k), as `scan` has them."""
        labels = np.asarray(labels).astype(np.int32)
        pred_probs = np.asarray(pred_probs, dtype=np.float64)
        n, k = pred_probs.shape
        ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
        index = np.clip(labels, 0, k - 1)
        given = pred_probs[np.arange(n), index]
        others = pred_probs.copy()
        others[np.arange(n), index] = -np.inf
        records = pd.DataFrame({
            "epoch": np.zeros(n, np.int32), "sample_id": ids,
            "loss": (-np.log(np.clip(given, 1e-12, None))).astype(np.float32),
            "prob": given.astype(np.float32), "margin": (given - others.max(1)).astype(np.float32),
            "label": labels, "pred": pred_probs.argmax(1).astype(np.int32),
            "fingerprint": np.full(n, np.nan, np.float32),
        })
        split_features = {}
        if features is not None:
            split_features[0] = moments_table(np.asarray(features, dtype=np.float64).reshape(n, -1))
        split = Split("train", records, coverage_table({0: ids}, {0: True}, n), draws={0: ids},
                      features=split_features, dataset_size=n,
                      input_shape=None if features is None else tuple(np.shape(features)[1:]),
                      probs_source={0: (ids, pred_probs)})
        task = {"kind": "classification", "soft_targets": False, "num_classes": k}
        return cls({"train": split}, _empty_steps(), _empty_layers(),
                   {"num_classes": k, "task": task, **(meta or {})})


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
    steps = _concat(_lowest_rank(step_files["steps"]), _empty_steps(), "steps")
    layers = _concat(_lowest_rank(step_files["layers"]), _empty_layers(), "layers")
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
        return _empty_records(), {e: np.empty(0, np.int64) for e in numbers}
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
        records = _empty_records()
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


def probs_kind(source: Any) -> str | None:
    """How an epoch's probabilities are stored: "full" (every class), "top-k" (the most probable classes
    of each sample) or None."""
    if source is None:
        return None
    if isinstance(source, tuple):
        return "full"
    names = set(store.read_schema(source[0], "records").names)
    return "full" if "probs" in names else "top-k" if "topk_probs" in names else None


def top_k_probs(paths: list[Path], num_classes: int | None) -> tuple[np.ndarray, np.ndarray] | None:
    """(sample_ids (m,), probabilities (m, num_classes) float32) rebuilt from the top-k columns of `paths`:
    the stored classes get their probabilities, the others share what is left evenly (the model's mass
    outside its top k is small and unknown in detail; spreading it keeps every row a distribution)."""
    parts = [store.read_table(path, "records", columns=["sample_id", "topk_ids", "topk_probs", "recorded"])
             for path in paths]
    table = store.concat(parts, list(paths))
    table = table.filter(table.column("recorded"))
    ids_col, p_col = table.column("topk_ids").combine_chunks(), table.column("topk_probs").combine_chunks()
    if not len(ids_col):
        return None
    k = ids_col.type.list_size
    top = ids_col.values.to_numpy(zero_copy_only=False).reshape(-1, k)
    p = p_col.values.to_numpy(zero_copy_only=False).reshape(-1, k).astype(np.float32)
    classes = int(num_classes) if num_classes else int(top.max()) + 1
    rest = np.clip(1.0 - np.nansum(p, axis=1), 0.0, None) / max(classes - k, 1)
    out = np.repeat(rest.astype(np.float32)[:, None], classes, axis=1)
    valid = top >= 0
    rows = np.repeat(np.arange(len(top)), k).reshape(-1, k)
    out[rows[valid], top[valid]] = p[valid]
    out[~valid.any(1)] = np.nan  # drawn with no logits recorded
    return table.column("sample_id").to_numpy(), out


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


def unique_ids(ids: np.ndarray, *, return_inverse: bool = False):
    """np.unique of sample ids (n,), in O(n) when they are dense non-negative integers (dataset indices):
    sorting 20M draws takes seconds, counting them a fraction of that. Same results as np.unique."""
    ids = np.asarray(ids)
    if len(ids) and ids.dtype.kind in "iu" and ids.min() >= 0 and ids.max() < 4 * len(ids) + 1024:
        present = np.bincount(ids) > 0
        uniq = np.flatnonzero(present).astype(ids.dtype)
        if not return_inverse:
            return uniq
        return uniq, (np.cumsum(present) - 1)[ids]
    return np.unique(ids, return_inverse=return_inverse)


def union_ids(parts: Iterable[np.ndarray]) -> np.ndarray:
    """The distinct ids of all `parts` (each of shape (m,)), ascending, taken in one part at a time: the draws
    of a long run are read back epoch by epoch (see `budget.StoredDraws`), never all held at once."""
    out = None
    for ids in parts:
        uniq = unique_ids(np.asarray(ids))
        out = uniq if out is None else unique_ids(np.concatenate([out, uniq.astype(np.result_type(out, uniq))]))
    return out if out is not None else np.empty(0, np.int64)


def last_records(ids: np.ndarray, epochs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct ids ascending, the row of each one's last record: its latest epoch, then its latest row
    there), each of shape (u,), for rows of ids and epochs (n,). In O(n) when the ids are dense non-negative
    integers and the epochs do not decrease (the store's order); the same as a stable sort by epoch otherwise."""
    ids, epochs = np.asarray(ids), np.asarray(epochs)
    if (len(ids) and ids.dtype.kind in "iu" and ids.min() >= 0 and ids.max() < 4 * len(ids) + 1024
            and (epochs[1:] >= epochs[:-1]).all()):
        last = np.full(int(ids.max()) + 1, -1, dtype=np.int64)
        np.maximum.at(last, ids, np.arange(len(ids)))
        uniq = np.flatnonzero(last >= 0)
        return uniq.astype(ids.dtype), last[uniq]
    order = np.argsort(epochs, kind="stable")[::-1]
    uniq, first = np.unique(ids[order], return_index=True)
    return uniq, order[first]


def positions(sorted_ids: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pos, ok): where each of `ids` sits in `sorted_ids` (unique, ascending), and whether it is there at all."""
    n = len(sorted_ids)
    if n and sorted_ids[0] == 0 and sorted_ids[-1] == n - 1:  # 0..n-1: an id is its own position
        ok = (ids >= 0) & (ids < n)
        return np.where(ok, ids, 0), ok
    pos = np.searchsorted(sorted_ids, ids)
    ok = (pos < n) & (sorted_ids[np.minimum(pos, n - 1)] == ids)
    return pos, ok


def in_epochs(records: pd.DataFrame, epochs: list[int]) -> pd.DataFrame:
    """The rows of `records` whose epoch is in `epochs`: `records` itself, not a copy, when that is all of them
    (at 10^6 samples x 20 epochs a copy is about 1 GB)."""
    keep = np.isin(records["epoch"].to_numpy(), np.asarray(epochs, dtype=np.int64))
    return records if keep.all() else records[keep]


def coverage_table(draws: dict[int, np.ndarray], complete: dict[int, bool], dataset_size: int | None) -> pd.DataFrame:
    """Per epoch: draws (seen), distinct ids (unique), ids of the dataset not drawn (missing),
    draws beyond the first of an id (duplicates), whether the pass ran to its end, and a hash of the order.

    Without a dataset size (explicit ids), the dataset is taken to be every id drawn in any epoch.
    """
    universe = len(union_ids(draws.values())) if dataset_size is None else dataset_size
    counts = {epoch: (len(ids), len(unique_ids(ids)), order_hash(ids)) for epoch, ids in draws.items()}
    return coverage_from_counts(counts, complete, universe)


def coverage_from_counts(counts: dict[int, tuple[int, int, str]], complete: dict[int, bool],
                         universe: int) -> pd.DataFrame:
    """The `coverage_table` of epochs known by their counts: epoch -> (seen, unique, order hash), against a
    dataset of `universe` ids."""
    rows = [{"epoch": epoch, "seen": seen, "unique": unique, "missing": max(universe - unique, 0),
             "duplicates": seen - unique, "complete": bool(complete.get(epoch, False)), "order_hash": order}
            for epoch, (seen, unique, order) in sorted(counts.items())]
    return pd.DataFrame(rows, columns=COVERAGE_COLUMNS).astype({"complete": bool})


def moments_table(x: np.ndarray) -> pd.DataFrame:
    """Per-feature moments of x (n, d), in the layout the tracker writes."""
    return pd.DataFrame({
        "feature": np.arange(x.shape[1], dtype=np.int64), "count": np.full(x.shape[1], len(x), np.int64),
        "mean": x.mean(0), "m2": ((x - x.mean(0)) ** 2).sum(0), "min": x.min(0), "max": x.max(0),
    })


def order_hash(ids: np.ndarray) -> str:
    """A hash of the order of `ids` (seen,): epochs drawn in the same order have the same one."""
    import hashlib
    return hashlib.blake2b(np.ascontiguousarray(ids, dtype=np.int64).tobytes(), digest_size=8).hexdigest()


def _concat(paths: list[Path], empty: pd.DataFrame, schema: str) -> pd.DataFrame:
    if not paths:
        return empty
    return store.concat([store.read_table(p, schema) for p in paths], paths).to_pandas()


def _empty_records() -> pd.DataFrame:
    return pd.DataFrame({k: pd.Series(dtype=v) for k, v in RECORD_COLUMNS.items()})


def _empty_steps() -> pd.DataFrame:
    return pd.DataFrame({k: pd.Series(dtype=v) for k, v in {
        "epoch": "int64", "step": "int64", "attempt": "int64", "skipped": "bool", "loss": "float64",
        "grad_norm": "float64", "grad_norm_raw": "float64", "update_ratio": "float64", "lr": "float64",
        "clipped": "bool"}.items()})


def _empty_layers() -> pd.DataFrame:
    return pd.DataFrame({k: pd.Series(dtype=v) for k, v in {
        "epoch": "int64", "step": "int64", "param": "object", "update_norm": "float64",
        "weight_norm": "float64", "grad_norm": "float64"}.items()})


def _empty_split(name: str) -> Split:
    return Split(name, _empty_records(), pd.DataFrame(columns=COVERAGE_COLUMNS))
