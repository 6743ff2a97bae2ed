"""The report's tables as escaped HTML fragments: findings' evidence as key-value tables, the attribution as a
formula with its numbers, and the flagged samples as compact JSON for the page's table script.

Every string from the data goes through `escape`; nothing here computes a check.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from markupsafe import Markup, escape

if TYPE_CHECKING:
    import pandas as pd

    from dataaudit.audit import Audit

MAX_LIST_ITEMS = 20  # a list of ids or numbers shows this many, then how many in all (audit.json has each)
MAX_TABLE_ROWS = 10  # a list of records (confused pairs, near-duplicates) shows this many rows
# Flagged samples in the page's table (about 47 bytes each: a page of a run with 10^5 flagged stays under 1 MB);
# flagged.csv and audit.issues() hold every one.
MAX_FLAGGED_ROWS = 15_000
FLAGGED_COLUMNS = ("sample_id", "given", "suggested", "label_quality", "aum", "plateau_loss", "loss_trend", "file")


def evidence_table(evidence: dict[str, Any]) -> Markup:
    """A finding's evidence as a two-column table; nested lists and records as lists and small tables."""
    rows = "".join(f"<tr><th>{escape(_key(k))}</th><td>{value_html(v)}</td></tr>" for k, v in evidence.items())
    return Markup(f'<table class="kv">{rows}</table>')


def value_html(v: Any, depth: int = 0) -> Markup:
    """One value, readable: numbers formatted, lists cut at an item (never mid-token) with the count in all."""
    if isinstance(v, dict):
        if not v:
            return Markup("none")
        if depth >= 2:
            return escape(_compact(v))
        rows = "".join(f"<tr><th>{escape(_key(k))}</th><td>{value_html(x, depth + 1)}</td></tr>" for k, x in v.items())
        return Markup(f'<table class="kv nested">{rows}</table>')
    if isinstance(v, list | tuple):
        if not v:
            return Markup("none")
        if all(isinstance(x, dict) for x in v) and depth < 2:
            return _records(list(v))
        shown = ", ".join(_scalar(x) if not isinstance(x, dict | list | tuple) else _compact(x)
                          for x in v[:MAX_LIST_ITEMS])
        more = f" … ({len(v):,} in all)" if len(v) > MAX_LIST_ITEMS else ""
        return escape(shown + more)
    return escape(_scalar(v))


def _records(items: list[dict]) -> Markup:
    columns = list(dict.fromkeys(k for item in items[:MAX_TABLE_ROWS] for k in item))
    head = "".join(f"<th>{escape(_key(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{value_html(item.get(c), 2)}</td>" for c in columns) + "</tr>"
                   for item in items[:MAX_TABLE_ROWS])
    more = (f'<tr><td colspan="{len(columns)}">… {len(items) - MAX_TABLE_ROWS:,} more</td></tr>'
            if len(items) > MAX_TABLE_ROWS else "")
    return Markup(f'<table class="records"><tr>{head}</tr>{body}{more}</table>')


def _key(k: Any) -> str:
    return str(k).replace("_", " ")


def _scalar(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return {True: "yes", False: "no", None: "—"}[v]
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _compact(v: Any) -> str:
    """A nested value as short text, cut between items (never inside a number or a name)."""
    if isinstance(v, dict):
        items = [f"{_key(k)}: {_compact(x)}" for k, x in list(v.items())[:MAX_LIST_ITEMS]]
        more = f", … ({len(v):,} in all)" if len(v) > MAX_LIST_ITEMS else ""
        return "{" + ", ".join(items) + more + "}"
    if isinstance(v, list | tuple):
        items = [_compact(x) for x in v[:MAX_LIST_ITEMS]]
        more = f", … ({len(v):,} in all)" if len(v) > MAX_LIST_ITEMS else ""
        return "[" + ", ".join(items) + more + "]"
    return _scalar(v)


def method_formula(attribution: dict[str, Any], data_share: float, *, scan: bool = False) -> list[str]:
    """The attribution as formula lines with the numbers plugged in.

    Uses `attribution["formula"]` when the attribution states one (a string, or a list of lines); otherwise
    builds the data share from the keys it has (plateau_loss L, unflagged_loss L_rest, label_noise_entropy H,
    data_evidence floors); [] when it has none of them (the page then shows the method in words).
    scan : the audit is of a scan (one pass over a dataset): L is the samples' mean loss, not a plateau's.
    """
    stated = attribution.get("formula")
    if isinstance(stated, str) and stated:
        return [stated, f"data share = {data_share:.2f}"]
    if isinstance(stated, list | tuple) and stated:
        return [str(line) for line in stated]
    L, rest, H = (attribution.get(k) for k in ("plateau_loss", "unflagged_loss", "label_noise_entropy"))
    lines = []
    symbols, plugged, values = [], [], []
    if _number(L) and L > 0 and _number(rest):
        symbols.append("(L − L_rest) / L")
        plugged.append(f"({L:.3f} − {rest:.3f}) / {L:.3f}")
        values.append((L - rest) / L)
    if _number(L) and L > 0 and _number(H):
        symbols.append("H / L")
        plugged.append(f"{H:.3f} / {L:.3f}")
        values.append(H / L)
    if symbols:
        def wrap(parts: list[str]) -> str:
            inner = f"max({', '.join(parts)})" if len(parts) > 1 else parts[0]
            return f"min(1, {inner})"
        result = min(1.0, max(values))
        lines.append(f"label share = {wrap(symbols)}")
        lines.append(f"            = {wrap(plugged)} = {wrap([f'{v:.2f}' for v in values])} = {result:.2f}")
        stated_share = attribution.get("label_share")
        if _number(stated_share) and abs(stated_share - result) > 0.005:  # the attribution left a term out
            lines.append(f"label share as attributed = {stated_share:.2f} (see the method)")
    floors = attribution.get("data_evidence") or {}
    if isinstance(floors, dict) and floors:
        named = ", ".join(f"{_key(check)} {severity}" for check, severity in floors.items())
        lines.append(f"data findings set a floor ({named}): at least 0.5 for a critical one, 0.25 for a warning")
    if not lines:
        return []
    lines.append(f"data share = {data_share:.2f}")
    where = []
    epochs = attribution.get("plateau_epochs")
    span = (f"epochs {epochs[0]}–{epochs[1]}" if isinstance(epochs, list | tuple) and len(epochs) == 2
            and epochs[0] != epochs[1] else "the plateau")
    if _number(L):
        where.append("L = mean loss of the samples (−ln p(given label))" if scan else
                     f"L = mean training loss over {span}")
    if _number(rest):
        where.append("L_rest = that of the unflagged samples")
    if _number(H):
        where.append("H = entropy of the given label given the suggested one (nats)")
    if where:
        lines.append("where " + "; ".join(where))
    return lines


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and x == x


def flagged_json(flagged: pd.DataFrame, thumbnails: dict[int, str], *, scan: bool = False) -> Markup:
    """The flagged samples (most suspicious first, at most MAX_FLAGGED_ROWS) as JSON for the page's table
    script: {"columns": [...], "rows": [[...], ...], "total": n}; '<', '>' and '&' escaped so the text cannot
    close its <script> element."""
    rows = flagged.head(MAX_FLAGGED_ROWS)
    columns = ["rank", "sample_id", "given", "suggested", "label_quality"]
    data = {"rank": list(range(1, len(rows) + 1)), "sample_id": rows["sample_id"].astype(int).tolist()}
    given_col = "given_class" if "given_class" in rows else "given_label"
    suggested_col = "suggested_class" if "suggested_class" in rows else "suggested_label"
    data["given"] = [_cell(v) for v in rows[given_col]]
    data["suggested"] = [_cell(v) for v in rows[suggested_col]]
    data["label_quality"] = [_cell(v) for v in rows["label_quality"]]
    for column in ("aum", "plateau_loss", "loss_trend", "times_missing", "file"):
        # a column only where it tells something: epochs missing only when some were, no trend for one pass
        informative = rows[column].notna().any() if column in rows else False
        if column == "times_missing" and informative:
            informative = bool((rows[column] > 0).any())
        if informative:
            columns.append(column)
            data[column] = [_cell(v) for v in rows[column]]
    if thumbnails:
        columns.insert(0, "image")
        data["image"] = [thumbnails.get(int(i)) for i in data["sample_id"]]
    payload = {"columns": columns, "rows": [list(r) for r in zip(*(data[c] for c in columns), strict=True)],
               "total": int(len(flagged)), "scan": scan}
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return Markup(text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def _cell(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float):
        return None if v != v or v in (float("inf"), float("-inf")) else float(f"{v:.4g}")
    if isinstance(v, bool | int | str) or v is None:
        return v
    return str(v)


def flagged_frame(audit: Audit) -> pd.DataFrame:
    """flagged.csv's rows (see `dataaudit.issues.flagged_rows`), or an empty frame when there are none."""
    from dataaudit.issues import flagged_rows

    return flagged_rows(audit)
