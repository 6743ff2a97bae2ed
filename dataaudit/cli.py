"""The command line: parses, calls the library, and turns the worst finding into the exit status.

Exit status (README, "Exit status"): 0 ran and found nothing at or above --fail-on, 1 found something,
2 bad input or a damaged run (one line on stderr), 3 an internal error (one line; DATAAUDIT_DEBUG=1 shows
the traceback), 130 interrupted.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

EXIT_OK, EXIT_FOUND, EXIT_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class _App(typer.Typer):
    """The program: every way of failing ends in one line on stderr and an exit status that says which.

    Calling it (the console script, `app([...])`) runs typer without its standalone mode, so that usage
    errors and unexpected exceptions come back here instead of as a framed box or a traceback.
    """

    def __call__(self, args: list[str] | None = None, **kwargs) -> None:
        from typer._click import exceptions as click_errors

        kwargs.update(standalone_mode=False)
        kwargs.setdefault("prog_name", "dataaudit")
        try:
            status = super().__call__(args, **kwargs)
        except click_errors.NoArgsIsHelpError as e:  # bare `dataaudit`: the help, as before
            e.show()
            sys.exit(EXIT_INPUT)
        except click_errors.UsageError as e:  # bad option values, unknown options, missing arguments
            where = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            _say(f"{_one_line(e.format_message())}{where}")
            sys.exit(EXIT_INPUT)
        except click_errors.ClickException as e:
            _say(_one_line(e.format_message()))
            sys.exit(EXIT_INPUT)
        except Exception as e:
            if os.environ.get("DATAAUDIT_DEBUG"):
                raise
            _say(f"internal error: {type(e).__name__}: {_one_line(str(e))} (a bug in dataaudit: rerun with "
                 "DATAAUDIT_DEBUG=1 for the traceback, and report it)")
            sys.exit(EXIT_INTERNAL)
        sys.exit(status if isinstance(status, int) else EXIT_OK)


# Plain help (rich_markup_mode=None): typer's rich formatting imports rich and markdown-it, a third of the
# time `dataaudit --help` takes.
app = _App(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
           pretty_exceptions_enable=False, context_settings={"help_option_names": ["-h", "--help"]},
           help="Trace a training-loss plateau to the data or the optimizer.")

# "never": no finding makes the exit status 1 (what the demo, whose noise is planted, defaults to)
_SEVERITY = {"info": 0, "warning": 1, "critical": 2, "never": 3}
_FAIL_ON_HELP = ("Exit 1 when a finding is at least this severe: info, warning, critical, "
                 "or never (exit 0 whatever is found).")
_FAIL_ON_METAVAR = "[info|warning|critical|never]"


def _version(value: bool) -> None:
    if value:
        from dataaudit import __version__
        typer.echo(f"dataaudit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Trace a training-loss plateau to the data or the optimizer."""


def _say(message: str) -> None:
    typer.echo(f"dataaudit: {message}", err=True)


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "no message"


def _fail(message: str) -> None:
    _say(_one_line(message))
    raise typer.Exit(EXIT_INPUT)


def _check_out(out: Path) -> None:
    """--out must be a folder or a new path; checked before the work, not after it."""
    if out.exists() and not out.is_dir():
        _fail(f"--out {out}: is a file; expected a folder for the reports (new or existing)")
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        _fail(f"--out {out}: {parent} is a file; expected a folder for the reports (new or existing)")


def _finish(audit, out: Path, fail_on: str) -> None:
    from dataaudit.scan import flagged_table

    flagged = flagged_table(audit)
    try:
        out.mkdir(parents=True, exist_ok=True)
        flagged.to_csv(out / "flagged.csv", index=False)
        audit.write_json(out / "audit.json")
        audit.write_html(out / "audit.html")
    except OSError as e:
        _fail(f"--out {out}: cannot write the reports ({type(e).__name__}: {e.strerror or e})")
    kind = "target" if audit.run_summary.get("task") == "regression" else "label"
    typer.echo(f"{len(flagged)} suspected {kind} errors in {out / 'flagged.csv'} "
               f"(every sample: audit.issues() in Python)")
    worst = max((_SEVERITY[f.severity] for f in audit.findings), default=-1)
    typer.echo(f"verdict: {audit.verdict} (data share {audit.data_share:.0%}); "
               f"{len(audit.findings)} findings; report in {out / 'audit.html'}")
    # what to act on first; notes (info, skipped checks) stay in the report
    shown = [f for f in audit.findings if f.severity != "info"][:10] or audit.findings[:3]
    for f in shown:
        typer.echo(f"  [{f.severity}] {f.check}: {f.summary}")
    if len(audit.findings) > len(shown):
        typer.echo(f"  ... and {len(audit.findings) - len(shown)} more findings in the report")
    if worst >= _SEVERITY[fail_on]:
        raise typer.Exit(1)


def _check_fail_on(value: str) -> str:
    if value not in _SEVERITY:
        raise typer.BadParameter(f"expected one of {', '.join(_SEVERITY)}; got {value!r}")
    return value


@app.command()
def report(run_dir: Path = typer.Argument(..., help="A run directory written by dataaudit.Tracker."),
           out: Path = typer.Option(Path("reports"), help="Where audit.html and audit.json go."),
           fail_on: str = typer.Option("critical", callback=_check_fail_on, metavar=_FAIL_ON_METAVAR,
                                       help=_FAIL_ON_HELP),
           data: Path | None = typer.Option(None, "--data", help="The training dataset's image folder "
                                                                "(<class>/<image>): thumbnails of the flagged "
                                                                "samples in the report.")) -> None:
    """Audit a tracked training run."""
    from dataaudit import analyze
    from dataaudit.store import RunFormatError

    if data is not None and not data.is_dir():
        _fail(f"--data {data}: expected the training dataset's image folder (<class>/<image>); "
              "got no such directory")
    _check_out(out)
    try:
        audit = analyze(run_dir, progress=None, dataset=data)
    except RunFormatError as e:
        _fail(str(e))
    _finish(audit, out, fail_on)


@app.command()
def scan(dataset_dir: Path = typer.Argument(..., help="data.npz, one .csv/.parquet table, class folders of "
                                                      "images, or labels.npy (+ features.npy)."),
         model: Path | None = typer.Option(None, "--model", help="Checkpoint: TorchScript, a state_dict (with "
                                                                  "--arch), or with --trust-pickle a pickled module "
                                                                  "or a .pt2 (torch.export)."),
         pred_probs: Path | None = typer.Option(None, "--pred-probs",
                                                help="Out-of-sample predicted probabilities, shape (n, k), .npy."),
         arch: str | None = typer.Option(None, "--arch", help="module:callable building the model of a state_dict."),
         trust_pickle: bool = typer.Option(False, "--trust-pickle",
                                           help="Allow loading a pickled module or a .pt2 (both run code from "
                                                "the file: trusted files only)."),
         run: Path | None = typer.Option(None, "--run", help="A tracked run of this dataset: its audit, "
                                                            "with the scan's label issues added."),
         out: Path = typer.Option(Path("reports"), help="Where audit.html, audit.json and flagged.csv go."),
         fail_on: str = typer.Option("critical", callback=_check_fail_on, metavar=_FAIL_ON_METAVAR,
                                     help=_FAIL_ON_HELP),
         device: str = typer.Option("cpu", help="cpu or cuda (cuda:N)."),
         label_col: str = typer.Option("label", "--label-col", help="Label column of a table."),
         batch_size: int = typer.Option(256, min=1, help="Batch size of the forward passes.")) -> None:
    """Audit a dataset from a model checkpoint or precomputed out-of-sample probabilities."""
    if (model is None) == (pred_probs is None):
        _fail("scan needs exactly one of --model CKPT or --pred-probs FILE.npy")
    if not (device == "cpu" or device == "cuda" or device.startswith("cuda:")):
        _fail(f"--device: expected cpu or cuda; got {device!r}")
    if arch is not None and model is None:
        _fail("--arch needs --model (a state_dict checkpoint)")
    _check_out(out)
    from dataaudit.scan import ScanInputError
    from dataaudit.scan import scan as run_scan
    from dataaudit.store import RunFormatError

    if device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            _fail(f"--device {device}: CUDA is not available to this torch build")
    try:
        audit = run_scan(dataset_dir, model=model, pred_probs=pred_probs, run=run, arch=arch,
                         trust_pickle=trust_pickle, device=device, label_col=label_col, batch_size=batch_size,
                         log=lambda line: typer.echo(line, err=True), progress=None)
    except (ScanInputError, RunFormatError) as e:
        _fail(str(e))
    _finish(audit, out, fail_on)


@app.command()
def demo(out: Path = typer.Option(Path("reports"), help="Where the run and the report go."),
         epochs: int = typer.Option(30, min=1, help="Training epochs."),
         noise: float = typer.Option(0.2, min=0.0, max=0.9, help="Share of labels flipped on purpose."),
         fail_on: str = typer.Option("never", callback=_check_fail_on, metavar=_FAIL_ON_METAVAR,
                                     help=_FAIL_ON_HELP + " The demo's label noise is planted, so by default "
                                          "its findings do not make it fail.")) -> None:
    """Train a small model on digits with planted label noise, track it, and write the audit."""
    from dataaudit.demo import run_demo

    _check_out(out)
    typer.echo(f"training an MLP on scikit-learn's digits with {noise:.0%} of labels flipped, {epochs} epochs...")
    audit = run_demo(out, epochs=epochs, noise_rate=noise, progress=None)
    _finish(audit, out, fail_on)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
