"""Render an Audit to one self-contained HTML page (no scripts, no network)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import jinja2

if TYPE_CHECKING:
    from dataaudit.audit import Audit

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("dataaudit.report", "templates"),
    autoescape=True,  # every string from the data is escaped
    trim_blocks=True,
    lstrip_blocks=True,
)


def render_html(audit: Audit) -> str:
    data = audit.to_dict()
    return _ENV.get_template("audit.html.j2").render(audit=data)
