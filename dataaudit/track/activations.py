"""An optional, sampled probe of activation modules: dead ReLUs, saturated sigmoid and tanh units.

Forward hooks on the model's activation modules (nn.ReLU, ReLU6, GELU, SiLU:
"rectifier"; nn.Sigmoid, nn.Tanh: "saturating") look at the first training
forward pass of every `every`-th optimizer step, and at least one forward pass of
each epoch. Per unit (the feature of a
(batch, features) or (batch, tokens, features) output, the channel of a
(batch, channels, ...) image output) they count on the device the outputs
that are active (> 0) or pinned within 1% of a limit (sigmoid < 0.01 or > 0.99,
|tanh| > 0.99). The counts are copied once per epoch, on the tracker's writer
thread (see `take`): a unit is dead when none of its probed outputs was active,
saturated when 95% of them were pinned.
Functional activations (F.relu in forward) have no module and are not seen.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

RECTIFIERS = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU)
SATURATING = (nn.Sigmoid, nn.Tanh)
# A saturated output is within this of a limit; a saturated unit has this share of its outputs there.
PINNED = 0.01
SATURATED_SHARE = 0.95


class ActivationProbe:
    def __init__(self, model: nn.Module, *, every: int, step_fn: Callable[[], int]):
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"watch() needs activations to be True or a positive number of steps; got {every!r}")
        self.every = every
        self._step_fn = step_fn
        self._counts: dict[str, torch.Tensor] = {}     # per unit: active (rectifier) or pinned (saturating)
        self._outputs: dict[str, int] = {}             # probed outputs per unit
        self._probed: dict[str, int] = {}              # the step each module last probed
        self.kinds: dict[str, str] = {}
        self._handles = []
        for name, module in model.named_modules():
            if isinstance(module, RECTIFIERS + SATURATING):
                kind = "rectifier" if isinstance(module, RECTIFIERS) else type(module).__name__.lower()
                self.kinds[name] = kind
                self._handles.append(module.register_forward_hook(self._hook(name, kind)))

    def _hook(self, name: str, kind: str):
        def hook(module: nn.Module, args: Any, out: Any) -> None:
            if not module.training or not isinstance(out, torch.Tensor) or out.ndim < 2:
                return
            step = self._step_fn()
            # every `every` steps, and at least once an epoch (a short run still gets a look)
            if self._probed.get(name) == step or (step % self.every and name in self._counts):
                return
            self._probed[name] = step
            with torch.no_grad():
                # units on the last axis for (batch, features) and (batch, tokens, features); channels for images
                y = out.detach().movedim(1, -1) if out.ndim >= 4 else out.detach()
                y = y.reshape(-1, y.shape[-1])
                if kind == "rectifier":
                    hit = y > 0
                elif kind == "sigmoid":
                    hit = (y < PINNED) | (y > 1 - PINNED)
                else:
                    hit = y.abs() > 1 - PINNED
                counts = hit.sum(0)
            held = self._counts.get(name)
            if held is not None and held.shape != counts.shape:
                return   # a module applied to outputs of several widths: keep the first
            self._counts[name] = counts if held is None else held + counts
            self._outputs[name] = self._outputs.get(name, 0) + y.shape[0]
        return hook

    def take(self) -> Callable[[], list[dict[str, Any]]]:
        """Per probed module this epoch: layer, kind, units, outputs (probed per unit), and the share of units
        dead (rectifier) or saturated (sigmoid, tanh), as a function that copies the counts (called on the writer
        thread). The counts start again."""
        counts, outputs = self._counts, self._outputs
        self._counts, self._outputs = {}, {}
        names = [n for n in self.kinds if n in counts]
        kinds = dict(self.kinds)

        def resolve() -> list[dict[str, Any]]:
            if not names:
                return []
            flat = torch.cat([counts[n].reshape(-1).long().to(counts[names[0]].device) for n in names]).cpu()
            out, start = [], 0
            for name in names:
                units = counts[name].numel()
                c = flat[start:start + units].double()
                start += units
                entry = {"layer": name, "kind": kinds[name], "units": units, "outputs": outputs[name]}
                if kinds[name] == "rectifier":
                    entry["dead"] = round(float((c == 0).double().mean()), 4)
                else:
                    entry["saturated"] = round(float((c >= SATURATED_SHARE * outputs[name]).double().mean()), 4)
                out.append(entry)
            return out
        return resolve

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
