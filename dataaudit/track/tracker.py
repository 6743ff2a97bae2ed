"""The Tracker: captures, during training, what the checks later read.

Per (epoch, sample): loss, given label, prediction, probability of the given
label, margin and (for up to `max_prob_classes` classes) the full predicted
probabilities. Per epoch: the ids the loader drew, in order, and a bounded
sketch of the inputs. Per optimizer step (with `watch`): learning rates,
gradient and update norms, clipping, skipped AMP steps.

record() only copies the batch's tensors; every `flush_rows` samples and at
the end of each epoch the gathered chunk goes to a background thread, which
computes the statistics, copies them to the host once and writes them (see
`dataaudit.track.epoch`, and `dataaudit.store` for the files). The end of an
epoch waits for nothing: the writer thread commits the manifest once the
epoch's files are written (see `dataaudit.track.commit`), so a killed process
loses the epoch in progress and at most the one whose files were still being
written.
"""
from __future__ import annotations

import atexit
import os
import uuid
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dataaudit import store
from dataaudit.track import lock
from dataaudit.track.batch import TargetRangeError, as_target_tensor, check_rows, float32_copy, per_sample_losses
from dataaudit.track.commit import Committer
from dataaudit.track.epoch import EpochBuffer
from dataaudit.track.inputs import InputRecorder
from dataaudit.track.loader import Draws, TrackedLoader, base_loader, check_loader, hook, hooked_draws
from dataaudit.track.manifest import check_run_dir, default_rank, iso, now, open_manifest
from dataaudit.track.optim import OptimizerWatch, step_files, write_steps
from dataaudit.track.probes import Probes, check_options, param_info
from dataaudit.track.sampler_info import sampler_facts
from dataaudit.track.task import infer_task, read_batch

# What record() gathers on the device for the writer thread (losses, logits, sketched inputs) is handed over
# at this many samples (unless flush_rows says otherwise) or this many bytes, whichever comes first.
_FLUSH_ROWS = 65536
_BUFFER_BUDGET = 64 << 20


@dataclass
class _Pending:
    """The batch the loop took last, waiting for its record() call."""

    draws: Draws
    epoch: EpochBuffer
    ids: np.ndarray | None
    recorded: bool = False


class Tracker:
    """Capture a training run into `run_dir`; resumes the run if `run_dir` holds one.

    Parameters
    ----------
    run_dir : path of the run directory, created if needed.
    flush_rows : samples gathered on the device before they go to the writer thread (default 65,536, and
        at most 64 MB of losses, logits and sketched inputs): each hand-over writes one file per epoch.
        The epoch's last chunk is written while the next epoch runs.
    sketch_dim : dimension of the random projection kept of each input.
    sketch_rows : about this many samples per epoch feed the input sketch (moments and
        reservoir): every k-th batch, whole. Every sample also gets a fingerprint, its
        input projected on one fixed random direction, to compare across epochs.
    reservoir : projected inputs kept per epoch for drift tests.
    max_prob_classes : full predicted probabilities are stored up to this many classes.
    top_k_probs : above max_prob_classes, the `top_k_probs` most probable classes and their probabilities
        are stored per sample instead (what confident learning needs for many classes); 0 stores none.
    rank : process rank for distributed runs (default: torch.distributed's, else $RANK, else 0),
        learnt at the first write (wrap, watch, the first epoch, close), not at construction:
        a tracker made before the process group exists still writes as its own rank.
    """

    def __init__(self, run_dir: str | os.PathLike, *, flush_rows: int | None = None, sketch_dim: int = 32,
                 sketch_rows: int = 2048, reservoir: int = 1024, max_prob_classes: int = 32,
                 top_k_probs: int = 8, rank: int | None = None, seed: int = 0):
        for name, value in (("flush_rows", flush_rows or 1), ("sketch_dim", sketch_dim), ("reservoir", reservoir),
                            ("sketch_rows", sketch_rows)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Tracker needs {name} to be a positive integer; got {value!r}")
        self.path = Path(run_dir)
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"Tracker needs a directory for the run; {self.path} is a file")
        check_run_dir(self.path)
        self._rank = None if rank is None else int(rank)
        self.flush_rows = flush_rows
        self.max_prob_classes = max_prob_classes
        if not isinstance(top_k_probs, int) or top_k_probs < 0:
            raise ValueError(f"Tracker needs top_k_probs to be a non-negative integer; got {top_k_probs!r}")
        self.top_k_probs = top_k_probs
        self._session = uuid.uuid4().hex[:8]
        self._loaders: dict[str, Any] = {}       # split -> the loader given last to wrap() or track()
        self._open: dict[str, EpochBuffer] = {}
        self._draws: dict[str, Draws] = {}      # split -> the Draws of its loader hooked last
        self._pending: _Pending | None = None
        self._inputs = InputRecorder()
        self._watch: OptimizerWatch | None = None
        self._probes: Probes | None = None
        self._closed = False
        self._settings = {"seed": seed, "sketch_dim": sketch_dim, "reservoir": reservoir, "sketch_rows": sketch_rows}
        self._manifest_data: dict | None = None   # opened at the first write, once the rank is known
        self._lock: lock.RankLock | None = None
        self._writer = store.Writer(pass_through=(TargetRangeError,))
        self._committer = Committer(self.path, self._writer)
        atexit.register(_close_at_exit, weakref.ref(self))

    @property
    def rank(self) -> int:
        """This process's rank; asking for it fixes it (see `rank` above)."""
        self._manifest  # noqa: B018 (opening the manifest learns the rank)
        return self._rank

    @property
    def _manifest(self) -> dict:
        """The run's manifest for this rank, opened (created or resumed) on first use."""
        if self._manifest_data is None:
            if self._rank is None:
                self._rank = default_rank()
            # One writer per rank: a second Tracker on this run and rank is refused (see track/lock.py).
            self._lock = lock.acquire(self.path, self._rank, session=self._session)
            weakref.finalize(self, lock.release, self._lock).atexit = False  # dropped without close()
            try:
                self._manifest_data = open_manifest(self.path, self._rank, self._session, **self._settings)
            except BaseException:
                lock.release(self._lock)
                raise
            if self._lock.took_over is not None:
                note = f"took over the lock of rank {self._rank} from {lock.describe(self._lock.took_over)}, gone"
                self._manifest_data["sessions"][-1]["took_over_lock"] = self._lock.took_over
                warnings.warn(f"dataaudit: {self.path}: {note}", RuntimeWarning, stacklevel=3)
            self._commit()
        return self._manifest_data

    # ------------------------------------------------------------------ public

    def wrap(self, loader: Any, split: str = "train") -> TrackedLoader:
        """Return a loader that yields exactly what `loader` yields; each full pass is one epoch of `split`.

        An epoch is complete once `len(loader)` batches of it were drawn (or the pass was
        exhausted). Wrapping another loader for the same split (a loader re-created every
        epoch) continues that split's epochs.
        """
        self._check_split(split, "wrap()")
        tracked = TrackedLoader(loader, self, split)
        self._add_split(split, tracked, tracked.dataset_size, tracked.has_index, facts_of=loader)
        return tracked

    def track(self, loader: Any, split: str = "train") -> Any:
        """Hook `loader`'s own batch sampler, in place, to learn each batch's sample ids; return `loader`.

        For training frameworks that iterate the DataLoader themselves (see
        `dataaudit.integrations`): the loader stays the very same DataLoader, with its
        (distributed) sampler, workers and class, and yields the very same batches.
        Call `batch_start` as the loop takes each batch, then `record`. A new loader for
        the same split (re-created every epoch) continues that split; tracking the same
        loader again changes nothing. Accelerate's prepared loaders are hooked at the
        DataLoader they draw from.
        """
        self._check_split(split, "track()")
        drawing = base_loader(loader)
        if not check_loader(drawing, "track()"):
            raise ValueError("track() needs a DataLoader over a map-style dataset, whose samples have indices; "
                             "for an IterableDataset use wrap() and pass ids= to record()")
        if hooked_draws(drawing, self) is None:
            draws = self._draws[split] = Draws(self, split, drawing.batch_size)
            hook(drawing, draws)
            size = len(drawing.dataset) if hasattr(drawing.dataset, "__len__") else None
            self._add_split(split, loader, size, True, facts_of=drawing)
        return loader

    def batch_start(self, index: int | None = None, split: str = "train") -> np.ndarray:
        """The loop took the next batch of a loader given to `track()`: the one `record()` records next.

        Parameters
        ----------
        index : the batch's position in the pass (a framework's `batch_idx`), if known: batches
            drawn before it and never taken count as drawn but not recorded.
        split : the split of the loader.

        Returns
        -------
        ids : ndarray of shape (batch,), the batch's sample ids.
        """
        self._check_open()
        draws = self._draws.get(split)
        if draws is None:
            raise RuntimeError(f"batch_start() needs a loader of split {split!r} given to track() first")
        return self._take(draws, index)

    def end_epoch(self, split: str = "train") -> None:
        """The loop ended its pass over `split`: end the epoch now rather than at the next pass or close().
        It is complete when the loader's `len()` batches were taken."""
        self._check_open()
        epoch = self._open.get(split)
        if epoch is not None:
            self._end(epoch, exhausted=False)

    def watch(self, optimizer: torch.optim.Optimizer, *, model: torch.nn.Module | None = None,
              scaler: Any = None, every: int | None = None, scheduler: Any = None,
              activations: bool | int = False) -> None:
        """Record optimizer telemetry at every step; update norms every `every` steps (0: never; None, the
        default: every 10 steps, sparser when measuring them would cost over 0.25% of the step time).

        Pass the AMP `scaler` (a GradScaler) to count skipped steps and unscale raw gradient norms, the
        lr `scheduler` to fingerprint its position with the optimizer's state at each epoch end, and
        `activations=True` (or every k steps) to probe dead and saturated units (see `dataaudit.track.probes`).
        """
        self._check_open()
        if self._watch is not None:
            raise ValueError("watch() was already called; dataaudit watches one optimizer per run")
        check_options(model=model, scheduler=scheduler, activations=activations)
        counters = self._manifest.setdefault("step_counters", {"step": 0, "attempt": 0})
        self._watch = OptimizerWatch(optimizer, model=model, scaler=scaler, every=every,
                                     epoch_fn=self._train_epoch, start_step=counters["step"],
                                     start_attempt=counters["attempt"])
        self._manifest["optimizer"] = {
            "class": type(optimizer).__name__,
            "param_groups": len(optimizer.param_groups),
            "defaults": {k: v for k, v in optimizer.defaults.items() if isinstance(v, (int, float, bool, str))},
            "scaler": scaler is not None,
            "update_every": "adaptive" if every is None else every,
            "params": param_info(optimizer, model),
        }
        self._probes = Probes(optimizer, model=model, scheduler=scheduler, scaler=scaler, activations=activations,
                              step_fn=lambda: self._watch.step)

    def record(self, losses: torch.Tensor, *, logits: torch.Tensor | None = None,
               targets: torch.Tensor | None = None, inputs: torch.Tensor | dict | None = None,
               ids: Any = None) -> None:
        """Record the batch the wrapped loader yielded last.

        Parameters
        ----------
        losses : Tensor of shape (batch,), one loss per sample (reduction="none").
        logits : Tensor of shape (batch, classes), or (batch,) / (batch, 1) for a single-logit binary
            classifier (BCEWithLogitsLoss); None for regression.
        targets : Tensor of shape (batch,) of class indices, (batch, classes) one-hot or soft (mixup,
            label smoothing), 0/1 or probabilities (batch,) for one logit, or floats (batch,) / (batch, d)
            for regression (no logits). The first batch with logits or targets decides the task
            (`dataaudit.track.task`); a later batch that contradicts it is an error.
        inputs : the inputs the model saw, for the input sketch: a tensor of shape (batch, ...), or a dict of
            tensors (HF-style input_ids, attention_mask...; padded per batch is fine). See
            `dataaudit.track.inputs` for what is kept of each kind.
        ids : sample ids, shape (batch,); needed for an IterableDataset, else the loader's indices.
        """
        self._check_open()
        self._writer.raise_error()  # what the writer found wrong in earlier batches (targets out of range)
        pending = self._pending
        if pending is None:
            raise RuntimeError("record() was called before a wrapped loader yielded a batch; "
                               "iterate tracker.wrap(loader) (or call batch_start() for a tracked one) "
                               "and call record() once per batch")
        if pending.recorded:
            raise RuntimeError("record() was already called for this batch; call it once per batch the loader yields")
        if self._probes is not None and isinstance(losses, torch.Tensor):
            self._probes.note_losses(losses)  # the tensor in the graph, not the detached copy: see track/backward.py
        losses = per_sample_losses(losses)
        n = losses.shape[0]
        ids = self._batch_ids(pending, ids, n)
        # Only copies here: the statistics are computed later over many batches at
        # once (see _flush), which costs a few kernels per chunk instead of per batch.
        # Copies, not views: loaders and CUDA graphs may reuse their buffers.
        row: dict[str, Any] = {"ids": ids, "n": n, "loss": float32_copy(losses)}
        logits = None if logits is None else check_rows("logits", logits, n)
        targets = None if targets is None else as_target_tensor(targets)
        if targets is not None:
            check_rows("targets", targets, n)
        task = self._task(logits, targets)
        if task is not None:
            row.update(read_batch(task, logits, targets, n))
        epoch = pending.epoch
        if inputs is not None:
            loader = self._loaders.get(epoch.split)
            self._inputs.record(self._manifest, epoch, row, ids, inputs, n,
                                batch_size=getattr(loader, "batch_size", None))
        pending.recorded = True
        epoch.recorded += n
        epoch.rows.append(row)
        epoch.buffered += n
        epoch.buffered_bytes += sum(t.numel() * t.element_size() for t in row.values() if isinstance(t, torch.Tensor))
        if self._watch is not None:
            self._watch.note_loss(row["loss"])
        if epoch.buffered >= (self.flush_rows or _FLUSH_ROWS) or epoch.buffered_bytes >= _BUFFER_BUDGET:
            self._flush(epoch)

    def close(self) -> None:
        """End any epoch in progress, write everything, and release the hooks. Safe to call twice."""
        if self._closed:
            return
        try:
            for epoch in list(self._open.values()):
                self._end(epoch, exhausted=False)
            self._write_steps()
            self._manifest["sessions"][-1]["closed"] = now()
            self._commit()
            self._writer.close()
        finally:
            self._closed = True
            lock.release(self._lock)
            if self._watch is not None:
                self._watch.remove()
            if self._probes is not None:
                self._probes.remove()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------- called by loaders

    def _start_epoch(self, draws: Draws, *, expected_batches: int | None) -> EpochBuffer:
        """A sampler began a pass over `draws.split`: a new epoch, ending the split's open one."""
        self._check_open()
        split = draws.split
        self._draws[split] = draws
        previous = self._open.pop(split, None)
        info = self._manifest["splits"][split]
        if previous is not None:
            if previous.batches == 0 and not previous.rows:
                # a pass nobody took a batch from (a framework re-creating its iterator) is no epoch
                info["next_epoch"] = previous.epoch
            else:  # the previous pass was abandoned: complete if len() batches were taken
                self._end(previous, exhausted=False)
        number = info.get("next_epoch", 0)
        if split != "train" and "train" in self._manifest["splits"]:
            # A validation pass belongs to the training epoch it follows.
            number = max(number, self._train_epoch())
        info["next_epoch"] = number + 1
        epoch = EpochBuffer(split=split, epoch=number, rank=self.rank, session=self._session,
                            expected_batches=expected_batches)
        self._open[split] = epoch
        return epoch

    def _take(self, draws: Draws, index: int | None = None) -> np.ndarray | None:
        """The loop took the next batch of `draws` (the index-th of the pass, if given); returns its ids."""
        epoch = draws.epoch
        if epoch is None or epoch.ended:
            raise RuntimeError(f"a batch of split {draws.split!r} was taken but its loader's sampler began no pass; "
                               "track() the loader before the loop starts iterating it")
        if index is not None:
            if index < draws.taken:
                raise ValueError(f"batch_start() got index={index}, but batch {draws.taken} of this pass "
                                 f"was taken already; pass each batch's index once, in order")
            while draws.taken < index and draws.pending:  # drawn, never given to the loop
                self._took(draws, epoch, draws.pending.popleft())
        if draws.indexed and not draws.pending:
            raise RuntimeError(f"a batch of split {draws.split!r} was taken, but its sampler drew only "
                               f"{draws.taken} batches this pass")
        ids = draws.pending.popleft() if draws.indexed else None
        self._took(draws, epoch, ids)
        return ids

    def _took(self, draws: Draws, epoch: EpochBuffer, ids: np.ndarray | None) -> None:
        self._note_unrecorded()
        draws.taken += 1
        epoch.batches += 1
        if ids is not None:
            epoch.yielded += len(ids)
        self._pending = _Pending(draws, epoch, ids)

    def _end_epoch(self, epoch: EpochBuffer | None, *, exhausted: bool) -> None:
        if epoch is not None and not self._closed and not epoch.ended:
            self._end(epoch, exhausted=exhausted)

    # ---------------------------------------------------------------- internal

    def _check_split(self, split: str, caller: str) -> None:
        self._check_open()
        if not isinstance(split, str) or not split.isidentifier():
            raise ValueError(f"{caller} needs split to be a short name such as 'train' or 'val'; got {split!r}")

    def _add_split(self, split: str, loader: Any, dataset_size: int | None, has_index: bool, *,
                   facts_of: Any) -> None:
        """Note the split's loader; `facts_of` is the DataLoader whose sampling contract is recorded."""
        self._loaders[split] = loader
        info = self._manifest["splits"].setdefault(split, {})
        info["dataset_size"] = dataset_size
        info["loader"] = sampler_facts(facts_of)
        info.setdefault("id_source", "index" if has_index else "explicit")

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
            self._manifest["splits"][pending.draws.split]["id_source"] = "explicit"
        if len(ids) != n:
            source = "ids" if pending.ids is None or ids is not pending.ids else "the loader's batch"
            raise ValueError(f"record() got {n} losses but {source} has {len(ids)} samples; "
                             "pass one loss per sample of the batch (reduction='none')")
        return ids

    def _task(self, logits: torch.Tensor | None, targets: torch.Tensor | None) -> dict | None:
        """The run's task, decided by the first batch that shows one (see `dataaudit.track.task`)."""
        task = self._manifest.get("task")
        if task is None:
            task = infer_task(logits, targets)
            if task is None:
                return None
            self._manifest["task"] = task
            self._manifest["num_classes"] = task["num_classes"]
        elif task["kind"] == "classification" and task["num_classes"] is None and logits is not None:
            # decided from targets alone; the first logits give the number of classes
            if logits.ndim != 2 or logits.shape[1] < 2:
                raise ValueError(f"record() got logits of shape {tuple(logits.shape)}; earlier batches of this run "
                                 "had integer class targets (classification with several classes)")
            task["num_classes"] = self._manifest["num_classes"] = int(logits.shape[1])
        return task

    def _note_unrecorded(self) -> None:
        """A batch that was drawn but never recorded still counts as drawn."""
        pending = self._pending
        if pending is not None and not pending.recorded and pending.ids is not None and not pending.epoch.ended:
            # a row per draw keeps the records in draw order: they are also the epoch's draws
            pending.epoch.rows.append({"ids": pending.ids, "n": len(pending.ids)})
        self._pending = None

    def _flush(self, epoch: EpochBuffer) -> None:
        """Hand the epoch's gathered chunk to the writer thread."""
        chunk = epoch.take_chunk()
        if not chunk.rows and not chunk.inputs:
            return
        num_classes = self._manifest.get("num_classes") or 0
        kwargs = {"reservoir_size": self._manifest["sketch"]["reservoir"],
                  "store_probs": num_classes <= self.max_prob_classes}
        if num_classes > self.max_prob_classes and self.top_k_probs:  # many classes: the most probable only
            kwargs["top_k"] = min(self.top_k_probs, num_classes)
        file = epoch.chunk_file() if chunk.rows else None
        self._writer.submit(lambda: epoch.process(chunk, self.path, file, **kwargs))

    def _end(self, epoch: EpochBuffer, *, exhausted: bool) -> None:
        self._note_unrecorded()
        epoch.ended = True
        self._open.pop(epoch.split, None)
        # The probes' device work first: once the epoch's chunk is handed over, the writer thread competes
        # with the training thread for the cores (and the GIL).
        if epoch.split == "train" and self._probes is not None:
            self._probes.epoch_end(epoch=epoch.epoch, session=self._session, step=self._watch.step,
                                   submit=self._committer.submit_patch)
        self._flush(epoch)
        sketch = epoch.sketch_files()
        self._writer.submit(lambda: epoch.finish(self.path, sketch))
        if epoch.split == "train":
            self._write_steps()
        # Frameworks stop after len() batches without exhausting the iterator: complete all the same.
        complete = exhausted or (epoch.expected_batches is not None and epoch.batches >= epoch.expected_batches)
        entry = {
            "split": epoch.split, "epoch": epoch.epoch, "rank": self.rank, "complete": complete,
            "batches": epoch.batches, "samples": epoch.yielded, "recorded": epoch.recorded,
            "started": iso(epoch.started), "ended": now(), "session": self._session,
            "nonfinite_losses": None,  # counted by the writer thread: see below
        }
        self._manifest["epochs"].append(entry)
        self._committer.list_files(self._manifest, epoch.files)

        def counted() -> Callable[[dict], None]:  # on the writer thread, once the epoch's files are written
            nonfinite, soft = epoch.nonfinite, epoch.soft_targets

            def apply(manifest: dict) -> None:
                entry["nonfinite_losses"] = nonfinite
                if soft and manifest.get("task"):
                    manifest["task"]["soft_targets"] = True
            return apply

        self._committer.submit_patch(counted)
        self._commit(wait=False)

    def _write_steps(self) -> None:
        if self._watch is None:
            return
        rows, layer_rows = self._watch.take()
        # A resumed run continues the step count where this session leaves it.
        self._manifest["step_counters"] = {"step": self._watch.step, "attempt": self._watch._attempts}
        if rows or layer_rows:
            names = self._watch.names
            files = step_files(rows, layer_rows, rank=self.rank, session=self._session)
            self._committer.list_files(self._manifest, list(files.values()))
            self._writer.submit(lambda: write_steps(self.path, rows, layer_rows, names, files))

    def _commit(self, *, wait: bool = True) -> None:
        """Write the manifest after everything submitted before it (see `dataaudit.track.commit`). An epoch's
        end does not wait: a process killed before that manifest is on disk loses that epoch as well as the one
        in progress."""
        self._committer.commit(self._manifest, self._rank, wait=wait)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this Tracker is closed; open the run again with "
                               "dataaudit.Tracker(run_dir) to resume it")


def _close_at_exit(ref: weakref.ref) -> None:
    tracker = ref()
    if tracker is not None and not tracker._closed:
        try:
            tracker.close()
        except Exception:  # the interpreter is going away; the committed epochs are safe
            pass
