"""Draw the report's series as small inline SVGs (matplotlib, imported here only when a report is drawn)."""
from __future__ import annotations

import io
import re
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd

WIDTH, HEIGHT = 6.4, 2.5  # inches
CLEAN, FLAGGED, ALL, VAL, ONSET = "#2471a3", "#c0392b", "#555555", "#8e44ad", "#e67e22"
_RC = {
    "svg.fonttype": "none",  # text stays text: smaller, selectable, uses the page's font
    "svg.hashsalt": "dataaudit",  # stable ids: the same audit gives the same file
    "font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "legend.fontsize": 7,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.color": "#eeeeee",
    "lines.linewidth": 1.4, "figure.dpi": 72,
}


@contextmanager
def _figure(ncols: int = 1, *, width: float = WIDTH, height: float = HEIGHT):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with matplotlib.rc_context(_RC):
        fig, axes = plt.subplots(1, ncols, figsize=(width, height), squeeze=False)
        try:
            yield fig, list(axes[0])
        finally:
            plt.close(fig)


def _axes(ax, xlabel: str, ylabel: str, *, epochs: bool = False) -> None:
    """Label both axes, marked for the page (class "axis-label x" / "axis-label y" in the SVG, see `_svg`),
    and keep epoch ticks on whole numbers."""
    ax.set_xlabel(xlabel, gid=f"axis-xlabel-{id(ax)}")
    ax.set_ylabel(ylabel, gid=f"axis-ylabel-{id(ax)}")
    if epochs:
        from matplotlib.ticker import MaxNLocator
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def _series(ax, x: np.ndarray, series: list[tuple[str, np.ndarray, str]], **style) -> None:
    """Draw (label, values, color) lines so that none hides another: a line equal to one drawn before is drawn
    dashed with open markers over it and says so in its label."""
    drawn: list[tuple[str, np.ndarray]] = []
    for label, values, color in series:
        values = np.asarray(values, dtype=float)
        same = next((name for name, v in drawn if len(v) == len(values)
                     and np.allclose(v, values, equal_nan=True, rtol=1e-6, atol=1e-12)), None)
        if same is None:
            ax.plot(x, values, color=color, label=label, **style)
        else:
            kw = {**style, "ls": (0, (4, 3)), "marker": "s", "mfc": "none", "ms": style.get("ms", 3) + 2.5}
            ax.plot(x, values, color=color, label=f"{label} (same as {same})", **kw)
        drawn.append((label, values))


def _lift_off_zero(ax, values: list[np.ndarray]) -> None:
    """Leave room below zero so that a series at 0 shows above the x axis instead of on it."""
    finite = np.concatenate([np.asarray(v, dtype=float)[np.isfinite(np.asarray(v, dtype=float))] for v in values])
    top = float(finite.max()) if len(finite) else 1.0
    top = top if top > 0 else 1.0
    ax.set_ylim(-0.06 * top, 1.08 * top)


def _svg(fig) -> str:
    """The figure as an inline <svg> element (no XML prolog, no DOCTYPE, no fixed pixel size)."""
    fig.tight_layout()
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    text = buffer.getvalue()
    text = text[text.index("<svg"):]
    # the RDF block only names the format, and its namespace URLs would read as links
    text = re.sub(r"\s*<metadata>.*?</metadata>", "", text, count=1, flags=re.S)
    # the axis labels' groups become classes the page (and its browser test) can find
    text = re.sub(r'<g id="axis-([xy])label-\d+"', r'<g class="axis-label \1"', text)
    css = "plot wide" if fig.get_figwidth() > WIDTH + 1 else "plot"
    # scale with the page: keep the viewBox, drop the fixed width and height
    return re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', rf'<svg\1 class="{css}"', text, count=1)


def _mark_onset(ax, onset: int | None, plateau_epochs: list[int] | None) -> None:
    if plateau_epochs and len(plateau_epochs) == 2:
        ax.axvspan(plateau_epochs[0], plateau_epochs[1], color=ONSET, alpha=0.08, lw=0)
    if onset is not None:
        ax.axvline(onset, color=ONSET, ls="--", lw=1)
        # at the top of the axes, where the curves (falling losses) rarely are
        ax.annotate(f"plateau from epoch {onset}", (onset, 1), xycoords=("data", "axes fraction"),
                    xytext=(3, -9), textcoords="offset points", color=ONSET, fontsize=7)


def loss_curve(table: pd.DataFrame, *, onset: int | None, plateau_epochs: list[int] | None,
               unit: str = "nats") -> str | None:
    """Mean loss per epoch: all samples, clean and flagged apart, val when present. `unit`: of the loss
    ("nats" for cross-entropy; "" when unknown)."""
    if table.empty:
        return None
    x = table.index.to_numpy(dtype=float)
    with _figure() as (fig, (ax,)):
        style = {"marker": "o", "ms": 2.5} if len(x) <= 60 else {}
        if table["flagged"].notna().any():
            ax.plot(x, table["clean"], color=CLEAN, label="clean (unflagged)", **style)
            ax.plot(x, table["flagged"], color=FLAGGED, label="flagged", **style)
            ax.plot(x, table["all"], color=ALL, lw=1, ls=":", label="all")
        else:
            ax.plot(x, table["all"], color=ALL, label="all samples", **style)
        if table["val"].notna().any():
            ax.plot(x, table["val"], color=VAL, lw=1, ls="--", label="val")
        _mark_onset(ax, onset, plateau_epochs)
        _axes(ax, "epoch", _loss_label("mean loss", unit), epochs=True)
        _legend_above(ax)
        return _svg(fig)


def loss_histogram(hist: dict[str, np.ndarray] | None, *, unit: str = "nats") -> str | None:
    """Per-sample loss of one epoch, clean and flagged apart (what a one-epoch run has instead of a curve)."""
    if hist is None:
        return None
    edges = hist["edges"]
    with _figure() as (fig, (ax,)):
        ax.stairs(hist["clean"], edges, fill=True, color=CLEAN, alpha=0.6, label="clean (unflagged)")
        if hist["flagged"].any():
            ax.stairs(hist["flagged"], edges, fill=True, color=FLAGGED, alpha=0.6, label="flagged")
        ax.set_yscale("symlog", linthresh=1)
        _axes(ax, _loss_label("per-sample loss", unit), "samples (log scale)")
        _legend_above(ax)
        return _svg(fig)


def class_curves(table: pd.DataFrame, *, onset: int | None, unit: str = "nats") -> str | None:
    """Mean loss per epoch of each class (one line per class), or bars for a one-epoch run."""
    if table.empty:
        return None
    with _figure() as (fig, (ax,)):
        labels = [str(c) for c in table.columns]
        if len(table) == 1:
            ax.bar(labels, table.iloc[0].to_numpy(dtype=float), color=CLEAN)
            _axes(ax, "class (given label)", _loss_label("mean loss", unit))
        else:
            x = table.index.to_numpy(dtype=float)
            cmap = _colors(len(labels))
            for color, label, column in zip(cmap, labels, table.columns, strict=True):
                ax.plot(x, table[column], color=color, lw=1.1, label=label)
            if onset is not None:
                ax.axvline(onset, color=ONSET, ls="--", lw=1)
            _axes(ax, "epoch", _loss_label("mean loss", unit), epochs=True)
            ax.legend(title="class", loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False,
                      ncol=1 if len(labels) <= 5 else 2, handlelength=1.2, columnspacing=0.8)
        return _svg(fig)


def coverage_plot(rows: list[dict[str, Any]]) -> str | None:
    """Unique, missing and duplicate draws per epoch."""
    if len(rows) < 2:
        return None
    table = pd.DataFrame(rows).set_index("epoch").sort_index()
    x = table.index.to_numpy(dtype=float)
    with _figure(height=2.0) as (fig, (ax,)):
        series = [("unique", table["unique"], CLEAN), ("missing", table["missing"], FLAGGED),
                  ("duplicates", table["duplicates"], ONSET)]
        _series(ax, x, series, marker="o", ms=2.5)
        _lift_off_zero(ax, [v for _, v, _ in series])
        _axes(ax, "epoch", "samples", epochs=True)
        _legend_above(ax)
        return _svg(fig)


def drift_plot(rows: list[dict[str, Any]], *, alpha: float | None) -> str | None:
    """Per epoch: the input test's p-value (log scale) and the share of samples whose input changed."""
    if not rows:
        return None
    table = pd.DataFrame(rows).set_index("epoch").sort_index()
    x = table.index.to_numpy(dtype=float)
    with _figure(2, width=9.6) as (fig, (left, right)):
        lowest, series = 1.0, []
        for column, color, label in (("p_value", CLEAN, "inputs"), ("label_p_value", VAL, "labels")):
            if column in table and table[column].notna().any():
                p = table[column].astype(float).clip(lower=1e-16)
                series.append((label, p.to_numpy(), color))
                lowest = min(lowest, float(p.min()))
        _series(left, x, series, marker="o", ms=2)
        if series:
            left.set_yscale("log")
            # a fixed, decade-wide range: all-equal p-values would otherwise make a degenerate axis
            left.set_ylim(min(1e-4, lowest / 10), 2.0)
            if alpha:
                left.axhline(alpha, color=FLAGGED, ls="--", lw=1, label=f"alpha {alpha:g}")
            left.legend(loc="lower left", frameon=False)
        left.set_title("p-value vs the reference epoch")
        _axes(left, "epoch", "p-value (log scale)", epochs=True)
        series = [(label, table[column].astype(float).to_numpy(), color)
                  for column, color, label in (("changed_share", CLEAN, "inputs changed"),
                                               ("label_changed_share", VAL, "labels changed"))
                  if column in table and table[column].notna().any()]
        _series(right, x, series, marker="o", ms=2)
        right.set_ylim(-0.06, 1.04)  # a share of 0 shows above the axis, not on it
        right.set_title("share of samples changed from the epoch before")
        _axes(right, "epoch", "share of samples", epochs=True)
        if series:
            right.legend(loc="upper left", frameon=False)
        return _svg(fig)


def optimizer_plot(table: pd.DataFrame, *, onset: int | None) -> str | None:
    """lr, gradient norm and update-to-weight ratio against the (fractional) epoch, one panel each."""
    if table.empty:
        return None
    titles = {"lr": "learning rate", "grad_norm": "gradient norm", "update_ratio": "update / weight"}
    ylabels = {"lr": "learning rate", "grad_norm": "gradient L2 norm", "update_ratio": "‖update‖ / ‖weight‖"}
    columns = list(table.columns)
    with _figure(len(columns), width=3.2 * len(columns)) as (fig, axes):
        x = table.index.to_numpy(dtype=float)
        for ax, column in zip(axes, columns, strict=True):
            values = table[column].to_numpy(dtype=float)
            ok = np.isfinite(values)
            ax.plot(x[ok], values[ok], color=CLEAN, lw=1)
            positive = values[ok & (values > 0)]
            if len(positive) and positive.max() / positive.min() > 50:
                ax.set_yscale("log")
            elif len(positive) and positive.max() - positive.min() <= 1e-3 * positive.max():
                ax.set_ylim(0, 1.5 * positive.max())  # constant: show it as such, not as offset noise
            if onset is not None:
                ax.axvline(onset, color=ONSET, ls="--", lw=1)
            ax.set_title(titles.get(column, column))
            scale = " (log scale)" if ax.get_yscale() == "log" else ""
            _axes(ax, "epoch", ylabels.get(column, column) + scale, epochs=True)
        return _svg(fig)


def _loss_label(what: str, unit: str) -> str:
    return f"{what} ({unit})" if unit else what


def _legend_above(ax) -> None:
    # above the axes, where it cannot hide a curve
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), frameon=False, ncol=5, borderaxespad=0.2)


def _colors(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]
