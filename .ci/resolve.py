"""Do dataaudit's dependencies (all but torch) resolve to wheels on other Pythons? `python .ci/resolve.py 3.12 3.13`.

For each version, the interpreter of that version (python3.X on PATH, else pyenv's) runs
`pip install --dry-run --ignore-installed --only-binary=:all: --report` of every dependency in
pyproject.toml (the `test` extra included) but torch, whose CPU wheel here is for 3.11 only. Without such
an interpreter, this one resolves for it with `--python-version` (pip then still evaluates environment
markers for the running Python: close, not exact; it says so). Exits 1 when any version fails to resolve,
and prints the versions resolved for the stack packages.
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHOWN = ("numpy", "pandas", "pyarrow", "scipy", "scikit-learn", "cleanlab", "pillow", "matplotlib")


def requirements() -> list[str]:
    """The project's dependencies and its test extra, torch left out."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = project["dependencies"] + project["optional-dependencies"]["test"]
    return [r for r in found if re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower() != "torch"]


def interpreter(version: str) -> str | None:
    """A python of `version` ("3.13"): python3.13 on PATH, else the newest pyenv build of it."""
    found = shutil.which(f"python{version}")
    if found and _version_of(found) == version:
        return found
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    builds = sorted(glob.glob(os.path.join(root, "versions", f"{version}.*", "bin", "python")))
    return builds[-1] if builds else None


def _version_of(python: str) -> str | None:
    out = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                         capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def resolve(version: str, reqs: list[str]) -> bool:
    python = interpreter(version)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        # --ignore-installed: resolve everything afresh, not against what that interpreter happens to hold
        options = ["--dry-run", "--ignore-installed", "--only-binary=:all:", "--quiet", "--report", str(report)]
        if python is None:
            how = f"no python{version} here: resolved by {sys.executable} with --python-version {version}"
            # pip takes a target Python only with --target (nothing is written on a dry run)
            options += ["--python-version", version, "--target", str(Path(tmp) / "target")]
            python = sys.executable
        else:
            how = python
        done = subprocess.run([python, "-m", "pip", "install", *options, *reqs], capture_output=True, text=True)
        if done.returncode != 0:
            print(f"Python {version} ({how}): FAIL, pip could not resolve:\n{done.stderr.strip()}")
            return False
        items = json.loads(report.read_text())["install"]
    versions = {re.sub(r"[-_.]+", "-", i["metadata"]["name"]).lower(): i["metadata"]["version"] for i in items}
    shown = ", ".join(f"{name} {versions[name]}" for name in SHOWN if name in versions)
    print(f"Python {version} ({how}): resolved {len(versions)} packages, all wheels: {shown}")
    return True


def main(versions: list[str]) -> int:
    if not versions:
        print(__doc__.splitlines()[0])
        return 2
    reqs = requirements()
    print("requirements: " + " ".join(reqs))
    ok = [resolve(v, reqs) for v in versions]
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
