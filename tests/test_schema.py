"""tests for dataaudit/audit.schema.json: every audit.json (tracked run, scan) validates, and the docs page
documents every field of it."""
from __future__ import annotations

import importlib.resources
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import dataaudit
from dataaudit.audit import SCHEMA_VERSION
from dataaudit.run import Run

ROOT = Path(__file__).resolve().parents[1]


def _schema() -> dict:
    return json.loads((importlib.resources.files("dataaudit") / "audit.schema.json").read_text())


def _errors(instance, schema: dict) -> list[str]:
    """Validation errors of `instance`: with jsonschema (the test extra) when installed, else with a small
    validator of the keywords the schema uses (type, enum, required, properties, additionalProperties,
    items, minimum, maximum, pattern)."""
    try:
        import jsonschema
    except ImportError:
        return list(_mini_errors(instance, schema, "$"))
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(instance)]


_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _is(value, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, _TYPES[kind])


def _mini_errors(value, schema: dict, path: str):
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_is(value, k) for k in kinds):
            yield f"{path}: {value!r:.60} is not of type {kinds}"
            return
    if "enum" in schema and value not in schema["enum"]:
        yield f"{path}: {value!r} not in {schema['enum']}"
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            yield f"{path}: {value} < {schema['minimum']}"
        if "maximum" in schema and value > schema["maximum"]:
            yield f"{path}: {value} > {schema['maximum']}"
    if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
        yield f"{path}: {value!r} does not match {schema['pattern']}"
    if isinstance(value, dict):
        for name in schema.get("required", []):
            if name not in value:
                yield f"{path}: {name!r} is a required property"
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for name, sub in value.items():
            if name in props:
                yield from _mini_errors(sub, props[name], f"{path}.{name}")
            elif extra is False:
                yield f"{path}: additional property {name!r}"
            elif isinstance(extra, dict):
                yield from _mini_errors(sub, extra, f"{path}.{name}")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            yield from _mini_errors(item, schema["items"], f"{path}[{i}]")


@pytest.fixture(scope="module")
def tracked_json(tmp_path_factory):
    from fixtures.training import blobs, train_loop

    X, y = blobs(n=300, d=6, k=3, seed=4)
    noisy = y.copy()
    noisy[:60] = (y[:60] + 1) % 3
    Xv, yv = blobs(n=60, d=6, k=3, seed=5)
    run = train_loop(tmp_path_factory.mktemp("schema") / "run", X, noisy, epochs=8, val=(Xv, yv), lr=0.05)
    audit = dataaudit.analyze(run)
    return json.loads(audit.write_json(tmp_path_factory.mktemp("out") / "audit.json").read_text())


def test_schema_is_draft_2020_12_and_versioned():
    schema = _schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert re.fullmatch(schema["properties"]["schema_version"]["pattern"], SCHEMA_VERSION)
    try:
        import jsonschema
    except ImportError:
        return
    jsonschema.Draft202012Validator.check_schema(schema)


def test_tracked_run_audit_json_validates(tracked_json):
    assert tracked_json["schema_version"] == SCHEMA_VERSION
    assert _errors(tracked_json, _schema()) == []
    # the checks of a tracked run are all described, not only allowed
    assert set(tracked_json["checks"]) <= set(_schema()["properties"]["checks"]["properties"])


def test_scan_audit_json_validates(tmp_path):
    from typer.testing import CliRunner

    from dataaudit.cli import app

    rng = np.random.default_rng(0)
    n, k = 400, 4
    truth = rng.integers(0, k, n)
    given = truth.copy()
    given[:40] = (truth[:40] + 1) % k
    probs = np.full((n, k), 0.1 / (k - 1))
    probs[np.arange(n), truth] = 0.9
    data = tmp_path / "data"
    data.mkdir()
    np.savez(data / "data.npz", X=rng.normal(size=(n, 3)) + truth[:, None], y=given)
    np.save(tmp_path / "pp.npy", probs)
    result = CliRunner().invoke(app, ["scan", str(data), "--pred-probs", str(tmp_path / "pp.npy"),
                                      "--out", str(tmp_path / "out"), "--fail-on", "never"])
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert _errors(written, _schema()) == []
    assert written["run"]["scan"]["format"]


def test_a_broken_audit_json_is_caught(tracked_json):
    broken = dict(tracked_json, verdict="maybe", data_share=1.5)
    del broken["findings"]
    errors = "\n".join(_errors(broken, _schema()))
    assert "verdict" in errors or "maybe" in errors
    assert "findings" in errors and "1.5" in errors


def test_finding_ids_are_written_in_full():
    rng = np.random.default_rng(1)
    n, k = 3_000, 5
    truth = rng.integers(0, k, n)
    given = truth.copy()
    given[:450] = (truth[:450] + 1) % k
    probs = np.full((n, k), 0.02)
    probs[np.arange(n), truth] = 0.92
    data = dataaudit.analyze(Run.from_arrays(given, probs)).to_dict()
    finding = next(f for f in data["findings"] if f["check"] == "labels" and f.get("ids"))
    assert finding["n_ids"] > 100 and len(finding["ids"]) == finding["n_ids"]
    assert finding["ids"] == data["label_issues"]


def test_docs_page_documents_every_field_and_is_up_to_date():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        from make_audit_json_md import render
    finally:
        sys.path.pop(0)
    schema = _schema()
    page = (ROOT / "docs" / "audit-json.md").read_text()
    assert page == render(schema), "docs/audit-json.md is stale: run python docs/make_audit_json_md.py"

    def fields(node: dict, path: str):
        for name, sub in (node.get("properties") or {}).items():
            here = f"{path}.{name}" if path else name
            assert sub.get("description"), f"{here} has no description"
            yield here
            yield from fields(sub, here)

    for here in fields(schema, ""):
        assert f"`{here}`" in page
