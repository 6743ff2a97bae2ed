"""Write docs/audit-json.md from dataaudit/audit.schema.json's descriptions: `python docs/make_audit_json_md.py`.

The schema is the one source; tests/test_schema.py checks the page is up to date.
"""
from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def render(schema: dict) -> str:
    lines = ["# audit.json, field by field", "",
             "Every `audit.json` written by `Audit.write_json`, `dataaudit report`, `dataaudit scan` and",
             "`dataaudit demo` follows the JSON Schema `dataaudit/audit.schema.json` (draft 2020-12), shipped with",
             "the package (`importlib.resources.files(\"dataaudit\") / \"audit.schema.json\"`); `schema_version` names",
             "its version. Validate a file with `python -m jsonschema` or:", "",
             "```python", "import json, importlib.resources, jsonschema",
             "schema = json.loads((importlib.resources.files(\"dataaudit\") / \"audit.schema.json\").read_text())",
             "jsonschema.validate(json.load(open(\"reports/audit.json\")), schema)", "```", "",
             "This page is generated from the schema's descriptions. Fields marked *required* are always present.", ""]

    def walk(node: dict, path: str, depth: int) -> None:
        for name, sub in (node.get("properties") or {}).items():
            here = f"{path}.{name}" if path else name
            kind = sub.get("type", "")
            kind = " or ".join(kind) if isinstance(kind, list) else kind
            if sub.get("enum"):
                kind += " (" + " \\| ".join(map(str, sub["enum"])) + ")"
            required = ", *required*" if name in (node.get("required") or ()) else ""
            lines.append(f"{'  ' * depth}- `{here}` ({kind}{required}): {sub.get('description', '')}")
            walk(sub, here, depth + 1)
            items = sub.get("items")
            if sub.get("type") == "array" and isinstance(items, dict) and items.get("properties"):
                walk(items, here + "[]", depth + 1)

    walk(schema, "", 0)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    schema = json.loads((ROOT / "dataaudit" / "audit.schema.json").read_text())
    (ROOT / "docs" / "audit-json.md").write_text(render(schema))
