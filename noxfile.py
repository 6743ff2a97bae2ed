"""Developer sessions: `nox -s tests`, `nox -s lint`, `nox -s bench`, `nox -s field`; CI also runs
`nox -s stack resolve integrations`."""
from __future__ import annotations

import re
import sys

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

# The CPU wheel of torch on this machine's disk; a plain "torch" would pull CUDA packages.
TORCH = "torch==2.13.0"
# A practitioner's stack, installed at its newest before dataaudit: installing dataaudit must not change it.
STACK = ("numpy", "pandas", "pyarrow", "pillow", "transformers")
# The oldest releases of the stack that pyproject.toml allows.
OLDEST = ("numpy==1.26.4", "pandas==2.2.3", "pyarrow==16.1.0")


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    session.install(TORCH)
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", "-q", *session.posargs)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.5")
    session.run("ruff", "check", "dataaudit", "tests", "fixtures", "benchmarks", "noxfile.py")


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """Speed and quality figures: tracker overhead, analyze at scale, scan's neighbour search, label-issue
    precision/recall/F1, the analysis on DuckDB out of core."""
    session.install(TORCH)
    session.install("-e", ".[test]")
    session.run("python", "-c", "import time; t = time.perf_counter(); import dataaudit; "
                "print(f'import dataaudit: {time.perf_counter() - t:.2f} s (target < 1 s)')")
    session.run("python", "benchmarks/bench_latency.py")  # --help, import, analyze of the demo run
    session.run("python", "benchmarks/bench_overhead.py")
    # the same on a GPU loop, where torch sees one (benchmarks/cuda_checks.sh runs it with the CUDA tests)
    if session.run("python", "-c", "import torch; print(torch.cuda.is_available())", silent=True).strip() == "True":
        session.run("python", "benchmarks/bench_overhead.py", "--device", "cuda", "--model", "mlp", "conv")
    else:
        session.log("no CUDA device here: the GPU capture overhead comes from benchmarks/cuda_checks.sh")
    # analyze time and memory against samples and epochs (the long points: --curve --large --keep DIR)
    session.run("python", "benchmarks/bench_scale.py", "--curve")
    session.run("python", "benchmarks/bench_neighbors.py")  # scan's neighbour search: before/after, same results
    session.run("python", "benchmarks/bench_labels.py", *session.posargs)
    session.run("python", "benchmarks/bench_probe.py")  # probed data share vs the counterfactual truth
    session.install("duckdb>=1.1")
    session.run("python", "benchmarks/bench_duckdb.py", "--margin-only")  # the analysis on DuckDB, out of core


@nox.session(python="3.11")
def field(session: nox.Session) -> None:
    """The field zoo's full loops (realistic training loops scored against their truths; minutes).
    The default suite runs their quick versions."""
    session.install(TORCH)
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", "-q", "tests/test_field.py", *session.posargs,
                env={"DATAAUDIT_FIELD": "full"})


@nox.session(python="3.11", reuse_venv=False)
def stack(session: nox.Session) -> None:
    """Install dataaudit into a fresh venv that already holds torch and the newest numpy, pandas, pyarrow, pillow
    and transformers; fail if that changes the version of any package installed before, then run the tests."""
    session.install(TORCH)
    session.install("--upgrade", *STACK)
    before = _freeze(session)
    session.install("-e", ".[test]")
    after = _freeze(session)
    changed = sorted(name for name in before if after.get(name) != before[name])
    added = sorted(after.keys() - before.keys())
    session.log("the stack: " + ", ".join(f"{name}=={before.get(name, 'missing')}" for name in STACK))
    session.log(f"pip freeze diff of the {len(before)} packages installed before dataaudit: "
                + (", ".join(f"{name} {before[name]} -> {after.get(name, 'removed')}" for name in changed) or "empty"))
    session.log(f"added by dataaudit ({len(added)}): " + ", ".join(f"{name}=={after[name]}" for name in added))
    if changed:
        session.error(f"installing dataaudit changed {len(changed)} package(s) of the user's stack: "
                      + ", ".join(f"{name} {before[name]} -> {after.get(name, 'removed')}" for name in changed))
    session.run("python", "-m", "pytest", "-q", *session.posargs)


@nox.session(python="3.11")
def oldest(session: nox.Session) -> None:
    """The tests on the oldest numpy, pandas and pyarrow that pyproject.toml allows (not in CI: a few minutes)."""
    session.install(TORCH)
    session.install("-e", ".[test]", *OLDEST)
    session.run("python", "-c", "import numpy, pandas, pyarrow; "
                "print('numpy', numpy.__version__, 'pandas', pandas.__version__, 'pyarrow', pyarrow.__version__)")
    session.run("python", "-m", "pytest", "-q", *session.posargs)


def _freeze(session: nox.Session) -> dict[str, str]:
    """Installed distributions, normalised name -> version (the editable dataaudit itself left out)."""
    out = session.run("python", "-m", "pip", "freeze", "--all", "--exclude-editable", silent=True)
    found = {}
    for line in out.splitlines():
        name, sep, version = line.partition("==")
        if sep:
            found[re.sub(r"[-_.]+", "-", name).lower()] = version.strip()
    return found


@nox.session(python=False)
def resolve(session: nox.Session) -> None:
    """The dependencies (all but torch) resolve to wheels on Python 3.12 and 3.13 (pip install --dry-run)."""
    session.run(sys.executable, ".ci/resolve.py", *(session.posargs or ["3.12", "3.13"]))


@nox.session(python="3.11")
def integrations(session: nox.Session) -> None:
    """The Lightning and Hugging Face Trainer callbacks against the real frameworks (tests/integrations):
    tiny models built from configs, generated or bundled data, nothing downloaded. The default
    `tests` session skips these tests, its environment having neither framework."""
    session.install(TORCH)
    session.install("-e", ".[test]")
    session.install("lightning>=2.2", "transformers>=4.46", "accelerate>=1.0")
    session.run("python", "-m", "pytest", "-q", "tests/integrations", *session.posargs,
                env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
