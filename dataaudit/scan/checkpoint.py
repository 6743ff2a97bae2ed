"""Load a model checkpoint: TorchScript, a state_dict with --arch, or (only with --trust-pickle, since loading
them runs code from the file) a whole pickled module or a torch.export program (.pt2).

Why a torch.export program needs --trust-pickle: `torch.export.load` unpickles parts of the archive with
`weights_only=False` (its sample inputs, after a failed safe attempt; entries marked `use_pickle`; opaque
constants), evaluates its symbolic shape expressions with sympy, and resolves graph targets by attribute path
under `torch` (which reaches `torch.os`). Any of these runs what a crafted file asks. The kind of a file is
read from its content, never from its suffix: a pickle renamed `.pt2` is a pickle, an archive renamed `.pt`
an archive.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

from dataaudit.scan.datasets import ScanInputError

_STATE_KEYS = ("state_dict", "model_state_dict", "model")
# entries of a torch.export archive (any version): the program and its metadata
_EXPORT_ENTRIES = ("archive_format", "serialized_exported_program.json")


def load_model(file: str | Path, *, arch: str | None = None, trust_pickle: bool = False, device: str = "cpu"):
    """The model in `file`, in eval mode on `device`; raises ScanInputError naming the file and the problem.

    arch : "module:callable" (or "path/to/file.py:callable") returning an nn.Module, for a state_dict.
    trust_pickle : allow what runs code from the file: a pickled module, a torch.export program.
    """
    import torch

    file = Path(file)
    if not file.is_file():
        raise ScanInputError(f"{file}: no such checkpoint file")
    kind = _kind(file)
    if kind == "export" and not trust_pickle:
        raise ScanInputError(f"{file}: a torch.export program, and loading one runs code from the file (pickled "
                             "entries, evaluated shape expressions): pass --trust-pickle if the file is trusted, "
                             "or give a TorchScript file or a state_dict with --arch")
    try:
        with _quiet():  # torch logs tracebacks and warnings of its own on bad files: the one line below says it
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
    """'export', 'torchscript' or 'pickle' (torch.save), from the file's content (its suffix may lie)."""
    if not zipfile.is_zipfile(file):
        with open(file, "rb") as f:
            if f.read(1) != b"\x80":  # the pickle protocol opcode that legacy torch.save files start with
                raise ScanInputError(f"{file}: not a torch checkpoint (neither a zip archive nor a pickle)")
        return "pickle"
    try:
        with zipfile.ZipFile(file) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise ScanInputError(f"{file}: not a readable checkpoint archive ({_first_line(e)})") from None
    inner = [n.split("/", 1)[-1] for n in names]
    if any(n in _EXPORT_ENTRIES or n.endswith(tuple(f"/{e}" for e in _EXPORT_ENTRIES)) or n.startswith("models/")
           for n in inner):
        return "export"
    if any("/code/" in n or n.endswith("constants.pkl") for n in names):
        return "torchscript"
    return "pickle"


@contextlib.contextmanager
def _quiet():
    """Silence what torch prints while loading (logging, warnings, and C++ writes to file descriptor 2)."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    saved = None
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        sink = tempfile.TemporaryFile()
        os.dup2(sink.fileno(), 2)
    except (OSError, ValueError, AttributeError):  # no real stderr (embedded, some test runners): nothing to hide
        saved = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)
            sink.close()


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
