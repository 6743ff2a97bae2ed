"""Load a model checkpoint: TorchScript, a torch.export program (.pt2), a state_dict with --arch, or
(only with --trust-pickle, since unpickling runs code) a whole pickled module.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import zipfile
from pathlib import Path

from dataaudit.scan.datasets import ScanInputError

_STATE_KEYS = ("state_dict", "model_state_dict", "model")


def load_model(file: str | Path, *, arch: str | None = None, trust_pickle: bool = False, device: str = "cpu"):
    """The model in `file`, in eval mode on `device`; raises ScanInputError naming the file and the problem.

    arch : "module:callable" (or "path/to/file.py:callable") returning an nn.Module, for a state_dict.
    """
    import torch

    file = Path(file)
    if not file.is_file():
        raise ScanInputError(f"{file}: no such checkpoint file")
    kind = _kind(file)
    try:
        if kind == "export":
            model = torch.export.load(str(file)).module()
        elif kind == "torchscript":
            model = torch.jit.load(str(file), map_location=device)
        else:
            model = _load_pickle(file, arch, trust_pickle, device)
    except ScanInputError:
        raise
    except Exception as e:
        raise ScanInputError(f"{file}: cannot load the checkpoint as {kind} ({type(e).__name__}: "
                             f"{_first_line(e)})") from None
    if not isinstance(model, torch.nn.Module) and not hasattr(model, "forward"):
        raise ScanInputError(f"{file}: expected a model; got {type(model).__name__}")
    if kind != "export":  # an exported program's module has no train/eval switch to flip
        model.eval()
    try:
        model.to(device)
    except Exception as e:
        raise ScanInputError(f"--device {device}: cannot move the model there ({_first_line(e)})") from None
    return model


def _kind(file: Path) -> str:
    """'export', 'torchscript' or 'pickle' (torch.save), from the archive's entries."""
    if file.suffix == ".pt2":
        return "export"
    if not zipfile.is_zipfile(file):
        with open(file, "rb") as f:
            if f.read(1) != b"\x80":  # the pickle protocol opcode that legacy torch.save files start with
                raise ScanInputError(f"{file}: not a torch checkpoint (neither a zip archive nor a pickle)")
        return "pickle"
    with zipfile.ZipFile(file) as z:
        names = z.namelist()
    if any(n.split("/", 1)[-1].startswith("models/") or n.endswith("archive_format") for n in names):
        return "export"
    if any("/code/" in n or n.endswith("constants.pkl") for n in names):
        return "torchscript"
    return "pickle"


def _load_pickle(file: Path, arch: str | None, trust_pickle: bool, device: str):
    import pickle

    import torch

    try:
        obj = torch.load(file, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        if "unsupported operand" in str(e).lower():  # not a pickle stream at all
            raise ScanInputError(f"{file}: not a torch checkpoint ({_first_line(e)})") from None
        if not trust_pickle:
            raise ScanInputError(f"{file}: holds a pickled object, and unpickling runs code: pass --trust-pickle "
                                 "if the file is trusted (or save a state_dict and pass --arch)") from None
        obj = torch.load(file, map_location=device, weights_only=False)
    if isinstance(obj, torch.nn.Module):
        return obj
    if isinstance(obj, dict):
        state = next((obj[k] for k in _STATE_KEYS if isinstance(obj.get(k), dict)), obj)
        if not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ScanInputError(f"{file}: expected a state_dict (parameter name -> tensor); got a dict with "
                                 f"keys {list(obj)[:6]}")
        if arch is None:
            raise ScanInputError(f"{file}: holds a state_dict, not a model: pass --arch module:callable "
                                 "that builds the model")
        model = build_arch(arch)
        try:
            model.load_state_dict(state)
        except Exception as e:
            raise ScanInputError(f"{file}: does not fit the model from --arch {arch} ({_first_line(e)})") from None
        return model
    raise ScanInputError(f"{file}: expected a model or a state_dict; got {type(obj).__name__}")


def build_arch(arch: str):
    """Call the builder named by "module:callable" or "path/to/file.py:callable"."""
    import torch

    module_name, sep, attr = arch.rpartition(":")
    if not sep or not module_name or not attr:
        raise ScanInputError(f"--arch {arch}: expected module:callable (e.g. mypkg.models:make_mlp)")
    try:
        if module_name.endswith(".py"):
            spec = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
            if spec is None or spec.loader is None:
                raise ImportError(f"no such file {module_name}")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            if "" not in sys.path:  # the module may live in the current directory
                sys.path.insert(0, "")
            module = importlib.import_module(module_name)
        builder = getattr(module, attr)
        model = builder()
    except Exception as e:
        raise ScanInputError(f"--arch {arch}: cannot build the model ({type(e).__name__}: {_first_line(e)})") from None
    if not isinstance(model, torch.nn.Module):
        raise ScanInputError(f"--arch {arch}: expected the callable to return an nn.Module; "
                             f"got {type(model).__name__}")
    return model


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
