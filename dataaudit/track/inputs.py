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
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

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
