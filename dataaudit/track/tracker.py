"""The Tracker: captures, during training, what the checks later read.

Per (epoch, sample): loss, given label, prediction, probability of the given
label, margin and (for up to `max_prob_classes` classes) the full predicted
probabilities. Per epoch: the ids the loader drew, in order, and a bounded
sketch of the inputs. Per optimizer step (with `watch`): learning rates,
gradient and update norms, clipping, skipped AMP steps.

Values stay on their device until `flush_rows` samples have gathered or the
epoch ends; then one copy brings them to the host and a background thread
writes them (see `dataaudit.store` for the files).
"""
from __future__ import annotations

import atexit
import json
import os
import time
import uuid
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from dataaudit import store
from dataaudit.track.batch import as_targets, logit_stats, per_sample_losses
from dataaudit.track.loader import TrackedLoader
from dataaudit.track.optim import OptimizerWatch
from dataaudit.track.sketch import Moments, Projection, Reservoir

_FLOAT_COLUMNS = ("loss", "prob", "margin")


@dataclass
class _Pending:
    """The batch the loader yielded last, waiting for its record() call."""

    loader: TrackedLoader
    epoch: "_Epoch"
    ids: np.ndarray | None
    recorded: bool = False


@dataclass
class _Epoch:
    split: str
    epoch: int
    started: float = field(default_factory=time.time)
    batches: int = 0
    yielded: int = 0
    recorded: int = 0
    nonfinite: int = 0
    chunk: int = 0
    ended: bool = False
    rows: list[dict] = field(default_factory=list)    # per record(): device tensors and host ids
    buffered: int = 0
    draws: list[np.ndarray] = field(default_factory=list)
    moments: Moments = field(default_factory=Moments)
    reservoir: Reservoir | None = None
    files: list[str] = field(default_factory=list)


class Tracker:
    """Capture a training run into `run_dir`; resumes the run if `run_dir` holds one.

    Parameters
    ----------
    run_dir : path of the run directory, created if needed.
    flush_rows : samples gathered on the device before one copy to the host.
    sketch_dim : dimension of the random projection kept of each input.
    reservoir : inputs kept per epoch for drift tests.
    max_prob_classes : full predicted probabilities are stored up to this many classes.
    rank : process rank for distributed runs (default: torch.distributed's, else 0).
    """

    def __init__(self, run_dir: str | os.PathLike, *, flush_rows: int = 65536, sketch_dim: int = 32,
                 reservoir: int = 1024, max_prob_classes: int = 32, rank: int | None = None, seed: int = 0):
        for name, value in (("flush_rows", flush_rows), ("sketch_dim", sketch_dim), ("reservoir", reservoir)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Tracker needs {name} to be a positive integer; got {value!r}")
        self.path = Path(run_dir)
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"Tracker needs a directory for the run; {self.path} is a file")
        self.rank = _default_rank() if rank is None else int(rank)
        self.flush_rows = flush_rows
        self.max_prob_classes = max_prob_classes
        self._session = uuid.uuid4().hex[:8]
        self._loaders: dict[str, TrackedLoader] = {}
        self._open: dict[str, _Epoch] = {}
        self._pending: _Pending | None = None
        self._projection: dict[str, Projection] = {}
        self._watch: OptimizerWatch | None = None
        self._closed = False
        self._manifest = self._open_manifest(seed=seed, sketch_dim=sketch_dim, reservoir=reservoir)
        self._writer = store.Writer()
        self._commit()
        atexit.register(_close_at_exit, weakref.ref(self))

    # ------------------------------------------------------------------ public

    def wrap(self, loader: Any, split: str = "train") -> TrackedLoader:
        """Return a loader that yields exactly what `loader` yields; each full pass is one epoch of `split`."""
        self._check_open()
        if not isinstance(split, str) or not split.isidentifier():
            raise ValueError(f"wrap() needs split to be a short name such as 'train' or 'val'; got {split!r}")
        if split in self._loaders:
            raise ValueError(f"wrap() was already called for split {split!r}; wrap each loader once")
        tracked = TrackedLoader(loader, self, split)
        self._loaders[split] = tracked
        info = self._manifest["splits"].setdefault(split, {})
        info["dataset_size"] = tracked.dataset_size
        info.setdefault("id_source", "index" if tracked.has_index else "explicit")
        return tracked

    def watch(self, optimizer: torch.optim.Optimizer, *, model: torch.nn.Module | None = None,
              scaler: Any = None, every: int = 10) -> None:
        """Record optimizer telemetry at every step; update norms every `every` steps (0: never).

        Pass the AMP `scaler` (a GradScaler) to count skipped steps and unscale raw gradient norms.
        """
        self._check_open()
        if self._watch is not None:
            raise ValueError("watch() was already called; dataaudit watches one optimizer per run")
        self._watch = OptimizerWatch(optimizer, model=model, scaler=scaler, every=every,
                                     epoch_fn=self._train_epoch)
        self._manifest["optimizer"] = {
            "class": type(optimizer).__name__,
            "param_groups": len(optimizer.param_groups),
            "defaults": {k: v for k, v in optimizer.defaults.items() if isinstance(v, (int, float, bool, str))},
            "scaler": scaler is not None,
            "update_every": every,
        }

    def record(self, losses: torch.Tensor, *, logits: torch.Tensor | None = None,
               targets: torch.Tensor | None = None, inputs: torch.Tensor | None = None,
               ids: Any = None) -> None:
        """Record the batch the wrapped loader yielded last.

        Parameters
        ----------
        losses : Tensor of shape (batch,), one loss per sample (reduction="none").
        logits : Tensor of shape (batch, classes), optional.
        targets : Tensor of shape (batch,) of class indices, or (batch, classes) one-hot or soft.
        inputs : Tensor of shape (batch, ...), the inputs the model saw, for the input sketch.
        ids : sample ids, shape (batch,); needed for an IterableDataset, else the loader's indices.
        """
        self._check_open()
        pending = self._pending
        if pending is None:
            raise RuntimeError("record() was called before a wrapped loader yielded a batch; "
                               "iterate tracker.wrap(loader) and call record() once per batch")
        if pending.recorded:
            raise RuntimeError("record() was already called for this batch; call it once per batch the loader yields")
        losses = per_sample_losses(losses)
        n = losses.shape[0]
        ids = self._batch_ids(pending, ids, n)
        row: dict[str, Any] = {"ids": ids, "n": n, "loss": losses.float()}
        num_classes = self._manifest.get("num_classes")
        if logits is not None:
            logits = _check_rows("logits", logits, n, ndim=2)
            if num_classes is not None and logits.shape[1] != num_classes:
                raise ValueError(f"record() got logits with {logits.shape[1]} classes; earlier batches had {num_classes}")
            num_classes = self._manifest["num_classes"] = int(logits.shape[1])
        if targets is not None:
            row["label"] = as_targets(targets, n, num_classes)
        if logits is not None:
            with torch.no_grad():
                stats = logit_stats(logits, row.get("label"))
            probs = stats.pop("probs")
            if num_classes <= self.max_prob_classes:
                row["probs"] = probs
            row.update(stats)
        if inputs is not None:
            self._sketch(pending.epoch, row, _check_rows("inputs", inputs, n, ndim=None))
        pending.recorded = True
        pending.epoch.draws.append(ids)
        pending.epoch.recorded += n
        pending.epoch.rows.append(row)
        pending.epoch.buffered += n
        if self._watch is not None:
            self._watch.note_loss(row["loss"].mean())
        if pending.epoch.buffered >= self.flush_rows:
            self._flush(pending.epoch)

    def close(self) -> None:
        """End any epoch in progress, write everything, and release the hooks. Safe to call twice."""
        if self._closed:
            return
        try:
            for epoch in list(self._open.values()):
                self._end(epoch, exhausted=False)
            self._write_steps()
            self._manifest["sessions"][-1]["closed"] = _now()
            self._commit()
            self._writer.close()
        finally:
            self._closed = True
            if self._watch is not None:
                self._watch.remove()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------- called by loaders

    def _start_epoch(self, loader: TrackedLoader) -> _Epoch:
        self._check_open()
        split = loader.split
        if split in self._open:  # the previous pass was abandoned without being exhausted
            self._end(self._open[split], exhausted=False)
        info = self._manifest["splits"][split]
        number = info.get("next_epoch", 0)
        if split != "train" and "train" in self._manifest["splits"]:
            # A validation pass belongs to the training epoch it follows.
            number = max(number, self._train_epoch())
        info["next_epoch"] = number + 1
        epoch = _Epoch(split=split, epoch=number)
        self._open[split] = epoch
        return epoch

    def _batch_yielded(self, loader: TrackedLoader, epoch: _Epoch, ids: np.ndarray | None) -> None:
        self._note_unrecorded()
        epoch.batches += 1
        if ids is not None:
            epoch.yielded += len(ids)
        self._pending = _Pending(loader, epoch, ids)

    def _end_epoch(self, loader: TrackedLoader, epoch: _Epoch, *, exhausted: bool) -> None:
        if not self._closed and not epoch.ended:
            self._end(epoch, exhausted=exhausted)

    # ---------------------------------------------------------------- internal

    def _train_epoch(self) -> int:
        train = self._open.get("train")
        if train is not None:
            return train.epoch
        return max(self._manifest["splits"].get("train", {}).get("next_epoch", 1) - 1, 0)

    def _batch_ids(self, pending: _Pending, ids: Any, n: int) -> np.ndarray:
        if ids is None:
            if pending.ids is None:
                raise ValueError("record() needs ids= for this loader: its dataset is an IterableDataset, "
                                 "whose samples have no index")
            ids = pending.ids
        else:
            ids = ids.detach().cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
            if ids.dtype.kind not in "iu":
                raise TypeError(f"record() needs integer sample ids; got ids of dtype {ids.dtype}")
            ids = ids.astype(np.int64).reshape(-1)
            self._manifest["splits"][pending.loader.split]["id_source"] = "explicit"
        if len(ids) != n:
            source = "ids" if pending.ids is None or ids is not pending.ids else "the loader's batch"
            raise ValueError(f"record() got {n} losses but {source} has {len(ids)} samples; "
                             "pass one loss per sample of the batch (reduction='none')")
        return ids

    def _note_unrecorded(self) -> None:
        """A batch that was drawn but never recorded still counts as drawn."""
        pending = self._pending
        if pending is not None and not pending.recorded and pending.ids is not None and not pending.epoch.ended:
            pending.epoch.draws.append(pending.ids)
        self._pending = None

    def _sketch(self, epoch: _Epoch, row: dict, inputs: torch.Tensor) -> None:
        x = inputs.detach().reshape(inputs.shape[0], -1)
        if not x.is_floating_point():
            x = x.float()
        shape = list(inputs.shape[1:])
        info = self._manifest["splits"][epoch.split]
        if "input_shape" not in info:
            info["input_shape"] = shape
        elif info["input_shape"] != shape:
            raise ValueError(f"record() got inputs of shape {tuple(shape)} per sample; earlier batches of "
                             f"split {epoch.split!r} had {tuple(info['input_shape'])}")
        projection = self._projection.get(epoch.split)
        if projection is None:
            cfg = self._manifest["sketch"]
            projection = self._projection[epoch.split] = Projection(x.shape[1], cfg["dim"], cfg["seed"])
        with torch.no_grad():
            x = x.float()
            epoch.moments.update(x)
            row["proj"] = projection(x)

    def _flush(self, epoch: _Epoch) -> None:
        """Copy the epoch's buffered rows to the host and hand them to the writer."""
        rows, draws = epoch.rows, epoch.draws
        epoch.rows, epoch.draws, epoch.buffered = [], [], 0
        if draws:
            self._write(epoch, "draws", pa.table({"sample_id": np.concatenate(draws)}))
        if not rows:
            return
        table, proj = _records_table(rows, epoch.epoch)
        epoch.nonfinite += int((~np.isfinite(table.column("loss").to_numpy())).sum())
        self._write(epoch, "records", table)
        if proj is not None:
            if epoch.reservoir is None:
                epoch.reservoir = Reservoir(self._manifest["sketch"]["reservoir"])
            epoch.reservoir.update(table.column("sample_id").to_numpy(), proj)

    def _write(self, epoch: _Epoch, table_name: str, table: pa.Table, name: str | None = None) -> None:
        folder = store.partition_dir(table_name, epoch=epoch.epoch, rank=self.rank, split=epoch.split)
        if name is None:
            name = f"part-{self._session}-{epoch.chunk:05d}.parquet"
            epoch.chunk += 1
        rel = (folder / name).as_posix()
        epoch.files.append(rel)
        path = self.path / rel
        self._writer.submit(lambda: store.write_parquet_atomic(path, table))

    def _end(self, epoch: _Epoch, *, exhausted: bool) -> None:
        self._note_unrecorded()
        epoch.ended = True
        self._open.pop(epoch.split, None)
        self._flush(epoch)
        features = epoch.moments.table()
        if features is not None:
            self._write(epoch, "sketch", features, name="features.parquet")
        if epoch.reservoir is not None:
            self._write(epoch, "sketch", epoch.reservoir.table(), name="reservoir.parquet")
        if epoch.split == "train":
            self._write_steps()
        self._manifest["epochs"].append({
            "split": epoch.split, "epoch": epoch.epoch, "rank": self.rank, "complete": exhausted,
            "batches": epoch.batches, "samples": epoch.yielded, "recorded": epoch.recorded,
            "nonfinite_losses": epoch.nonfinite, "started": _iso(epoch.started), "ended": _now(),
            "session": self._session,
        })
        self._manifest["files"].extend(epoch.files)
        self._commit()

    def _write_steps(self) -> None:
        if self._watch is None:
            return
        steps, layers = self._watch.take()
        for name, frame in (("steps", steps), ("layers", layers)):
            if frame is None:
                continue
            for number, part in frame.groupby("epoch", sort=True):
                folder = store.partition_dir(name, epoch=int(number), rank=self.rank)
                rel = (folder / f"part-{self._session}-{len(self._manifest['files']):06d}.parquet").as_posix()
                table = pa.Table.from_pandas(part.reset_index(drop=True), preserve_index=False)
                path = self.path / rel
                self._writer.submit(lambda path=path, table=table: store.write_parquet_atomic(path, table))
                self._manifest["files"].append(rel)

    def _commit(self) -> None:
        """Write the manifest after everything submitted before it."""
        self._manifest["updated"] = _now()
        text = json.dumps(self._manifest, indent=1)
        path = self.path / store.manifest_name(self.rank)
        self._writer.submit(lambda: store.write_text_atomic(path, text))

    def _open_manifest(self, *, seed: int, sketch_dim: int, reservoir: int) -> dict:
        manifest_path = self.path / store.manifest_name(self.rank)
        session = {"id": self._session, "opened": _now(), "closed": None, "pid": os.getpid()}
        if manifest_path.exists():
            manifest = store.read_manifest(self.path, self.rank)
            moved = store.move_uncommitted(self.path, set(manifest["files"]), rank=self.rank)
            session["resumed"] = True
            session["moved_to_partial"] = len(moved)
            manifest["sessions"].append(session)
            return manifest
        if self.path.is_dir() and any(p for p in self.path.iterdir() if not p.name.startswith(".")) \
                and self.rank == 0:
            raise ValueError(f"Tracker needs an empty or new directory, or an existing dataaudit run; "
                             f"{self.path} holds other files and no {store.MANIFEST}")
        self.path.mkdir(parents=True, exist_ok=True)
        return {
            "format": store.FORMAT,
            "version": store.FORMAT_VERSION,
            "created": _now(),
            "updated": _now(),
            "dataaudit_version": _version(),
            "torch_version": torch.__version__,
            "rank": self.rank,
            "world_size": _world_size(),
            "num_classes": None,
            "sketch": {"dim": sketch_dim, "reservoir": reservoir, "seed": seed},
            "splits": {},
            "epochs": [],
            "files": [],
            "sessions": [session],
        }

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this Tracker is closed; open the run again with dataaudit.Tracker(run_dir) to resume it")


def _records_table(rows: list[dict], epoch: int) -> tuple[pa.Table, np.ndarray | None]:
    """The records of buffered rows as an Arrow table, and the input projections; one device copy per column."""
    n = np.array([r["n"] for r in rows])
    total = int(n.sum())
    columns: dict[str, Any] = {
        "epoch": np.full(total, epoch, dtype=np.int32),
        "sample_id": np.concatenate([r["ids"] for r in rows]),
    }
    for name in _FLOAT_COLUMNS:
        columns[name] = _gather(rows, name, n, np.float32, np.nan)
    columns["label"] = _gather(rows, "label", n, np.int64, -1)
    columns["pred"] = _gather(rows, "pred", n, np.int64, -1)
    probs = _gather(rows, "probs", n, np.float32, np.nan)
    if probs is not None and probs.ndim == 2:
        flat = pa.array(probs.reshape(-1), type=pa.float32())
        columns["probs"] = pa.FixedSizeListArray.from_arrays(flat, probs.shape[1])
    proj = _gather(rows, "proj", n, np.float32, np.nan)
    table = pa.table({k: v for k, v in columns.items() if v is not None})
    return table, (proj if proj is not None and proj.ndim == 2 else None)


def _gather(rows: list[dict], key: str, n: np.ndarray, dtype: Any, fill: Any) -> np.ndarray | None:
    """Concatenate one column of the rows; rows without it are filled with `fill`."""
    present = [i for i, r in enumerate(rows) if key in r]
    if not present:
        return None if key in ("probs", "proj") else np.full(int(n.sum()), fill, dtype=dtype)
    values = torch.cat([rows[i][key] for i in present]).cpu().numpy().astype(dtype, copy=False)
    if len(present) == len(rows):
        return values
    if values.ndim == 2:  # a 2-d column must be present in every row to be kept
        return None
    out = np.full(int(n.sum()), fill, dtype=dtype)
    starts = np.concatenate([[0], np.cumsum(n)])
    offset = 0
    for i in present:
        out[starts[i]:starts[i + 1]] = values[offset:offset + n[i]]
        offset += n[i]
    return out


def _check_rows(name: str, tensor: Any, n: int, *, ndim: int | None) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"record() needs {name} as a tensor; got {type(tensor).__name__}")
    if ndim is not None and tensor.ndim != ndim:
        raise ValueError(f"record() needs {name} of shape (batch, classes); got shape {tuple(tensor.shape)}")
    if tensor.ndim == 0 or tensor.shape[0] != n:
        raise ValueError(f"record() got {n} losses but {name} has shape {tuple(tensor.shape)}; "
                         f"the first dimension must be the batch ({n})")
    return tensor


def _close_at_exit(ref: weakref.ref) -> None:
    tracker = ref()
    if tracker is not None and not tracker._closed:
        try:
            tracker.close()
        except Exception:  # the interpreter is going away; the committed epochs are safe
            pass


def _default_rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", 0))


def _world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1))


def _version() -> str:
    from dataaudit import __version__
    return __version__


def _now() -> str:
    return _iso(time.time())


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"
