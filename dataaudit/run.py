"""The one data model of a run: what was captured, as columnar tables.

Checks read a `Run`, never a DataLoader or a model. `dataaudit.load.load_run` builds
it from a run directory written by the Tracker; `Run.from_arrays` builds the same thing
from labels and out-of-sample probabilities (what `scan` has).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.compute  # noqa: F401  (pa.compute)

from dataaudit import store

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
        return self.splits.get("train") or empty_split("train")

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
        return cls({"train": split}, empty_steps(), empty_layers(),
                   {"num_classes": k, "task": task, **(meta or {})})


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


def empty_records() -> pd.DataFrame:
    return pd.DataFrame({k: pd.Series(dtype=v) for k, v in RECORD_COLUMNS.items()})


def empty_steps() -> pd.DataFrame:
    return pd.DataFrame({k: pd.Series(dtype=v) for k, v in {
        "epoch": "int64", "step": "int64", "attempt": "int64", "skipped": "bool", "loss": "float64",
        "grad_norm": "float64", "grad_norm_raw": "float64", "update_ratio": "float64", "lr": "float64",
        "clipped": "bool"}.items()})


def empty_layers() -> pd.DataFrame:
    return pd.DataFrame({k: pd.Series(dtype=v) for k, v in {
        "epoch": "int64", "step": "int64", "param": "object", "update_norm": "float64",
        "weight_norm": "float64", "grad_norm": "float64"}.items()})


def empty_split(name: str) -> Split:
    return Split(name, empty_records(), pd.DataFrame(columns=COVERAGE_COLUMNS))
