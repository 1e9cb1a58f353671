"""How the views write things: numbers, money and times, escaped text, the words used for
each quantity (one word for one thing across every view) and the styles of plain HTML.

Nothing here computes a statistic: it only says how a number is written and what it means.
"""

from __future__ import annotations

import html
import math
from typing import Any

RED = "#c62828"
GREEN = "#2e7d32"
BLUE = "#1f5fa8"
MUTED = "var(--jp-ui-font-color2, #666)"
BORDER = "var(--jp-border-color2, #ddd)"
FONT = "font-family:var(--jp-ui-font-family, sans-serif)"
PRE = ("white-space:pre-wrap;word-break:break-word;margin:2px 0 6px 0;padding:4px 6px;"
       "background:var(--jp-layout-color2, #f5f5f5);border-radius:3px;font-size:12px;max-height:24em;overflow:auto")
TABLE = f"border-collapse:collapse;font-size:12px;line-height:1.35;{FONT}"
TH = (f"text-align:left;padding:2px 6px;border-bottom:1px solid {BORDER};color:{MUTED};font-weight:normal;"
      "vertical-align:bottom")
TD = f"padding:2px 6px;border-bottom:1px solid {BORDER};vertical-align:top"
NUM = TD + ";text-align:right;white-space:nowrap"
BADGE = "display:inline-block;padding:0 5px;border-radius:8px;font-size:11px;border:1px solid {c};color:{c}"

#: the one word each view uses for a call served from the trace store instead of paid for
REUSED = "reused"
REUSED_MEANS = "served from the trace store (replay or cache): not sent to a model, not paid for"


def isnull(v) -> bool:
    if v is None:
        return True
    try:
        return bool(v != v)  # NaN, pandas' NA
    except (TypeError, ValueError):
        return False


def as_int(v) -> int | None:
    return None if isnull(v) else int(v)


def as_float(v) -> float | None:
    return None if isnull(v) else float(v)


def esc(text: Any) -> str:
    return html.escape("" if text is None else str(text))


def short(text: Any, n: int = 80) -> str:
    s = " ".join(str(text or "").split())
    return s if len(s) <= n else s[: n - 1] + "…"


def clip(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    return text[:max_chars] + f"\n… ({len(text) - max_chars:,} more characters; read them from the store)"


def money(v) -> str:
    """``$0`` for free, five decimals below a cent, four above; ``–`` when unknown."""
    v = as_float(v)
    if v is None:
        return "–"
    if v == 0:
        return "$0"
    return f"${v:.5f}" if abs(v) < 0.01 else f"${v:.4f}"


def cost(v, unpriced: int = 0) -> str:
    """A total cost with the calls whose price is unknown (litellm has none for the model) said."""
    if not unpriced:
        return money(v)
    known = as_float(v) or 0.0
    if known == 0:
        return f"cost unknown ({count(unpriced, 'call')} without a price)"
    return f"{money(known)} + {count(unpriced, 'call')} without a price"


def seconds(v) -> str:
    v = as_float(v)
    if v is None:
        return "–"
    return f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s"


def count(n: int, word: str, plural: str | None = None) -> str:
    return f"{n:,} {word if n == 1 else (plural or word + 's')}"


def fmt(v: Any, digits: int = 3) -> str:
    """A table cell: floats to ``digits`` decimals (small ones in scientific form), ints with
    thousands separators, booleans as yes/no, missing values as –."""
    if isnull(v):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    try:
        import numpy as np

        if isinstance(v, np.bool_):
            return "yes" if bool(v) else "no"
        if isinstance(v, np.floating):
            v = float(v)
        elif isinstance(v, np.integer):
            v = int(v)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(v, float):
        if v != 0 and abs(v) < 10 ** -digits:
            return f"{v:.1e}"
        return f"{v:.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def p_text(p) -> str:
    """A p-value as a reader writes it: ``p = 0.03``, ``p < 0.001``; ``p = 1`` reads as 'p = 1.00'."""
    p = as_float(p)
    if p is None:
        return "no p-value"
    if p < 0.001:
        return "p < 0.001"
    return f"p = {p:.3f}" if p < 0.01 else f"p = {p:.2f}"


def interval(lo, hi, digits: int = 2) -> str:
    lo, hi = as_float(lo), as_float(hi)
    if lo is None or hi is None:
        return "–"
    return f"{lo:.{digits}f} to {hi:.{digits}f}"


def badge(text: str, color: str, title: str = "") -> str:
    t = f" title='{esc(title)}'" if title else ""
    return f"<span style='{BADGE.format(c=color)}'{t}>{esc(text)}</span>"


def reading_block(lines: list[str], details: str | None = None) -> str:
    """The reading above a chart: plain sentences, the estimate first (not bold run-ons), and
    the analysis' own fuller reading folded underneath."""
    body = "".join(f"<p style='margin:2px 0'>{line}</p>" for line in lines if line)
    more = ""
    if details:
        more = (f"<details style='margin-top:2px'><summary style='cursor:pointer;color:{MUTED};font-size:12px'>"
                f"the analysis' full reading</summary><div style='white-space:pre-line;font-size:12px;color:{MUTED}'>"
                f"{esc(details)}</div></details>")
    return (f"<div class='moakit-reading' style='font-size:13px;line-height:1.45;margin:4px 0 6px 0;{FONT}'>"
            f"{body}{more}</div>")
