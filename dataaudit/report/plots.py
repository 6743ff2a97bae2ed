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


def _svg(fig) -> str:
    """The figure as an inline <svg> element (no XML prolog, no DOCTYPE, no fixed pixel size)."""
    fig.tight_layout()
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    text = buffer.getvalue()
    text = text[text.index("<svg"):]
    # the RDF block only names the format, and its namespace URLs would read as links
    text = re.sub(r"\s*<metadata>.*?</metadata>", "", text, count=1, flags=re.S)
    css = "plot wide" if fig.get_figwidth() > WIDTH + 1 else "plot"
    # scale with the page: keep the viewBox, drop the fixed width and height
    return re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', rf'<svg\1 class="{css}"', text, count=1)


def _mark_onset(ax, onset: int | None, plateau_epochs: list[int] | None) -> None:
    if plateau_epochs and len(plateau_epochs) == 2:
        ax.axvspan(plateau_epochs[0], plateau_epochs[1], color=ONSET, alpha=0.08, lw=0)
    if onset is not None:
        ax.axvline(onset, color=ONSET, ls="--", lw=1)
        ax.annotate(f"plateau from epoch {onset}", (onset, 0), xycoords=("data", "axes fraction"),
                    xytext=(3, 4), textcoords="offset points", color=ONSET, fontsize=7)


def loss_curve(table: pd.DataFrame, *, onset: int | None, plateau_epochs: list[int] | None) -> str | None:
    """Mean loss per epoch: all samples, clean and flagged apart, val when present."""
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
        ax.set_xlabel("epoch")
        ax.set_ylabel("mean loss")
        _legend_above(ax)
        return _svg(fig)


def loss_histogram(hist: dict[str, np.ndarray] | None) -> str | None:
    """Per-sample loss of one epoch, clean and flagged apart (what a one-epoch run has instead of a curve)."""
    if hist is None:
        return None
    edges = hist["edges"]
    with _figure() as (fig, (ax,)):
        ax.stairs(hist["clean"], edges, fill=True, color=CLEAN, alpha=0.6, label="clean (unflagged)")
        if hist["flagged"].any():
            ax.stairs(hist["flagged"], edges, fill=True, color=FLAGGED, alpha=0.6, label="flagged")
        ax.set_yscale("symlog", linthresh=1)
        ax.set_xlabel("per-sample loss")
        ax.set_ylabel("samples")
        _legend_above(ax)
        return _svg(fig)


def class_curves(table: pd.DataFrame, *, onset: int | None) -> str | None:
    """Mean loss per epoch of each class (one line per class), or bars for a one-epoch run."""
    if table.empty:
        return None
    with _figure() as (fig, (ax,)):
        labels = [str(c) for c in table.columns]
        if len(table) == 1:
            ax.bar(labels, table.iloc[0].to_numpy(dtype=float), color=CLEAN)
            ax.set_xlabel("class (given label)")
        else:
            x = table.index.to_numpy(dtype=float)
            cmap = _colors(len(labels))
            for color, label, column in zip(cmap, labels, table.columns, strict=True):
                ax.plot(x, table[column], color=color, lw=1.1, label=label)
            if onset is not None:
                ax.axvline(onset, color=ONSET, ls="--", lw=1)
            ax.set_xlabel("epoch")
            ax.legend(title="class", loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False,
                      ncol=1 if len(labels) <= 5 else 2, handlelength=1.2, columnspacing=0.8)
        ax.set_ylabel("mean loss")
        return _svg(fig)


def coverage_plot(rows: list[dict[str, Any]]) -> str | None:
    """Unique, missing and duplicate draws per epoch."""
    if len(rows) < 2:
        return None
    table = pd.DataFrame(rows).set_index("epoch").sort_index()
    x = table.index.to_numpy(dtype=float)
    with _figure(height=2.0) as (fig, (ax,)):
        ax.plot(x, table["unique"], color=CLEAN, label="unique")
        ax.plot(x, table["missing"], color=FLAGGED, label="missing")
        ax.plot(x, table["duplicates"], color=ONSET, label="duplicates")
        ax.set_xlabel("epoch")
        ax.set_ylabel("samples")
        ax.set_ylim(bottom=0)
        _legend_above(ax)
        return _svg(fig)


def drift_plot(rows: list[dict[str, Any]], *, alpha: float | None) -> str | None:
    """Per epoch: the input test's p-value (log scale) and the share of samples whose input changed."""
    if not rows:
        return None
    table = pd.DataFrame(rows).set_index("epoch").sort_index()
    x = table.index.to_numpy(dtype=float)
    with _figure(2, width=9.6) as (fig, (left, right)):
        drawn, lowest = False, 1.0
        for column, color, label in (("p_value", CLEAN, "inputs"), ("label_p_value", VAL, "labels")):
            if column in table and table[column].notna().any():
                p = table[column].astype(float).clip(lower=1e-16)
                left.plot(x, p, color=color, marker="o", ms=2, label=label)
                drawn, lowest = True, min(lowest, float(p.min()))
        if drawn:
            left.set_yscale("log")
            # a fixed, decade-wide range: all-equal p-values would otherwise make a degenerate axis
            left.set_ylim(min(1e-4, lowest / 10), 2.0)
            if alpha:
                left.axhline(alpha, color=FLAGGED, ls="--", lw=1, label=f"alpha {alpha:g}")
            left.legend(loc="lower left", frameon=False)
        left.set_title("p-value vs the reference epoch")
        left.set_xlabel("epoch")
        for column, color, label in (("changed_share", CLEAN, "inputs changed"),
                                     ("label_changed_share", VAL, "labels changed")):
            if column in table and table[column].notna().any():
                right.plot(x, table[column].astype(float), color=color, marker="o", ms=2, label=label)
        right.set_ylim(-0.02, 1.02)
        right.set_title("share of samples changed from the epoch before")
        right.set_xlabel("epoch")
        right.legend(loc="upper left", frameon=False)
        return _svg(fig)


def optimizer_plot(table: pd.DataFrame, *, onset: int | None) -> str | None:
    """lr, gradient norm and update-to-weight ratio against the (fractional) epoch, one panel each."""
    if table.empty:
        return None
    titles = {"lr": "learning rate", "grad_norm": "gradient norm", "update_ratio": "update / weight"}
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
            ax.set_xlabel("epoch")
        return _svg(fig)


def _legend_above(ax) -> None:
    # above the axes, where it cannot hide a curve
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), frameon=False, ncol=5, borderaxespad=0.2)


def _colors(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]
