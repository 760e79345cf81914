"""Cells and tables: percentages, multiples and counts as text (``n/a`` when missing;
plain numbers are :func:`sentio.text.format_number`'s), strict-JSON cleaning, markdown
tables (:func:`markdown_table`, :func:`md_cell`) and the report's table rendered as
markdown or HTML.

Library code only: no orchestration imports.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def _clean(obj: Any) -> Any:
    """Recursively: NaN / infinities to None, numpy scalars to Python (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _pct(value: Any, digits: int = 2, *, sign: bool = False) -> str:
    v = _num(value)
    if v is None:
        return "n/a"
    return f"{100 * v:{'+' if sign else ''}.{digits}f}%"


def _times(value: Any) -> str:
    v = _num(value)
    if v is None:
        return "n/a"
    return f"{v:,.0f}x" if v >= 10 else f"{v:.1f}x"


def _count(value: Any) -> str:
    v = _num(value)
    if v is None:
        return "n/a" if value is None else str(value)
    return f"{v:,.0f}" if v == int(v) else f"{v:,.1f}"


def _ci_txt(ci: dict[str, Any] | None, digits: int = 2) -> str:
    if not ci or ci.get("lower") is None or ci.get("upper") is None:
        return "n/a"
    return f"[{ci['lower']:.{digits}f}, {ci['upper']:.{digits}f}]"


def md_cell(value: Any) -> str:
    """Text safe inside a markdown table cell: newlines to spaces, ``|`` escaped as ``\\|``."""
    text = " ".join(str(value).split())
    return text.replace("\\", "\\\\").replace("|", "\\|")


def markdown_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table; every cell passes through :func:`md_cell`.

    Raises:
        ValueError: a row with another number of cells than the header.
    """
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"table row has {len(row)} cells, its header {len(header)}")
    lines = ["| " + " | ".join(md_cell(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class _Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""
    items: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        parts = [f"### {self.title}", "", markdown_table(self.header, self.rows)]
        if self.note:
            parts += ["", self.note]
        if self.items:
            parts += ["", *(f"- {item}" for item in self.items)]
        return "\n".join(parts) + "\n"

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in self.rows
        )
        note = f'<p class="note">{html.escape(self.note)}</p>' if self.note else ""
        if self.items:
            note += (
                '<ul class="note">'
                + "".join(f"<li>{html.escape(i)}</li>" for i in self.items)
                + "</ul>"
            )
        return (
            f"<h3>{html.escape(self.title)}</h3>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{note}"
        )
