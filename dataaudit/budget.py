"""A row budget for loading a run: memory that does not grow with the number of epochs.

A loaded run holds one row per (epoch, sample) in `Split.records`. Up to a budget of rows
(MAX_ROWS, or the environment variable DATAAUDIT_MAX_ROWS) every epoch's records are held, as
they always were. Beyond it the store is streamed epoch by epoch (one epoch's files at a time,
freed before the next), and the records of only some complete epochs are held: the first, the
last and the rest evenly spaced between, at least MIN_HELD of them. What must come from every
epoch is computed in the stream:

- coverage (each epoch's draws: counts, distinct ids, order hash);
- the per-epoch loss and accuracy curve (`Split.epoch_curve`), that the plateau, optimizer and
  attribution read, so that a plateau is found over all the epochs;
- the draws themselves, kept for the held epochs and read back from the store one epoch at a time
  for the others (`StoredDraws`).

The checks that read per-sample records (labels, targets, subsets, drift, class_imbalance,
attribution's window) see the held epochs; `Split.held_epochs` and audit.json's `run.records_held`
say which and why.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from dataaudit import store

# At 10^6 samples x 20 epochs (2 x 10^7 rows) a full load peaks at about 1.9 GB: the budget keeps such runs
# whole and caps a longer run near the same peak (about 90 bytes a held row, with the checks' own arrays).
MAX_ROWS = 25_000_000
ENV = "DATAAUDIT_MAX_ROWS"
# Held epochs at the least, whatever the budget: the subsets check needs 6 complete epochs and the labels
# check a window of a few; at 10^7 samples this is 8 x 10^7 rows (about 8 GB at the peak).
MIN_HELD = 8
CURVE_COLUMNS = ["epoch", "loss", "nonfinite", "accuracy"]


def max_rows() -> int:
    """The row budget: DATAAUDIT_MAX_ROWS when set (a positive integer), else MAX_ROWS."""
    text = os.environ.get(ENV)
    if text is None or not text.strip():
        return MAX_ROWS
    try:
        value = int(text.strip().replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{ENV} must be a positive number of rows (e.g. 25000000); got {text!r}")
    return value


def choose_held(epochs: list[int], complete: list[int], rows: dict[int, int], budget: int) -> list[int] | None:
    """The epochs whose records to hold, or None for all of them (their rows fit the budget).

    epochs : every epoch with records, ascending; complete : those that ran to their end.
    rows : epoch -> rows in its files (drawn, recorded or not). Beyond the budget: as many complete epochs
    as fit it at their mean size (at least MIN_HELD), the first and the last and the rest evenly spaced;
    all epochs when none is complete.
    """
    total = sum(rows.get(e, 0) for e in epochs)
    if total <= budget:
        return None
    pool = complete or epochs
    per_epoch = max(total / max(len(epochs), 1), 1.0)
    k = max(MIN_HELD, int(budget // per_epoch))
    if k >= len(pool):
        return list(pool)
    picks = np.unique(np.linspace(0, len(pool) - 1, num=k).round().astype(int))
    return [pool[i] for i in picks]


class StoredDraws(Mapping):
    """epoch -> ids drawn, in order (seen,): held epochs from memory, the others read from the store on
    each access (the sample_id column of the epoch's files, in file order), so that they are never all held.

    Iterate with `.items()` or `.values()` one epoch at a time; `list(draws.values())` holds them all again.
    """

    def __init__(self, files: dict[int, list[Path]], held: dict[int, np.ndarray]):
        self._files = files
        self._held = held

    def __getitem__(self, epoch: int) -> np.ndarray:
        if epoch in self._held:
            return self._held[epoch]
        paths = self._files[epoch]  # KeyError for an epoch the split does not have
        if not paths:
            return np.empty(0, np.int64)
        parts = [store.read_table(p, "records", columns=["sample_id"]).column("sample_id") for p in paths]
        ids = pa.chunked_array([c for part in parts for c in part.chunks], type=parts[0].type).to_numpy()
        return _narrow(ids)

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self._files))

    def __len__(self) -> int:
        return len(self._files)


def _narrow(ids: np.ndarray) -> np.ndarray:
    """int32 ids when they all fit (as a loaded run's records hold them), else int64."""
    info = np.iinfo(np.int32)
    if ids.dtype.kind in "iu" and (not len(ids) or (int(ids.min()) >= info.min and int(ids.max()) <= info.max)):
        return ids.astype(np.int32, copy=False)
    return ids.astype(np.int64, copy=False)


def entropy_counts(loss: np.ndarray, entropy: np.ndarray) -> tuple[int, int]:
    """(finite losses, those of them at least their targets' entropy): a cross-entropy against soft targets is
    at least their entropy (float32 rounding aside). loss, entropy : (n,), entropy NaN-free."""
    finite = np.isfinite(loss)
    return int(finite.sum()), int((loss[finite] >= entropy[finite] - 1e-3).sum())


def cross_entropies(finite: int, above: int) -> bool:
    """Whether losses are cross-entropies against soft targets: 99% of the finite ones at least their entropy."""
    return finite > 0 and above / finite >= 0.99


class CurveTally:
    """Per-epoch sums of the recorded losses and predictions, streamed: the `epoch_losses` table of every
    complete epoch without holding their records.

    With soft targets the loss is read less the targets' entropy when the whole run's losses are
    cross-entropies against them (as `load._loss_above_entropy` decides on the held records).
    """

    def __init__(self) -> None:
        self._rows: list[dict] = []
        self._finite = 0
        self._above = 0  # finite losses at least their targets' entropy

    def add(self, epoch: int, table: pa.Table, *, complete: bool) -> None:
        """table : one epoch's recorded rows (loss, label, pred; target_entropy where soft)."""
        loss = table.column("loss").to_numpy().astype(np.float32, copy=False)
        finite = np.isfinite(loss)
        adjusted = None
        if "target_entropy" in table.column_names:
            entropy = np.nan_to_num(table.column("target_entropy").to_numpy().astype(np.float32, copy=False),
                                    nan=0.0)
            counted, above = entropy_counts(loss, entropy)
            self._finite += counted
            self._above += above
            adjusted = np.maximum(loss - entropy, 0.0).astype(np.float32)
        if not complete or not len(loss):  # as epoch_losses: an epoch without a recorded row has no curve point
            return
        label = table.column("label").to_numpy()
        labelled = label >= 0
        correct = int((table.column("pred").to_numpy()[labelled] == label[labelled]).sum())
        self._rows.append({
            "epoch": int(epoch), "rows": len(loss), "finite": int(finite.sum()),
            "sum": float(loss[finite].astype(np.float64).sum()),
            "sum_adjusted": float(adjusted[finite].astype(np.float64).sum()) if adjusted is not None else np.nan,
            "labelled": int(labelled.sum()), "correct": correct})

    @property
    def above_entropy(self) -> bool:
        """Whether the losses are cross-entropies against soft targets (99% of finite ones at least their entropy)."""
        return cross_entropies(self._finite, self._above)

    def table(self) -> pd.DataFrame:
        """Per complete epoch: epoch, loss, nonfinite, accuracy (see `checks.curves.epoch_losses`)."""
        use = "sum_adjusted" if self.above_entropy else "sum"
        rows = [{"epoch": r["epoch"],
                 "loss": r[use] / r["finite"] if r["finite"] else np.nan,
                 "nonfinite": 1.0 - r["finite"] / r["rows"] if r["rows"] else np.nan,
                 "accuracy": r["correct"] / r["labelled"] if r["labelled"] else np.nan} for r in self._rows]
        return pd.DataFrame(rows, columns=CURVE_COLUMNS).astype(
            {"epoch": "int64", "loss": "float64", "nonfinite": "float64", "accuracy": "float64"})


def stream(files: dict[int, list[Path]], complete: dict[int, bool], held: list[int],
           read: Callable[[int, list[Path], list[str] | None], pa.Table], *, universe: bool = True) -> dict:
    """Read a split's records epoch by epoch, keeping the `held` epochs' rows.

    files : epoch -> its records files; complete : epoch -> whether it ran to its end.
    read(epoch, paths, columns) : the epoch's checked, narrowed records table (columns None: all of them).
    universe : whether to collect every id drawn (the dataset, when its size is unknown).

    Returns tables (the held epochs' recorded rows, without `recorded`), draws (epoch -> ids (seen,) for the
    held epochs), counts (epoch -> (seen, unique, order hash) for every epoch), drawn (every id drawn, unique,
    ascending; empty without `universe`) and curve (a CurveTally).
    """
    from dataaudit.load import recorded_only
    from dataaudit.run import order_hash, unique_ids

    wanted = set(held)
    tables, draws, counts = [], {}, {}
    drawn = np.empty(0, np.int64)
    curve = CurveTally()
    for epoch in sorted(files):
        paths = files[epoch]
        if not paths:
            counts[epoch] = (0, 0, order_hash(np.empty(0, np.int64)))
            continue
        # an epoch not held is read for its draws and its curve only: the wide columns stay on disk
        table = read(epoch, paths, None if epoch in wanted else
                     ["epoch", "sample_id", "loss", "label", "pred", "target_entropy", "recorded"])
        ids = table.column("sample_id").to_numpy()
        uniq = unique_ids(ids)
        counts[epoch] = (len(ids), len(uniq), order_hash(ids))
        if universe:
            drawn = unique_ids(np.concatenate([drawn, uniq.astype(np.int64)]))
        table = recorded_only(table)
        curve.add(epoch, table, complete=complete.get(epoch, False))
        if epoch in wanted:
            tables.append(table)
            draws[epoch] = ids
        del table, ids, uniq
    return {"tables": tables, "draws": draws, "counts": counts, "drawn": drawn, "curve": curve}


def held_note(held: list[int], epochs: list[int], rows: int, budget: int) -> dict:
    """What audit.json says of a run whose records were held for some epochs only (`run.records_held`)."""
    return {"epochs": [int(e) for e in held], "of_epochs": len(epochs), "rows": int(rows), "max_rows": int(budget),
            "reason": f"the split's {rows:,} rows exceed the row budget of {budget:,} ({ENV}): the records of "
                      f"{len(held)} of {len(epochs)} epochs were held (first, last, evenly spaced); coverage and "
                      "the loss curve were read from every epoch"}
