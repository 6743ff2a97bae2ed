from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dataaudit.scan.checkpoint import load_model
from dataaudit.scan.datasets import ScanInputError
from dataaudit.scan.predict import cross_val_probs, predict

ARCH = """
from torch import nn

def make():
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
"""


class Wrapped(nn.Module):
    """A custom module around a Sequential, as models usually are."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))

    def forward(self, x):
        return self.net(x)


class Residual(nn.Module):
    """Not a Sequential: its penultimate layer cannot be read from TorchScript."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(5, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.b(x + self.a(x))


@pytest.fixture
def seq():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)).eval()


@pytest.fixture
def X(rng):
    return rng.normal(size=(20, 5)).astype(np.float32)


def _hidden(model, X):
    with torch.no_grad():
        return torch.relu(model[0](torch.from_numpy(X))).numpy()


def _same(model, loaded, X):
    logits, emb = predict(loaded, X, batch_size=8)
    with torch.no_grad():
        expected = model(torch.from_numpy(X)).numpy()
    assert np.allclose(logits, expected, atol=1e-5)
    return emb


def test_torchscript(tmp_path, seq, X):
    torch.jit.save(torch.jit.script(seq), tmp_path / "m.pt")
    emb = _same(seq, load_model(tmp_path / "m.pt"), X)
    assert np.allclose(emb, _hidden(seq, X), atol=1e-5)


def test_torchscript_wrapping_a_sequential(tmp_path, X):
    model = Wrapped().eval()
    torch.jit.save(torch.jit.script(model), tmp_path / "m.pt")
    emb = _same(model, load_model(tmp_path / "m.pt"), X)
    assert emb.shape == (20, 7)


def test_torchscript_without_a_sequential_falls_back_to_no_embeddings(tmp_path, X):
    model = Residual().eval()
    torch.jit.save(torch.jit.script(model), tmp_path / "m.pt")
    assert _same(model, load_model(tmp_path / "m.pt"), X) is None


def _export(model, file, batch=4, dynamic=True):
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    torch.export.save(torch.export.export(model, (torch.zeros(batch, 5),), dynamic_shapes=shapes), file)
    return file


def test_exported_program_loads_only_with_trust(tmp_path, seq, X):
    _export(seq, tmp_path / "m.pt2")
    with pytest.raises(ScanInputError, match=r"m\.pt2: a torch.export program.*pass --trust-pickle"):
        load_model(tmp_path / "m.pt2")
    emb = _same(seq, load_model(tmp_path / "m.pt2", trust_pickle=True), X)
    assert np.allclose(emb, _hidden(seq, X), atol=1e-5)


class _Payload:
    """Unpickling this creates `marker`: what a hostile checkpoint would do instead."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _tampered(archive, out, marker, *, entry):
    """`archive` with one entry replaced by a pickle whose unpickling creates `marker`.

    entry "sample_inputs": the example inputs (torch loads them, after a failed safe attempt, unsafely);
    "weight": a weight marked use_pickle (loaded with weights_only=False outright).
    """
    import io
    import json
    import zipfile

    payload = io.BytesIO()
    torch.save(_Payload(marker), payload)
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if entry == "sample_inputs" and "/data/sample_inputs/" in info.filename:
                data = payload.getvalue()
            if entry == "weight" and info.filename.endswith("model_weights_config.json"):
                config = json.loads(data)
                config["config"]["0.weight"]["use_pickle"] = True
                data = json.dumps(config).encode()
            if entry == "weight" and info.filename.endswith("/data/weights/weight_0"):
                data = payload.getvalue()
            dst.writestr(info, data)
    return out


@pytest.mark.parametrize("entry", ["sample_inputs", "weight"])
@pytest.mark.parametrize("name", ["evil.pt2", "evil.pt"])
def test_a_crafted_export_archive_never_runs_its_payload_without_trust(tmp_path, seq, entry, name):
    marker = tmp_path / "PWNED"
    evil = _tampered(_export(seq, tmp_path / "m.pt2"), tmp_path / name, marker, entry=entry)
    with pytest.raises(ScanInputError) as info:
        load_model(evil)
    assert not marker.exists()
    assert "pass --trust-pickle" in str(info.value)


def test_a_pickle_renamed_pt2_is_refused_in_one_line(tmp_path, capfd):
    marker = tmp_path / "PWNED"
    torch.save(_Payload(marker), tmp_path / "evil.pt2")
    capfd.readouterr()
    with pytest.raises(ScanInputError, match=r"evil\.pt2: holds a pickled object.*--trust-pickle") as info:
        load_model(tmp_path / "evil.pt2")
    out, err = capfd.readouterr()
    assert not marker.exists() and "\n" not in str(info.value)
    assert out == "" and err == ""  # torch printed nothing of its own


def test_a_broken_archive_named_pt2_is_one_line_and_quiet(tmp_path, capfd):
    import zipfile

    with zipfile.ZipFile(tmp_path / "broken.pt2", "w") as z:
        z.writestr("m/archive_format", "pt2")
        z.writestr("m/models/model.json", "{not json")
    capfd.readouterr()
    with pytest.raises(ScanInputError, match=r"broken\.pt2: cannot load the checkpoint as export"):
        load_model(tmp_path / "broken.pt2", trust_pickle=True)
    assert capfd.readouterr() == ("", "")


def test_state_dict_needs_arch(tmp_path, seq, X):
    torch.save(seq.state_dict(), tmp_path / "sd.pt")
    (tmp_path / "arch_mod.py").write_text(ARCH)
    with pytest.raises(ScanInputError, match="holds a state_dict, not a model: pass --arch"):
        load_model(tmp_path / "sd.pt")
    model = load_model(tmp_path / "sd.pt", arch=f"{tmp_path / 'arch_mod.py'}:make")
    emb = _same(seq, model, X)
    assert np.allclose(emb, _hidden(seq, X), atol=1e-5)
    torch.save({"model_state_dict": seq.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    assert isinstance(load_model(tmp_path / "ckpt.pt", arch=f"{tmp_path / 'arch_mod.py'}:make"), nn.Sequential)


def test_bad_arch_is_named(tmp_path, seq):
    torch.save(seq.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(ScanInputError, match="--arch nowhere_module:make: cannot build the model"):
        load_model(tmp_path / "sd.pt", arch="nowhere_module:make")
    with pytest.raises(ScanInputError, match="expected module:callable"):
        load_model(tmp_path / "sd.pt", arch="justaname")


def test_pickled_module_only_with_trust(tmp_path, seq, X):
    torch.save(seq, tmp_path / "whole.pt")
    with pytest.raises(ScanInputError, match="pass --trust-pickle if the file is trusted") as info:
        load_model(tmp_path / "whole.pt")
    assert str(info.value).startswith(str(tmp_path / "whole.pt"))
    emb = _same(seq, load_model(tmp_path / "whole.pt", trust_pickle=True), X)
    assert np.allclose(emb, _hidden(seq, X), atol=1e-5)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ScanInputError, match=r"junk\.pt: not a torch checkpoint"):
        load_model(tmp_path / "junk.pt")
    with pytest.raises(ScanInputError, match="no such checkpoint"):
        load_model(tmp_path / "missing.pt")


def test_cross_val_probs_are_probabilities_for_every_class(rng):
    X = rng.normal(size=(60, 4))
    y = np.repeat([0, 2], 30)  # class 1 absent: its column is (nearly) zero
    X[y == 2] += 3
    p = cross_val_probs(X, y, num_classes=3)
    assert p.shape == (60, 3) and np.allclose(p.sum(1), 1) and p[:, 1].max() < 1e-3
    assert (p.argmax(1) == y).mean() > 0.9
