"""What one pass of a wrapped loader gathers, and how it becomes files.

The training thread only appends copies of the batch's tensors (`EpochBuffer.add`)
and, every `flush_rows` samples, hands the gathered chunk to the writer thread
(`take_chunk`). The writer thread does the rest (`process`): statistics over the
whole chunk at once, the one device-to-host copy, Parquet encoding and the write.
So the training thread never waits for the device, and on a CPU the writing
overlaps with the parts of a training step that leave a core idle.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from dataaudit import store
from dataaudit.track import arrow
from dataaudit.track.batch import check_target_range, logit_stats
from dataaudit.track.sketch import Moments, Reservoir


@dataclass
class Sketched:
    """A batch that feeds the input sketch: its ids, its sketch features (n, features) for the moments, and
    their projection (n, dim) for the reservoir, computed on the training thread (see `EpochBuffer.process`)."""

    ids: np.ndarray
    x: torch.Tensor
    projected: torch.Tensor


@dataclass
class Chunk:
    rows: list[dict]                                  # per record(): ids, n, and device tensors
    inputs: list[Sketched]


@dataclass
class EpochBuffer:
    split: str
    epoch: int
    rank: int
    session: str
    started: float = field(default_factory=time.time)
    expected_batches: int | None = None  # len() of the loader's batch sampler: the epoch is complete at this many
    batches: int = 0            # yielded by the loader
    yielded: int = 0            # samples in those batches, when the loader knows their ids
    recorded: int = 0           # samples passed to record()
    sketched_batches: int = 0
    ended: bool = False
    rows: list[dict] = field(default_factory=list)
    buffered: int = 0
    inputs: list[Sketched] = field(default_factory=list)
    buffered_bytes: int = 0
    # written by the writer thread only:
    nonfinite: int = 0
    soft_targets: bool = False  # some recorded target was soft (mixup, smoothed one-hots)
    chunks: int = 0             # record chunks named so far (on the training thread, see `chunk_file`)
    sketched: bool = False      # some batch fed the input sketch: the epoch writes its sketch files
    files: list[str] = field(default_factory=list)   # what the epoch writes, named before it is written
    moments: Moments = field(default_factory=Moments)
    reservoir: Reservoir | None = None

    def take_chunk(self) -> Chunk:
        chunk = Chunk(self.rows, self.inputs)
        self.rows, self.inputs, self.buffered, self.buffered_bytes = [], [], 0, 0
        self.sketched |= bool(chunk.inputs)
        return chunk

    def chunk_file(self) -> str:
        """Name the next records file (training thread): the manifest lists it before the writer writes it."""
        name = self._file("records", f"part-{self.session}-{self.chunks:05d}.parquet")
        self.chunks += 1
        return name

    def sketch_files(self) -> tuple[str, str] | None:
        """The epoch's sketch files, features then reservoir; None when no batch was sketched."""
        if not self.sketched:
            return None
        return self._file("sketch", "features.parquet"), self._file("sketch", "reservoir.parquet")

    def _file(self, table: str, name: str) -> str:
        rel = (store.partition_dir(table, epoch=self.epoch, rank=self.rank, split=self.split) / name).as_posix()
        self.files.append(rel)
        return rel

    # ------------------------------------------------------- writer thread

    def process(self, chunk: Chunk, run_dir: Path, file: str | None, *, reservoir_size: int, store_probs: bool,
                top_k: int = 0) -> None:
        """Fold a chunk into the sketch and write its records to `file` (named by `chunk_file` when the
        chunk has rows).

        No BLAS call and, for host tensors, no torch kernel runs here: either would start a thread pool of
        its own that spins against the training thread's (on a CPU run, a third of the step time).
        """
        if chunk.inputs:
            self.moments.update(host_cat([s.x for s in chunk.inputs]))
            if self.reservoir is None:
                self.reservoir = Reservoir(reservoir_size)
            self.reservoir.update(np.concatenate([s.ids for s in chunk.inputs]),
                                  host_cat([s.projected for s in chunk.inputs]))
        if any(bool(r["soft"]) for r in chunk.rows if "soft" in r):  # device scalars, read here, off the loop
            self.soft_targets = True
        if chunk.rows:
            columns = records_columns(chunk.rows, self.epoch, store_probs=store_probs, top_k=top_k)
            # drawn-but-unrecorded rows carry NaN for "no loss", not a non-finite loss
            self.nonfinite += int((~np.isfinite(columns["loss"]) & columns["recorded"]).sum())
            store.write_parquet_atomic(run_dir / file, arrow.table(columns))

    def finish(self, run_dir: Path, files: tuple[str, str] | None) -> None:
        """Write the epoch's input sketch to `files` (see `sketch_files`)."""
        if files is not None:
            store.write_parquet_atomic(run_dir / files[0], self.moments.table())
            store.write_parquet_atomic(run_dir / files[1], self.reservoir.table())


def records_columns(rows: list[dict], epoch: int, *, store_probs: bool, top_k: int = 0) -> dict[str, Any]:
    """The records of buffered rows, column by column (numpy arrays; Arrow arrays for the list columns):
    statistics computed once over the chunk, then one device-to-host copy per column.

    store_probs : write every class's probability (column probs); else, with top_k > 0, the top_k most
        probable classes and their probabilities (columns topk_ids, topk_probs).

    Batches drawn but never recorded get rows with recorded=False, so that the
    rows in order are exactly what the loader drew.
    """
    n = np.array([r["n"] for r in rows])
    total = int(n.sum())
    labels = _gather(rows, "label", n, np.int64, -1)
    columns: dict[str, Any] = {
        "epoch": np.full(total, epoch, dtype=np.int32),
        "sample_id": np.concatenate([r["ids"] for r in rows]),
        "recorded": np.repeat([("loss" in r) for r in rows], n),
        "loss": _gather(rows, "loss", n, np.float32, np.nan),
        "prob": np.full(total, np.nan, np.float32),
        "margin": np.full(total, np.nan, np.float32),
        "label": labels,
        "pred": np.full(total, -1, np.int64),
        "fingerprint": _gather(rows, "fingerprint", n, np.float32, np.nan),
    }
    check_target_range(labels, store.MAX_CLASSES, epoch=epoch, logits=False)  # indices the checks can count
    if any("target" in r for r in rows):  # regression
        columns["target"] = _gather(rows, "target", n, np.float32, np.nan)
    if any("target_entropy" in r for r in rows):  # targets given as probabilities
        entropy = _gather(rows, "target_entropy", n, np.float32, np.nan)
        if (entropy > 0).any():  # soft: hard one-hots need neither column
            columns["target_entropy"] = entropy
            columns["target_prob"] = _gather(rows, "target_prob", n, np.float32, np.nan)
    has_logits = np.repeat([("logits" in r) for r in rows], n)
    if has_logits.any():
        logits = host_cat([r["logits"] for r in rows if "logits" in r])
        check_target_range(labels[has_logits], logits.shape[1], epoch=epoch)
        stats = logit_stats(logits, labels[has_logits])
        for name in ("pred", "prob", "margin"):
            columns[name][has_logits] = stats[name]
        if store_probs:
            probs = np.full((total, logits.shape[1]), np.nan, np.float32)
            probs[has_logits] = stats["probs"]
            columns["probs"] = arrow.lists(probs)
        elif top_k:
            columns.update(top_k_columns(stats["probs"], has_logits, top_k))
    return columns


def top_k_columns(probs: np.ndarray, has_logits: np.ndarray, k: int) -> dict[str, pa.Array]:
    """topk_ids (int32) and topk_probs (float32), k per row, most probable first, from probabilities
    (m, classes) of the rows where has_logits (total,) holds; -1 and NaN on the other rows."""
    top = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    p = np.take_along_axis(probs, top, axis=1)
    order = np.argsort(-p, axis=1, kind="stable")
    ids = np.full((len(has_logits), k), -1, np.int32)
    values = np.full((len(has_logits), k), np.nan, np.float32)
    ids[has_logits] = np.take_along_axis(top, order, axis=1)
    values[has_logits] = np.take_along_axis(p, order, axis=1)
    return {"topk_ids": arrow.lists(ids), "topk_probs": arrow.lists(values)}


def _gather(rows: list[dict], key: str, n: np.ndarray, dtype: Any, fill: Any) -> np.ndarray:
    """Concatenate a per-sample column of the rows on the host; rows without it get `fill`."""
    out = np.full(int(n.sum()), fill, dtype=dtype)
    present = [i for i, r in enumerate(rows) if key in r]
    if not present:
        return out
    values = host_cat([rows[i][key] for i in present])
    if len(present) == len(rows):
        return values.astype(dtype, copy=False)
    out[np.repeat([key in r for r in rows], n)] = values
    return out


def host_cat(tensors: list[torch.Tensor]) -> np.ndarray:
    """Concatenate tensors into one host array: on the device, then one copy, for device tensors; in numpy
    for host tensors, since a torch kernel here (the writer thread) would start a second intra-op thread pool
    that competes with the training thread's."""
    if all(t.device.type == "cpu" for t in tensors):
        return np.concatenate([t.numpy() for t in tensors])
    return torch.cat(tensors).cpu().numpy()
