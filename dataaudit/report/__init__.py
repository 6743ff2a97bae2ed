"""Rendering an Audit: one self-contained HTML file. Checks never build HTML; this never computes."""
from dataaudit.report.html import render_html

__all__ = ["render_html"]
