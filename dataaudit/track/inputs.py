"""What the input sketch sees of a batch, whatever form the inputs take.

The sketch (moments, reservoir) and the per-sample fingerprint need a fixed number of
features per sample. The first batch of a split decides how its inputs are read:

- "float" : a floating-point tensor (batch, ...): its values, as they are (images larger than
  16 x 16 pooled). If a later batch's per-sample shape differs (padding per batch), the split
  stops being sketched from then on, with a note in the manifest: never an error mid-training;
- "tokens" : integer or boolean inputs (token ids, category codes), a tensor (batch, ...) or an
  HF-style dict of tensors (input_ids, attention_mask, ...) padded per batch. Their values are
  not quantities, so the sketch keeps what has a fixed size: the length of each sample (the
  attention mask's sum, else its non-zero entries), and the fingerprint is a hash of the
  unpadded tokens at their positions (the same sample padded differently hashes alike);
- a dict without integer tensors is read through its first floating-point tensor ("float").

The split's entry in the manifest says which (`input_kind`, `input_sketch`, `input_key`).
`InputRecorder` does this for `Tracker.record`: a fingerprint for every sample, and the sketch
features of every k-th batch (about `sketch_rows` samples an epoch) with their projection for
the reservoir, computed here on the training thread's device (see `dataaudit.track.epoch`).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from dataaudit.track.batch import check_rows, float32_copy
from dataaudit.track.epoch import EpochBuffer, Sketched
from dataaudit.track.sketch import Projection

# Images are pooled to at most this size per channel for the sketch (channels stay exact in mean).
_SKETCH_SIDE = 16
# Features of the fixed-size sketch of token inputs, in order.
TOKEN_FEATURES = ["length"]


def input_kind(inputs: Any) -> tuple[str, str | None]:
    """(kind, key): "float" or "tokens", and the dict key read (None for a tensor). Raises TypeError
    for inputs that are neither a tensor nor a dict holding one."""
    if isinstance(inputs, torch.Tensor):
        return ("float" if inputs.is_floating_point() else "tokens"), None
    if isinstance(inputs, Mapping):
        tensors = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        ids = _token_key(tensors)
        if ids is not None:
            return "tokens", ids
        floats = [k for k, v in tensors.items() if v.is_floating_point()]
        if floats:
            return "float", floats[0]
        raise TypeError(f"record() needs inputs as a tensor or a dict of tensors; got a dict with keys "
                        f"{sorted(map(str, inputs))} and no tensor among them")
    raise TypeError(f"record() needs inputs as a tensor or a dict of tensors; got {type(inputs).__name__}")


def float_tensor(inputs: Any, key: str | None) -> torch.Tensor:
    """The floating-point tensor of inputs (itself, or inputs[key])."""
    return inputs if key is None else inputs[key]


def token_summary(inputs: Any, key: str | None, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fingerprint (n,) float32, sketch features (n, len(TOKEN_FEATURES)) float32) of token inputs."""
    ids = inputs if key is None else inputs[key]
    ids = ids.detach().reshape(n, -1)
    mask = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
    if isinstance(mask, torch.Tensor) and mask.numel() == ids.numel():
        mask = mask.detach().reshape(n, -1) != 0
    else:  # no mask: padding is usually id 0
        mask = ids != 0
    maskf = mask.to(torch.float32)
    # position among the sample's own tokens, so that left or right padding does not move them
    position = maskf.cumsum(1) - 1
    # a fixed pseudo-random value per (token, position), summed over the unpadded tokens
    hashed = torch.cos(ids.to(torch.float32) * 0.6180339887 + position * 0.4142135624 + 0.5)
    fingerprint = (hashed * maskf).sum(1)
    return fingerprint, maskf.sum(1, keepdim=True)


def _token_key(tensors: dict[str, torch.Tensor]) -> str | None:
    if "input_ids" in tensors:
        return "input_ids"
    ints = [k for k, v in tensors.items() if not v.is_floating_point() and k != "attention_mask"]
    return ints[0] if ints else None


def sketch_shape(shape: list[int]) -> list[int]:
    """Per-sample shape the input sketch sees: images (C, H, W) larger than 16 x 16 are
    average-pooled to at most 16 x 16 (each channel's mean stays exact)."""
    if len(shape) == 3 and shape[1] * shape[2] > _SKETCH_SIDE**2:
        return [shape[0], min(shape[1], _SKETCH_SIDE), min(shape[2], _SKETCH_SIDE)]
    return shape


def sketch_features(inputs: torch.Tensor) -> torch.Tensor:
    """The batch as the input sketch sees it, flattened to (n, features)."""
    n = inputs.shape[0]
    shape = sketch_shape(list(inputs.shape[1:]))
    if shape != list(inputs.shape[1:]):
        return torch.nn.functional.adaptive_avg_pool2d(inputs.float(), shape[1:]).reshape(n, -1)
    return inputs.reshape(n, -1)


class InputRecorder:
    """What record() keeps of a batch's inputs: a fingerprint per sample, and every few batches the sketch
    features and their projection for the reservoir (one fixed random projection per split)."""

    def __init__(self):
        self._projection: dict[str, Projection] = {}
        self._fingerprints: dict[str, Projection] = {}

    def record(self, manifest: dict, epoch: EpochBuffer, row: dict, ids: np.ndarray, inputs: Any, n: int, *,
               batch_size: int | None) -> None:
        """Fingerprint the batch's inputs into `row` and, every few batches, sketch them into `epoch`; what the
        split's inputs are is noted in `manifest` (its split entry) at the first batch."""
        info = manifest["splits"][epoch.split]
        kind, key = input_kind(inputs)
        if "input_kind" not in info:
            info.update(input_kind=kind, input_key=key,
                        input_dtype=str(float_tensor(inputs, key).dtype).removeprefix("torch."),
                        input_sketch="values" if kind == "float" else
                        "lengths (attention mask, else non-zero ids); fingerprint: a hash of the unpadded tokens")
        elif (kind, key) != (info["input_kind"], info.get("input_key")):
            raise ValueError(f"record() got {kind} inputs{f' (key {key!r})' if key else ''}; earlier batches of "
                             f"split {epoch.split!r} had {info['input_kind']} inputs"
                             + (f" (key {info['input_key']!r})" if info.get("input_key") else ""))
        if kind == "tokens":
            check_rows("inputs", float_tensor(inputs, key), n)
            row["fingerprint"], x = token_summary(inputs, key, n)
            info.setdefault("sketch_shape", [len(TOKEN_FEATURES)])
            info.setdefault("sketch_features", TOKEN_FEATURES)
        else:
            x = check_rows("inputs", float_tensor(inputs, key), n).detach()
            if math.prod(x.shape[1:]) == 0:  # from the shape: no tensor made per batch
                raise ValueError(f"record() needs inputs with at least one value per sample; got shape "
                                 f"{tuple(x.shape)}")
            if not self._same_shape(epoch, info, list(x.shape[1:])):
                return
            flat = x.reshape(n, -1)
            row["fingerprint"] = self._fingerprint(manifest, epoch.split, flat.shape[1])(flat.float())
            x = sketch_features(x)
        if epoch.sketched_batches % self._sketch_every(manifest, epoch.split, batch_size) == 0:
            x = float32_copy(x)
            projected = self._projection_for(manifest, epoch.split)(x)
            epoch.inputs.append(Sketched(ids, x, projected))
            epoch.buffered_bytes += (x.numel() + (projected.numel() if projected is not x else 0)) * 4
        epoch.sketched_batches += 1

    def _same_shape(self, epoch: EpochBuffer, info: dict, shape: list[int]) -> bool:
        """Whether float inputs keep the split's per-sample shape. When they change (padded per batch) the split
        is no longer sketched, with a note: never an error in the training loop."""
        if "input_shape" not in info:
            info["input_shape"] = shape
            info["sketch_shape"] = sketch_shape(shape)
        if info.get("input_sketch") == "stopped":
            return False
        if info["input_shape"] != shape:
            info["input_sketch"] = "stopped"
            info["input_sketch_note"] = (
                f"inputs of shape {tuple(shape)} per sample at epoch {epoch.epoch}, after {tuple(info['input_shape'])}"
                " (padded per batch?): the sketch and fingerprints stop there; pass fixed-size inputs, or a dict "
                "with an attention_mask, to sketch variable-length inputs")
            return False
        return True

    def _sketch_every(self, manifest: dict, split: str, batch_size: int | None) -> int:
        """Every how many batches feed the input sketch, for about `sketch_rows` samples an epoch."""
        info = manifest["splits"][split]
        every = info.get("sketch_every")
        if every is None:
            size = info.get("dataset_size") or _first_epoch_size(manifest, split)
            if not size:  # an unknown length: sketch all of the first epoch, then scale down
                return 1
            batch = max(batch_size or 1, 1)
            batches = max(size // batch, 1)
            every = info["sketch_every"] = max(1, batches * batch // manifest["sketch"]["rows"])
        return every

    def _fingerprint(self, manifest: dict, split: str, num_features: int) -> Projection:
        """A fixed random direction: one number per input, equal across epochs when the input is."""
        fp = self._fingerprints.get(split)
        if fp is None:
            fp = self._fingerprints[split] = Projection(num_features, 1, manifest["sketch"]["seed"] + 1,
                                                        identity=False)
        return fp

    def _projection_for(self, manifest: dict, split: str) -> Projection:
        """The split's projection for the reservoir (its sketch shape is known once a batch was sketched)."""
        shape = manifest["splits"][split]["sketch_shape"]
        projection = self._projection.get(split)
        if projection is None:
            cfg = manifest["sketch"]
            projection = self._projection[split] = Projection(int(np.prod(shape)), cfg["dim"], cfg["seed"])
        return projection


def _first_epoch_size(manifest: dict, split: str) -> int | None:
    """Samples in the split's first committed epoch (for datasets of unknown length)."""
    seen = [e["samples"] or e["recorded"] for e in manifest["epochs"] if e["split"] == split]
    return seen[0] if seen else None
