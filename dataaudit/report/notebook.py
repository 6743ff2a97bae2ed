"""The notebook display of an Audit (`Audit._repr_html_`): the verdict card, the findings and the loss plot.

A fragment, not a page: no <html>, no script, styles scoped to one class so they leave the notebook alone.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from markupsafe import Markup, escape

from dataaudit.report import figures, plots

if TYPE_CHECKING:
    from dataaudit.audit import Audit

_COLOURS = {"critical": "#c0392b", "warning": "#d35400", "info": "#2471a3", "data": "#c0392b",
            "optimizer": "#d35400", "mixed": "#b7950b", "none": "#1e8449"}
MAX_FINDINGS = 8
_STYLE = """<style>
.dataaudit-card { font: 13px/1.4 system-ui, sans-serif; max-width: 52rem; }
.dataaudit-card .da-verdict { border-left: 5px solid; padding: .4rem .8rem; background: #f7f9fb; }
.dataaudit-card .da-badge { color: #fff; font-size: .72rem; font-weight: 600; text-transform: uppercase;
  padding: 0 .35rem; border-radius: 3px; }
.dataaudit-card ul { margin: .4rem 0; padding-left: 1.2rem; } .dataaudit-card svg { max-width: 40rem; height: auto; }
.dataaudit-card .da-muted { color: #666; font-size: .85em; }
</style>"""


def render_card(audit: Audit) -> str:
    """HTML fragment: verdict and headline, the findings (most severe first), one loss plot."""
    from dataaudit.report.html import headline, loss_unit

    colour = _COLOURS.get(audit.verdict, "#2471a3")
    parts = [_STYLE, '<div class="dataaudit-card">',
             f'<div class="da-verdict" style="border-color:{colour}">'
             f'<span class="da-badge" style="background:{colour}">{escape(audit.verdict)}</span> '
             f'data share {100 * audit.data_share:.0f}%<br><strong>{escape(headline(audit))}</strong></div>']
    findings = audit.findings
    if findings:
        items = "".join(
            f'<li><span class="da-badge" style="background:{_COLOURS[f.severity]}">{escape(f.severity)}</span> '
            f"<b>{escape(f.check)}</b>: {escape(f.summary)}</li>" for f in findings[:MAX_FINDINGS])
        more = (f'<li class="da-muted">… {len(findings) - MAX_FINDINGS} more in audit.findings</li>'
                if len(findings) > MAX_FINDINGS else "")
        parts.append(f"<ul>{items}{more}</ul>")
    else:
        parts.append("<p>Nothing found.</p>")
    svg = _loss_plot(audit, unit=loss_unit(audit))
    if svg:
        parts.append(svg)  # drawn by matplotlib from numbers only
    parts.append(f'<p class="da-muted">{len(audit.label_issues):,} label issues: <code>audit.issues()</code> '
                 "has every sample, <code>audit.issue_summary()</code> every check, "
                 "<code>audit.write_html(path)</code> the full report.</p></div>")
    return str(Markup("".join(parts)))


def _loss_plot(audit: Audit, *, unit: str) -> str | None:
    losses = figures.loss_by_epoch(audit.run, audit.label_issues)
    if losses.empty:
        return None
    if len(losses) == 1:
        return plots.loss_histogram(figures.loss_histogram(audit.run, audit.label_issues), unit=unit)
    onset = audit.plateau.get("onset_epoch") if audit.plateau.get("detected") else None
    return plots.loss_curve(losses, onset=onset, plateau_epochs=(audit.attribution or {}).get("plateau_epochs"),
                            unit=unit)
