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

# Inputs are folded into the sketch once this many bytes of them are buffered.
_INPUT_BUDGET = 32 << 20


@dataclass
class _Pending:
    """The batch the loader yielded last, waiting for its record() call."""

    loader: TrackedLoader
    epoch: _Epoch
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
    inputs: list[tuple[np.ndarray, torch.Tensor]] = field(default_factory=list)   # (ids, x (n, features))
    input_bytes: int = 0
    sketched_batches: int = 0
    projected: list[tuple[np.ndarray, torch.Tensor]] = field(default_factory=list)  # (ids, (n, dim))
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
    sketch_rows : about this many samples per epoch feed the input sketch (moments and
        reservoir): every k-th batch, whole. Every sample also gets a fingerprint, its
        input projected on one fixed random direction, to compare across epochs.
    reservoir : projected inputs kept per epoch for drift tests.
    max_prob_classes : full predicted probabilities are stored up to this many classes.
    rank : process rank for distributed runs (default: torch.distributed's, else 0).
    """

    def __init__(self, run_dir: str | os.PathLike, *, flush_rows: int = 65536, sketch_dim: int = 32,
                 sketch_rows: int = 4096, reservoir: int = 1024, max_prob_classes: int = 32,
                 rank: int | None = None, seed: int = 0):
        for name, value in (("flush_rows", flush_rows), ("sketch_dim", sketch_dim), ("reservoir", reservoir),
                            ("sketch_rows", sketch_rows)):
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
        self._fingerprints: dict[str, Projection] = {}
        self._watch: OptimizerWatch | None = None
        self._closed = False
        self._manifest = self._open_manifest(seed=seed, sketch_dim=sketch_dim, reservoir=reservoir,
                                             sketch_rows=sketch_rows)
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
        counters = self._manifest.setdefault("step_counters", {"step": 0, "attempt": 0})
        self._watch = OptimizerWatch(optimizer, model=model, scaler=scaler, every=every,
                                     epoch_fn=self._train_epoch, start_step=counters["step"],
                                     start_attempt=counters["attempt"])
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
        # Only copies here: the statistics are computed later over many batches at
        # once (see _flush), which costs a few kernels per chunk instead of per batch.
        # Copies, not views: loaders and CUDA graphs may reuse their buffers.
        row: dict[str, Any] = {"ids": ids, "n": n, "loss": losses.float().clone()}
        num_classes = self._manifest.get("num_classes")
        if logits is not None:
            logits = _check_rows("logits", logits, n, ndim=2)
            if num_classes is not None and logits.shape[1] != num_classes:
                raise ValueError(f"record() got logits with {logits.shape[1]} classes; "
                                 f"earlier batches had {num_classes}")
            num_classes = self._manifest["num_classes"] = int(logits.shape[1])
            row["logits"] = logits.detach().float().clone()
        if targets is not None:
            row["label"] = as_targets(targets, n, num_classes).clone()
        epoch = pending.epoch
        if inputs is not None:
            flat = self._check_inputs(epoch, _check_rows("inputs", inputs, n, ndim=None)).detach().reshape(n, -1)
            row["fingerprint"] = self._fingerprint(epoch.split, flat.shape[1])(flat.float())
            if epoch.sketched_batches % self._sketch_every(epoch.split) == 0:
                x = flat.to(torch.float32, copy=True)
                epoch.inputs.append((ids, x))
                epoch.input_bytes += x.numel() * x.element_size()
            epoch.sketched_batches += 1
        pending.recorded = True
        epoch.recorded += n
        epoch.rows.append(row)
        epoch.buffered += n
        if self._watch is not None:
            self._watch.note_loss(row["loss"])
        if epoch.buffered >= self.flush_rows:
            self._flush(epoch)
        elif epoch.input_bytes >= _INPUT_BUDGET:
            self._reduce_inputs(epoch)

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
            # a row per draw keeps the records in draw order: they are also the epoch's draws
            pending.epoch.rows.append({"ids": pending.ids, "n": len(pending.ids)})
        self._pending = None

    def _check_inputs(self, epoch: _Epoch, inputs: torch.Tensor) -> torch.Tensor:
        shape = list(inputs.shape[1:])
        info = self._manifest["splits"][epoch.split]
        if "input_shape" not in info:
            info["input_shape"] = shape
        elif info["input_shape"] != shape:
            raise ValueError(f"record() got inputs of shape {tuple(shape)} per sample; earlier batches of "
                             f"split {epoch.split!r} had {tuple(info['input_shape'])}")
        return inputs

    def _sketch_every(self, split: str) -> int:
        """Every how many batches feed the input sketch, for about `sketch_rows` samples an epoch."""
        info = self._manifest["splits"][split]
        every = info.get("sketch_every")
        if every is None:
            size = info.get("dataset_size") or self._first_epoch_size(split)
            if not size:  # an unknown length: sketch all of the first epoch, then scale down
                return 1
            batch = max(self._loaders[split].batch_size or 1, 1) if split in self._loaders else 1
            batches = max(size // batch, 1)
            every = info["sketch_every"] = max(1, batches * batch // self._manifest["sketch"]["rows"])
        return every

    def _fingerprint(self, split: str, num_features: int) -> Projection:
        """A fixed random direction: one number per input, equal across epochs when the input is."""
        fp = self._fingerprints.get(split)
        if fp is None:
            fp = self._fingerprints[split] = Projection(num_features, 1, self._manifest["sketch"]["seed"] + 1,
                                                        identity=False)
        return fp

    def _first_epoch_size(self, split: str) -> int | None:
        """Samples in the split's first committed epoch (for datasets of unknown length)."""
        seen = [e["samples"] or e["recorded"] for e in self._manifest["epochs"] if e["split"] == split]
        return seen[0] if seen else None

    def _reduce_inputs(self, epoch: _Epoch) -> None:
        """Fold the buffered inputs into the epoch's moments and keep only their projections."""
        if not epoch.inputs:
            return
        ids = np.concatenate([i for i, _ in epoch.inputs])
        x = torch.cat([x for _, x in epoch.inputs])
        epoch.inputs, epoch.input_bytes = [], 0
        projection = self._projection.get(epoch.split)
        if projection is None:
            cfg = self._manifest["sketch"]
            projection = self._projection[epoch.split] = Projection(x.shape[1], cfg["dim"], cfg["seed"])
        with torch.no_grad():
            epoch.moments.update(x)
            epoch.projected.append((ids, projection(x)))

    def _flush(self, epoch: _Epoch) -> None:
        """Compute the buffered rows' statistics, copy them to the host and hand them to the writer."""
        self._reduce_inputs(epoch)
        rows, projected = epoch.rows, epoch.projected
        epoch.rows, epoch.projected, epoch.buffered = [], [], 0
        if projected:
            if epoch.reservoir is None:
                epoch.reservoir = Reservoir(self._manifest["sketch"]["reservoir"])
            epoch.reservoir.update(np.concatenate([i for i, _ in projected]),
                                   torch.cat([p for _, p in projected]).cpu().numpy())
        if not rows:
            return
        table = _records_table(rows, epoch.epoch, store_probs=(self._manifest.get("num_classes") or 0)
                               <= self.max_prob_classes)
        epoch.nonfinite += int((~np.isfinite(table.column("loss").to_numpy())).sum())
        self._write(epoch, "records", table)

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
        # Wait for the commit: a process killed from here on loses at most the next epoch.
        self._writer.flush()

    def _write_steps(self) -> None:
        if self._watch is None:
            return
        steps, layers = self._watch.take()
        # A resumed run continues the step count where this session leaves it.
        self._manifest["step_counters"] = {"step": self._watch.step, "attempt": self._watch._attempts}
        for name, whole in (("steps", steps), ("layers", layers)):
            if whole is None:
                continue
            epochs = whole.column("epoch").to_numpy()
            for number in np.unique(epochs):
                table = whole if epochs[0] == epochs[-1] else whole.filter(epochs == number)
                folder = store.partition_dir(name, epoch=int(number), rank=self.rank)
                rel = (folder / f"part-{self._session}-{len(self._manifest['files']):06d}.parquet").as_posix()
                path = self.path / rel
                self._writer.submit(lambda path=path, table=table: store.write_parquet_atomic(path, table))
                self._manifest["files"].append(rel)

    def _commit(self) -> None:
        """Write the manifest after everything submitted before it."""
        self._manifest["updated"] = _now()
        text = json.dumps(self._manifest, indent=1)
        path = self.path / store.manifest_name(self.rank)
        self._writer.submit(lambda: store.write_text_atomic(path, text))

    def _open_manifest(self, *, seed: int, sketch_dim: int, reservoir: int, sketch_rows: int) -> dict:
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
            "sketch": {"dim": sketch_dim, "reservoir": reservoir, "rows": sketch_rows, "seed": seed},
            "splits": {},
            "epochs": [],
            "files": [],
            "sessions": [session],
        }

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this Tracker is closed; open the run again with "
                               "dataaudit.Tracker(run_dir) to resume it")


def _records_table(rows: list[dict], epoch: int, *, store_probs: bool) -> pa.Table:
    """The records of buffered rows as an Arrow table: statistics computed once over the chunk,
    then one device-to-host copy per column.

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
        "fingerprint": _gather(rows, "fingerprint", n, np.float32, np.nan).reshape(total),
    }
    has_logits = np.repeat([("logits" in r) for r in rows], n)
    if has_logits.any():
        logits = torch.cat([r["logits"] for r in rows if "logits" in r])
        given = torch.from_numpy(labels[has_logits]).to(logits.device)
        with torch.no_grad():
            stats = {k: v.cpu().numpy() for k, v in logit_stats(logits, given).items()}
        valid = (labels[has_logits] >= 0) & (labels[has_logits] < logits.shape[1])
        columns["pred"][has_logits] = stats["pred"]
        columns["prob"][has_logits] = np.where(valid, stats["prob"], np.nan)
        columns["margin"][has_logits] = np.where(valid, stats["margin"], np.nan)
        if store_probs:
            probs = np.full((total, logits.shape[1]), np.nan, np.float32)
            probs[has_logits] = stats["probs"]
            columns["probs"] = pa.FixedSizeListArray.from_arrays(pa.array(probs.reshape(-1)), probs.shape[1])
    return pa.table(columns)


def _gather(rows: list[dict], key: str, n: np.ndarray, dtype: Any, fill: Any) -> np.ndarray:
    """Concatenate a per-sample column of the rows on the host; rows without it get `fill`."""
    out = np.full(int(n.sum()), fill, dtype=dtype)
    present = [i for i, r in enumerate(rows) if key in r]
    if not present:
        return out
    values = torch.cat([rows[i][key] for i in present]).cpu().numpy()
    if len(present) == len(rows):
        return values.astype(dtype, copy=False)
    mask = np.repeat([key in r for r in rows], n)
    out[mask] = values
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
