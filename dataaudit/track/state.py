"""Fingerprints of the optimizer's state, to tell a resume that lost it.

A checkpoint that restores the weights but not the optimizer starts Adam's
moments and step count again at 0; one that does not restore the scheduler
starts the schedule again from its warm-up. A fingerprint is small: per param
group the learning rate, the largest step count, and the global L2 norm of each
moment buffer (exp_avg, exp_avg_sq, momentum_buffer...), plus the scheduler's
position. One is taken before the first optimizer step of each session (what
the session started from) and one at the end of each training epoch. The norms
are computed on the device and copied to the host in one transfer per fingerprint, on the
tracker's writer thread.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from dataaudit.track.optim import host_scalars

# The per-parameter state buffers of torch's optimizers whose norms are kept (Adam/AdamW: exp_avg,
# exp_avg_sq, max_exp_avg_sq; SGD: momentum_buffer; RMSprop: square_avg; Adagrad: sum).
BUFFERS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "square_avg", "sum")


def _value(x: Any) -> Any:
    """A scalar's value now: a float, or for a device tensor a copy (Adam increments its step tensor in place,
    and a device value is read later, on the writer thread, so that training never waits for the device)."""
    if isinstance(x, torch.Tensor):
        return float(x) if x.device.type == "cpu" else x.detach().float().reshape(()).clone()
    return None if x is None else float(x)


class StateProbe:
    """Takes fingerprints of `optimizer` (and `scheduler`, optional); see `fingerprint`."""

    def __init__(self, optimizer: torch.optim.Optimizer, scheduler: Any = None):
        if scheduler is not None and not hasattr(scheduler, "last_epoch"):
            raise TypeError(f"watch() needs scheduler to be a torch.optim.lr_scheduler scheduler (with last_epoch); "
                            f"got {type(scheduler).__name__}")
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.start: dict | None = None
        self._started = False
        self._handle = optimizer.register_step_pre_hook(self._first_step)

    def _first_step(self, optimizer, args, kwargs) -> None:
        # what this session starts from: a resumed run that lost its state has none here. The hook stays
        # (removing it while torch iterates the hooks is an error) but does nothing after the first step.
        if not self._started:
            self._started = True
            self.start = self.fingerprint()

    def fingerprint(self) -> Callable[[], dict[str, Any]]:
        """The state now, as a function that returns it on the host: {"groups": [{"lr", "step", "<buffer>": norm...}
        per param group], "scheduler": {"last_epoch", "step_count"} or None}. step is absent when no parameter has
        a step count (SGD), a buffer when no parameter has it. The norms are computed now, on the device; calling
        the function copies them (the tracker calls it on its writer thread, so training never waits)."""
        values: list[Any] = []    # device scalars and floats
        groups = []
        for group in self.optimizer.param_groups:
            states = [s for p in group["params"] if (s := self.optimizer.state.get(p))]
            entry: dict[str, Any] = {"lr": len(values)}
            values.append(_value(group.get("lr")))
            steps = [_value(s["step"]) for s in states if "step" in s]
            if steps:
                entry["step"] = len(values)
                tensors = [v for v in steps if isinstance(v, torch.Tensor)]   # on a device (capturable Adam)
                floats = [v for v in steps if not isinstance(v, torch.Tensor)]
                if not tensors:
                    values.append(max(floats))
                else:   # no host value is copied to the device: that copy would wait for it
                    top = torch.stack([t.to(tensors[0].device) for t in tensors]).max()
                    values.append(top.clamp_min(max(floats)) if floats else top)
            for key in BUFFERS:
                buffers = [s[key] for s in states if isinstance(s.get(key), torch.Tensor)]
                if buffers:
                    entry[key] = len(values)
                    with torch.no_grad():
                        values.append(torch.linalg.vector_norm(torch.stack(
                            [n.float() for n in torch._foreach_norm([b.detach() for b in buffers])])))
            groups.append(entry)
        scheduler = None
        if self.scheduler is not None:
            scheduler = {"last_epoch": int(self.scheduler.last_epoch),
                         "step_count": int(getattr(self.scheduler, "_step_count", -1))}

        def resolve() -> dict[str, Any]:
            host = _host(values)
            return {"groups": [{k: host[i] for k, i in g.items()} for g in groups], "scheduler": scheduler}
        return resolve

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def _host(values: list[Any]) -> list[float | None]:
    """Floats for a list of floats, None and device scalars (one copy per device); NaN as None, for JSON."""
    return [None if v != v else v for v in host_scalars(values).tolist()]
