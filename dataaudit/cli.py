"""The command line: parses, calls the library, and turns the worst finding into the exit status.

Exit status: 0 ran and found nothing at or above --fail-on, 1 found something, 2 bad input.
"""
from __future__ import annotations

import sys
from pathlib import Path

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Trace a training-loss plateau to the data or the optimizer.")

_SEVERITY = {"info": 0, "warning": 1, "critical": 2}


def _fail(message: str) -> None:
    typer.echo(f"dataaudit: {message}", err=True)
    raise typer.Exit(2)


def _finish(audit, out: Path, fail_on: str) -> None:
    audit.write_json(out / "audit.json")
    audit.write_html(out / "audit.html")
    worst = max((_SEVERITY[f.severity] for f in audit.findings), default=-1)
    typer.echo(f"verdict: {audit.verdict} (data share {audit.data_share:.0%}); "
               f"{len(audit.findings)} findings; report in {out / 'audit.html'}")
    for f in audit.findings[:10]:
        typer.echo(f"  [{f.severity}] {f.check}: {f.summary}")
    if worst >= _SEVERITY[fail_on]:
        raise typer.Exit(1)


def _check_fail_on(value: str) -> str:
    if value not in _SEVERITY:
        raise typer.BadParameter(f"expected one of {', '.join(_SEVERITY)}; got {value!r}")
    return value


@app.command()
def report(run_dir: Path = typer.Argument(..., help="A run directory written by dataaudit.Tracker."),
           out: Path = typer.Option(Path("reports"), help="Where audit.html and audit.json go."),
           fail_on: str = typer.Option("critical", callback=_check_fail_on,
                                       help="Exit 1 when a finding is at least this severe.")) -> None:
    """Audit a tracked training run."""
    from dataaudit import analyze
    from dataaudit.store import RunFormatError

    try:
        audit = analyze(run_dir)
    except RunFormatError as e:
        _fail(str(e))
    _finish(audit, out, fail_on)


@app.command()
def demo(out: Path = typer.Option(Path("reports"), help="Where the run and the report go."),
         epochs: int = typer.Option(30, min=1, help="Training epochs."),
         noise: float = typer.Option(0.2, min=0.0, max=0.9, help="Share of labels flipped on purpose."),
         fail_on: str = typer.Option("critical", callback=_check_fail_on)) -> None:
    """Train a small model on digits with planted label noise, track it, and write the audit."""
    from dataaudit.demo import run_demo

    typer.echo(f"training an MLP on scikit-learn's digits with {noise:.0%} of labels flipped, {epochs} epochs...")
    audit = run_demo(out, epochs=epochs, noise_rate=noise)
    _finish(audit, out, fail_on)


def main() -> None:  # pragma: no cover
    sys.exit(app())
