"""The probes `Tracker.watch` starts beside the step telemetry, and what they add to the manifest.

manifest["probes"]:
- "optimizer_state": fingerprints of the optimizer's state (see `dataaudit.track.state`), one per session
  start ("at": "start", before its first step) and per training epoch end ("at": "end");
- "backward": per training epoch, backward passes per optimizer step and what `.grad` held at a step's
  first pass (see `dataaudit.track.backward`);
- "activations": per training epoch, dead or saturated unit shares per activation module, with
  `watch(activations=...)` (see `dataaudit.track.activations`).
manifest["optimizer"]["params"]: per parameter of the optimizer, its name, shape and module class.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from dataaudit.track.activations import ActivationProbe
from dataaudit.track.backward import BackwardCounter
from dataaudit.track.state import StateProbe

# `watch(activations=True)` probes every this many optimizer steps.
ACTIVATION_EVERY = 50


def check_options(*, model: torch.nn.Module | None, scheduler: Any, activations: bool | int) -> int:
    """Validate the probes' options of `watch()`; returns the activation probe's period (0: off)."""
    if isinstance(activations, bool):
        every = ACTIVATION_EVERY if activations else 0
    elif isinstance(activations, int):
        every = activations
    else:
        raise TypeError(f"watch() needs activations to be a bool or a number of steps; got {activations!r}")
    if every < 0:
        raise ValueError(f"watch() needs activations to be True or a positive number of steps; got {activations!r}")
    if every and model is None:
        raise ValueError("watch(activations=...) needs model= (the probe hooks the model's activation modules)")
    if scheduler is not None and not hasattr(scheduler, "last_epoch"):
        raise TypeError(f"watch() needs scheduler to be a torch.optim.lr_scheduler scheduler (with last_epoch); "
                        f"got {type(scheduler).__name__}")
    return every


class Probes:
    def __init__(self, optimizer: torch.optim.Optimizer, *, model: torch.nn.Module | None, scheduler: Any,
                 scaler: Any, activations: bool | int, step_fn: Callable[[], int]):
        every = check_options(model=model, scheduler=scheduler, activations=activations)
        self.state = StateProbe(optimizer, scheduler)
        self.backward = BackwardCounter(optimizer, scaler=scaler)
        self.activations = ActivationProbe(model, every=every, step_fn=step_fn) if every else None

    def note_losses(self, losses: torch.Tensor) -> None:
        self.backward.note_losses(losses)

    def epoch_end(self, *, epoch: int, session: str, step: int,
                  submit: Callable[[Callable[[], Callable[[dict], None]]], Any]) -> None:
        """Gather the epoch's fingerprints and summaries (device values, no synchronisation) and `submit` a job
        that copies them to the host (the tracker's writer thread runs it) and returns the change that adds
        them to the manifest (the tracker applies it on the training thread)."""
        start, self.state.start = self.state.start, None
        end = self.state.fingerprint()
        backward = self.backward.take()
        activations = self.activations.take() if self.activations is not None else None
        every = self.activations.every if self.activations is not None else None

        def copy() -> Callable[[dict], None]:
            states = [] if start is None else [{"at": "start", "epoch": epoch, "session": session, **start()}]
            states.append({"at": "end", "epoch": epoch, "session": session, "tracked_step": step, **end()})
            summary = backward()
            layers = activations() if activations is not None else None

            def add(manifest: dict) -> None:
                probes = manifest.setdefault("probes", {})
                probes.setdefault("optimizer_state", []).extend(states)
                if summary is not None:
                    probes.setdefault("backward", []).append({"epoch": epoch, **summary})
                if layers:
                    probes.setdefault("activations", []).append({"epoch": epoch, "every": every, "layers": layers})
            return add
        submit(copy)

    def remove(self) -> None:
        self.state.remove()
        self.backward.remove()
        if self.activations is not None:
            self.activations.remove()


def param_info(optimizer: torch.optim.Optimizer, model: torch.nn.Module | None) -> list[dict[str, Any]]:
    """Per parameter of the optimizer, in its order: name, shape and the class of the module that owns it."""
    names, owners = {}, {}
    if model is not None:
        for module_name, module in model.named_modules():
            for pname, p in module.named_parameters(recurse=False):
                names[id(p)] = f"{module_name}.{pname}" if module_name else pname
                owners[id(p)] = type(module).__name__
    return [{"name": names.get(id(p), f"group{gi}.param{pi}"), "shape": list(p.shape), "module": owners.get(id(p))}
            for gi, g in enumerate(optimizer.param_groups) for pi, p in enumerate(g["params"])]
