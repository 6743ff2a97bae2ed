"""Developer sessions: `nox -s tests`, `nox -s lint`, `nox -s bench`."""
from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

# The CPU wheel of torch on this machine's disk; a plain "torch" would pull CUDA packages.
TORCH = "torch==2.13.0"


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
    """Speed and quality figures: tracker overhead, analyze at scale, label-issue precision/recall/F1."""
    session.install(TORCH)
    session.install("-e", ".[test]")
    session.run("python", "-c", "import time; t = time.perf_counter(); import dataaudit; "
                "print(f'import dataaudit: {time.perf_counter() - t:.2f} s (target < 1 s)')")
    session.run("python", "benchmarks/bench_overhead.py")
    session.run("python", "benchmarks/bench_scale.py")
    session.run("python", "benchmarks/bench_labels.py", *session.posargs)
    session.run("python", "benchmarks/bench_probe.py")  # probed data share vs the counterfactual truth
