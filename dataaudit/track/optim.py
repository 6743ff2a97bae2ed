"""Optimizer telemetry from step hooks: learning rates, gradient and update norms, clipping, skipped AMP steps.

Everything is computed with device tensors and kept on the device until the
tracker flushes an epoch: no step reads a value back to the host.

- gradient norm: the global L2 norm of the gradients the optimizer steps with
  (after any clipping), every step. With `optimizer.step(closure)` (LBFGS,
  Lightning's automatic optimization) the closure computes them inside step():
  they are read when it first returns;
- raw gradient norm: the same norm as backward left it, before any clipping,
  on sampled steps: every `every` steps (never when `every` is 0), or with every=None (the default) every 10
  steps, sparser where measuring costs more than 0.25% of the host time between steps (`adaptive_period`:
  a small model on a CPU, whose step is short). It is read at the very end of
  the backward pass (a post-accumulate-grad hook queues the read), after
  DistributedDataParallel has averaged the gradients over the ranks: a
  rank's own gradient, before that, is not what the optimizer steps with. A measured step is clipped when its gradient
  norm is clearly below its raw norm; the steps between are judged clipped when
  their norm sits at the clipping threshold those steps revealed;
- update-to-weight ratio ||delta w|| / ||w||, and per-parameter norms, on
  the same measured steps (it needs a copy of the weights before the step);
- skipped steps: with `scaler=`, a GradScaler.step that did not call
  optimizer.step (inf/NaN gradients under AMP).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dataaudit import store
from dataaudit.track import arrow


def _norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Global L2 norm of a list of tensors, as a float32 device scalar."""
    if not tensors:
        return torch.full((), float("nan"))
    with torch.no_grad():
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors)).float())


# Adaptive cadence of the measured steps (every=None): from every 10 steps, sparser when measuring one step
# costs more than this share of the host time between steps, up to every 1,000 (the gradient norm and the
# update norms each: together with the step's own row, about 1% of a CPU loop's time).
_AUTO_START, _AUTO_MAX, _AUTO_BUDGET = 10, 1000, 0.0025


# The gradient norm of every step, unless it costs more than _AUTO_BUDGET of the step: then every k steps, k <= 20.
_NORM_MAX = 20


def adaptive_period(cost_s: float, interval_s: float, *, start: int = _AUTO_START, cap: int = _AUTO_MAX) -> int:
    """Every how many steps to measure, for the host time of one measurement (`cost_s`) to stay within
    _AUTO_BUDGET of the host time between steps (`interval_s`), between every `start` and every `cap` steps."""
    if not interval_s > 0:
        return start
    return min(max(math.ceil(cost_s / (_AUTO_BUDGET * interval_s)), start), cap)


def _lr_value(lr: Any) -> Any:
    return lr.detach().clone() if isinstance(lr, torch.Tensor) else float(lr)


class OptimizerWatch:
    def __init__(self, optimizer: torch.optim.Optimizer, *, model: torch.nn.Module | None = None,
                 scaler: Any = None, every: int | None = None, epoch_fn=None, start_step: int = 0,
                 start_attempt: int = 0):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"watch() needs a torch.optim.Optimizer; got {type(optimizer).__name__}")
        if every is not None and (not isinstance(every, int) or every < 0):
            raise ValueError(f"watch() needs every >= 0 (0 turns update norms off; None adapts); got {every!r}")
        self.optimizer = optimizer
        self.every = every                # None: adaptive (see adaptive_period)
        self._period = _AUTO_START if every is None else every
        self._next = start_step           # the next step measured
        self._last_pre: float | None = None
        self._interval: float | None = None   # host seconds between steps, smoothed
        self._cost = 0.0                  # host seconds spent measuring the current sampled step
        self._norm_next = start_step      # adaptive: the next step whose gradient norm is measured
        self._epoch_fn = epoch_fn
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        names = {id(p): n for n, p in model.named_parameters()} if model is not None else {}
        self.names = [names.get(id(p), f"group{gi}.param{pi}")
                      for gi, g in enumerate(optimizer.param_groups) for pi, p in enumerate(g["params"])]
        self.scaler = scaler
        self.step = start_step            # optimizer steps taken, over the whole run
        self._attempts = start_attempt    # including AMP-skipped steps
        self._raw: torch.Tensor | None = None    # the raw norm the last sampled backward left
        self._read_queued = False
        self._before: list[torch.Tensor] | None = None
        self._pending_loss: torch.Tensor | None = None
        self.rows: list[dict] = []
        self.layer_rows: list[dict] = []
        self._handles = [
            optimizer.register_step_pre_hook(self._pre),
            optimizer.register_step_post_hook(self._post),
        ]
        # One hook queues the read per backward pass: on the first and the last trained parameter (the input
        # and output ends of most models, used by every pass), not on every one of hundreds of tensors.
        trained = [p for p in self.params if p.requires_grad]
        for p in {id(p): p for p in trained[:1] + trained[-1:]}.values():
            self._handles.append(p.register_post_accumulate_grad_hook(self._grad_hook))
        self._scaler_step = None
        if scaler is not None:
            self._wrap_scaler(scaler)

    def _grad_hook(self, p: torch.Tensor) -> None:
        if self._read_queued or not self._sampled():
            return
        self._read_queued = True
        engine = torch.autograd.Variable._execution_engine
        # Callbacks run once the backward pass is done, in the order queued. DDP queues its
        # all-reduce's end during the pass, after this one: queueing again from the callback
        # puts the read after it.
        engine.queue_callback(lambda: engine.queue_callback(self._read_raw))

    def _read_raw(self) -> None:
        self._read_queued = False
        self._raw = _norm([p.grad for p in self.params if p.grad is not None])

    def _wrap_scaler(self, scaler: Any) -> None:
        original = scaler.step

        def step(optimizer, *args, **kwargs):
            before = self.step
            result = original(optimizer, *args, **kwargs)
            if optimizer is self.optimizer and self.step == before:
                self._attempts += 1
                self.rows.append(self._row(skipped=True))
            return result

        self._scaler_step = original
        scaler.step = step

    def note_loss(self, losses: torch.Tensor) -> None:
        """The per-sample losses of the batch recorded last; their mean is kept with the next step."""
        self._pending_loss = losses

    def _sampled(self) -> bool:
        """Whether the coming step is one whose raw gradient and update norms are measured."""
        return self._period > 0 and self.step >= self._next

    def _pre(self, optimizer, args, kwargs) -> tuple[tuple, dict] | None:
        start = time.perf_counter()
        if self._last_pre is not None:
            interval = start - self._last_pre
            self._interval = interval if self._interval is None else 0.9 * self._interval + 0.1 * interval
        self._last_pre = start
        if self._sampled():
            self._before = [p.detach().clone() for p in self.params]
            self._cost = time.perf_counter() - start
        # args is (optimizer, *step arguments): the closure, if any, is the first step argument
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
        if closure is None:
            self._measure()
            return None
        # A closure computes the gradients inside step(): they are measured when it first
        # returns (after any clipping it does), not here, where they are the last step's.
        self._grad_norm = self._raw_norm = None
        measured = False

        def measuring_closure():
            nonlocal measured
            loss = closure()
            if not measured:  # LBFGS evaluates again during its line search: the step starts from the first
                measured = True
                self._measure()
            return loss

        if "closure" in kwargs:
            return args, {**kwargs, "closure": measuring_closure}
        return (args[0], measuring_closure, *args[2:]), kwargs

    def _measure(self) -> None:
        """Norms of the gradients as they are now, the ones the coming update uses: every step, or with
        every=None on the sampled steps and every step that `adaptive_period` allows (small models on a CPU)."""
        self._grad_norm = None
        if self.every is not None or self._sampled() or self.step >= self._norm_next:
            start = time.perf_counter()
            self._grad_norm = _norm([p.grad for p in self.params if p.grad is not None])
            if self.every is None:
                cost = time.perf_counter() - start
                self._norm_next = self.step + adaptive_period(cost, self._interval or 0.0, start=1, cap=_NORM_MAX)
        self._raw_norm = self._raw
        if self._raw is not None:
            if self.scaler is not None and getattr(self.scaler, "_scale", None) is not None:
                self._raw_norm = self._raw / self.scaler._scale.float()
            self._raw = None

    def _post(self, optimizer, args, kwargs) -> None:
        self._raw = None  # left by a closure's later evaluations: not the next step's
        self._read_queued = False
        self._attempts += 1
        row = self._row(skipped=False)
        if self._before is not None:
            start = time.perf_counter()
            params = [p.detach() for p in self.params]
            deltas = torch._foreach_sub(params, self._before)
            d_norms = torch._foreach_norm(deltas)
            w_norms = torch._foreach_norm(params)
            g_norms = [torch.linalg.vector_norm(p.grad.detach()) if p.grad is not None
                       else torch.full((), float("nan"), device=p.device) for p in self.params]
            update_norms, weight_norms = torch.stack(d_norms).float(), torch.stack(w_norms).float()
            row["update_ratio"] = (torch.linalg.vector_norm(update_norms)
                                   / torch.linalg.vector_norm(weight_norms).clamp_min(1e-12))
            self.layer_rows.append({
                "epoch": row["epoch"], "step": self.step, "update_norm": update_norms, "weight_norm": weight_norms,
                "grad_norm": torch.stack([g.float().to(update_norms.device) for g in g_norms]),
            })
            self._before = None
            self._cost += time.perf_counter() - start
            if self.every is None:
                self._period = adaptive_period(self._cost, self._interval or 0.0)
            self._next = self.step + self._period
        self.rows.append(row)
        self.step += 1

    def _row(self, *, skipped: bool) -> dict:
        groups = self.optimizer.param_groups
        row = {
            "epoch": self._epoch_fn() if self._epoch_fn else 0,
            "step": self.step,
            "attempt": self._attempts - 1,
            "skipped": skipped,
            "lr": [_lr_value(g.get("lr", float("nan"))) for g in groups],
            "loss": self._pending_loss,  # per-sample losses; averaged on the writer thread
        }
        if not skipped:
            row["grad_norm"] = self._grad_norm
            row["grad_norm_raw"] = self._raw_norm
        self._pending_loss = None
        return row

    def take(self) -> tuple[list[dict], list[dict]]:
        """The step and layer rows gathered so far (device tensors); see `write_steps`."""
        rows, layer_rows = self.rows, self.layer_rows
        self.rows, self.layer_rows = [], []
        return rows, layer_rows

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        if self._scaler_step is not None:
            self.scaler.step = self._scaler_step
            self._scaler_step = None


def host_scalars(values: list[Any]) -> np.ndarray:
    """Scalars, some of them tensors or None, as one float64 array: host tensors read as they are (no torch
    kernel on the writer thread), device ones copied once per device."""
    out = np.full(len(values), np.nan)
    by_device: dict[torch.device, list[int]] = {}
    for i, v in enumerate(values):
        if not isinstance(v, torch.Tensor):
            if v is not None:
                out[i] = v
        elif v.device.type == "cpu":
            out[i] = float(v)
        else:
            by_device.setdefault(v.device, []).append(i)
    for index in by_device.values():
        out[index] = torch.stack([values[i].float().reshape(()) for i in index]).cpu().numpy()
    return out


def _means(losses: list[torch.Tensor | None]) -> np.ndarray:
    """The mean of each step's per-sample losses (NaN for none), float64: host tensors all at once in numpy
    (no torch kernel, nor a Python loop of numpy calls holding the GIL, on the writer thread), device ones as
    device scalars copied once."""
    out = np.full(len(losses), np.nan)
    host = [i for i, t in enumerate(losses) if t is not None and t.device.type == "cpu" and t.numel()]
    if host:
        sizes = np.array([losses[i].numel() for i in host])
        values = np.concatenate([losses[i].numpy().reshape(-1) for i in host]).astype(np.float64)
        out[host] = np.add.reduceat(values, np.cumsum(sizes) - sizes) / sizes
    device = [i for i, t in enumerate(losses) if t is not None and t.device.type != "cpu"]
    if device:
        out[device] = host_scalars([losses[i].mean() for i in device])
    return out


def _steps_columns(rows: list[dict]) -> dict[str, np.ndarray] | None:
    if not rows:
        return None
    n_groups = max(len(r["lr"]) for r in rows)
    table = {
        "epoch": np.array([r["epoch"] for r in rows], dtype=np.int64),
        "step": np.array([r["step"] for r in rows], dtype=np.int64),
        "attempt": np.array([r["attempt"] for r in rows], dtype=np.int64),
        "skipped": np.array([r["skipped"] for r in rows], dtype=bool),
        "loss": _means([r["loss"] for r in rows]),
        "grad_norm": host_scalars([r.get("grad_norm") for r in rows]),
        # False where the gradient norm was not measured (skipped steps; between measured ones, see _measure)
        "grad_measured": np.array([r.get("grad_norm") is not None for r in rows], dtype=bool),
        "grad_norm_raw": host_scalars([r.get("grad_norm_raw") for r in rows]),
        "update_ratio": host_scalars([r.get("update_ratio") for r in rows]),
    }
    for g in range(n_groups):
        table["lr" if g == 0 else f"lr_{g}"] = host_scalars([r["lr"][g] if g < len(r["lr"]) else None for r in rows])
    table["clipped"] = _clipped(table["grad_norm"], table["grad_norm_raw"])
    return table


def _clipped(norm: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """Per step, whether clipping cut the gradient.

    Measured steps compare the norm with the raw norm. clip_grad_norm_ scales a
    clipped gradient to exactly its max_norm, so an unmeasured step whose norm
    equals the threshold seen on the clipped measured steps was clipped too.
    """
    with np.errstate(invalid="ignore"):
        measured = np.isfinite(raw)
        clipped = measured & (norm < raw * (1 - 1e-3))
        if clipped.any():
            threshold = np.median(norm[clipped])
            at_threshold = np.abs(norm - threshold) <= 1e-3 * threshold
            clipped |= ~measured & at_threshold
    return clipped


def _layers_columns(rows: list[dict], names: list[str]) -> dict[str, np.ndarray] | None:
    if not rows:
        return None
    cols = {k: torch.stack([r[k] for r in rows]).cpu().numpy() for k in ("update_norm", "weight_norm", "grad_norm")}
    n = len(names)
    return {
        "epoch": np.repeat([r["epoch"] for r in rows], n).astype(np.int64),
        "step": np.repeat([r["step"] for r in rows], n).astype(np.int64),
        "param": np.tile(np.array(names, dtype=object), len(rows)),
        **{k: v.reshape(-1).astype(np.float64) for k, v in cols.items()},
    }


def step_files(rows: list[dict], layer_rows: list[dict], *, rank: int, session: str) -> dict[tuple[str, int], str]:
    """The files `write_steps` writes for these rows, named on the training thread (so the manifest can list
    them before they are written): (table, epoch) -> path relative to the run directory, one file per epoch
    and table, named after the epoch's first step."""
    files = {}
    for name, table_rows in (("steps", rows), ("layers", layer_rows)):
        for r in table_rows:
            key = (name, int(r["epoch"]))
            if key not in files:
                folder = store.partition_dir(name, epoch=key[1], rank=rank)
                files[key] = (folder / f"part-{session}-{int(r['step']):09d}.parquet").as_posix()
    return files


def write_steps(run_dir: Path, rows: list[dict], layer_rows: list[dict], names: list[str],
                files: dict[tuple[str, int], str]) -> None:
    """Copy step and layer rows to the host (one synchronisation per column) and write them to `files`
    (see `step_files`)."""
    for name, columns in (("steps", _steps_columns(rows)), ("layers", _layers_columns(layer_rows, names))):
        if columns is None:
            continue
        epochs = columns["epoch"]
        for number in np.unique(epochs):
            part = columns if epochs[0] == epochs[-1] else {k: v[epochs == number] for k, v in columns.items()}
            store.write_parquet_atomic(run_dir / files[(name, int(number))], arrow.table(part))
