"""Markdown tables of metric rows (what `llm4tag eval` and the benchmarks print)."""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

__all__ = ["format_table"]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, Integral):
        return str(int(value))
    if isinstance(value, Real):
        number = float(value)
        return "nan" if math.isnan(number) else f"{number:.4f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def format_table(rows: list[dict], columns: list[str]) -> str:
    """A GitHub Markdown table of ``rows`` restricted to ``columns`` (floats with 4 decimals, ints as ints).

    A missing key or ``None`` gives an empty cell; numeric columns are right-aligned.
    """
    if not columns:
        raise ValueError("format_table needs at least one column")
    cells = [[_cell(row.get(col)) for col in columns] for row in rows]
    numeric = []
    for col in columns:
        values = [row.get(col) for row in rows if row.get(col) is not None]
        numeric.append(bool(values) and all(isinstance(v, Real) and not isinstance(v, bool) for v in values))
    header = "| " + " | ".join(str(c).replace("|", "\\|") for c in columns) + " |"
    separator = "|" + "|".join("---:" if is_num else "---" for is_num in numeric) + "|"
    body = ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join([header, separator, *body])
