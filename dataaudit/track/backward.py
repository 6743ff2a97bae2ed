"""Backward passes against optimizer steps: gradient accumulation, and gradients never zeroed.

One parameter (the first the optimizer trains) carries a gradient hook that
fires once per backward pass, before the gradient is added to `.grad`; it
counts passes on the host (no synchronisation). At the first pass after each
optimizer step it also looks at what `.grad` still holds: None (cleared with
`zero_grad()`), or a tensor whose norm is kept on the device (zero: zeroed in
place; above zero: the last step's gradient was never cleared).

With `note_losses`, a hook on the recorded per-sample losses sums the weight
backward gave them (1 for `losses.mean()`, 1/n for `losses.mean() / n`,
the batch size for `losses.sum()`): summed over a step's passes it tells
whether accumulated micro-batches were averaged or added up. It is looked at on every
LOSS_EVERY-th step and on at least one step of each epoch (a hook costs about as much as the step's
other bookkeeping together).
Device values are copied once per epoch, by the function `take` returns (on the tracker's writer thread).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import torch

# The loss weight is read on every this many optimizer steps (and on at least one step of each epoch).
LOSS_EVERY = 8


class BackwardCounter:
    def __init__(self, optimizer: torch.optim.Optimizer, *, scaler: Any = None):
        self.scaler = scaler
        param = next((p for g in optimizer.param_groups for p in g["params"] if p.requires_grad), None)
        self._param = param
        self._passes = 0                     # backward passes since the last step
        self._after_step = True              # the next pass is the first of a step
        self._weight: torch.Tensor | None = None
        self._per_step: Counter[int] = Counter()
        self._cleared = 0                    # steps whose first pass found .grad None
        self._leftover: list[torch.Tensor] = []   # norm of .grad at the first pass of a step
        self._weights: list[torch.Tensor] = []
        self._steps = 0                      # steps counted, over the whole run
        self._sample = True                  # whether the step under way has its loss weight read
        self._epoch_unsampled = False        # the epoch has read no weight yet: sample its next step
        self._handles = [optimizer.register_step_post_hook(self._step)]
        if param is not None:
            self._handles.append(param.register_hook(self._backward))

    def _backward(self, grad: torch.Tensor) -> None:
        self._passes += 1
        if self._after_step:
            self._after_step = False
            held = self._param.grad
            if held is None:
                self._cleared += 1
            else:
                self._leftover.append(torch.linalg.vector_norm(held.detach()).float())

    def note_losses(self, losses: torch.Tensor) -> None:
        """Watch the weight backward gives the recorded losses (batch,), on the steps sampled (see LOSS_EVERY)."""
        if losses.requires_grad and self._sample:
            losses.register_hook(self._loss_grad)

    def _loss_grad(self, grad: torch.Tensor) -> None:
        weight = grad.detach().float().sum()
        scale = getattr(self.scaler, "_scale", None) if self.scaler is not None else None
        if scale is not None:
            weight = weight / scale.float().reshape(()).to(weight.device)
        self._weight = weight if self._weight is None else self._weight + weight

    def _step(self, optimizer, args, kwargs) -> None:
        if self._passes == 0 and self._param is not None and self._param.grad is None:
            return  # a step with no gradient at all (the first parameter is unused): nothing to count
        self._per_step[self._passes] += 1
        self._steps += 1
        # decided at a step's start, for all of its passes: a step half read would give a partial weight
        self._sample = self._steps % LOSS_EVERY == 0 or self._epoch_unsampled
        self._epoch_unsampled &= not self._sample
        if self._weight is not None:
            self._weights.append(self._weight)
        self._passes, self._after_step, self._weight = 0, True, None

    def take(self) -> Callable[[], dict[str, Any] | None]:
        """The epoch's summary, as a function that copies its device values (called on the writer thread);
        it returns None when no step was taken. The counts start again."""
        per_step, cleared, leftover, weights = dict(self._per_step), self._cleared, self._leftover, self._weights
        self._per_step = Counter()
        self._cleared, self._leftover, self._weights = 0, [], []
        self._epoch_unsampled = True

        def resolve() -> dict[str, Any] | None:
            steps = sum(per_step.values())
            if not steps:
                return None
            left = torch.stack(leftover).cpu() if leftover else torch.empty(0)
            w = torch.stack([x.to(weights[0].device) for x in weights]).cpu() if weights else torch.empty(0)
            return {
                "steps": steps,
                "passes_per_step": {str(k): v for k, v in sorted(per_step.items())},
                "grad_checked": cleared + len(left),
                "grad_none": cleared,
                "grad_zero": int((left == 0).sum()),
                "grad_left": int((left > 0).sum()),
                "loss_weight": float(w.median()) if len(w) else None,
            }
        return resolve

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
