"""Charts as widgets that survive a saved notebook.

Altair builds the chart (a Vega-Lite spec); ``vl-convert`` renders it to SVG in-process (no
browser, no network); an ``ipywidgets.HTML`` holds the SVG. Why not ``alt.JupyterChart``:
it is an anywidget whose JavaScript imports vega-embed from a CDN at display time, so it
draws nothing offline (CI, air-gapped machines, this project's sandbox) and nothing in a saved
notebook opened where that CDN is unreachable; it also needs the anywidget front-end
extension. Altair's default HTML renderer loads the same CDN scripts, and ``<script>`` in an
``HTML`` widget does not run. An SVG in an HTML widget needs neither JavaScript nor network,
renders live, from saved widget state, in JupyterLab, VS Code and static HTML exports alike.
The cost: no tooltips or zoom; the numbers are in the table beside each chart.

Without ``vl-convert`` installed (``pip install vl-convert-python``, part of moakit's ``viz``
and ``dev`` extras) the chart falls back to an ``Output`` widget holding altair's own mime
bundle, which needs a front end that renders Vega-Lite.
"""

from __future__ import annotations

import html
import math
from typing import Any


def have_svg() -> bool:
    try:
        import vl_convert  # noqa: F401
    except ImportError:
        return False
    return True


def chart_svg(chart) -> str:
    """The SVG of an altair chart, rendered in-process by vl-convert."""
    import altair as alt
    import vl_convert as vlc

    spec = chart.to_dict()
    version = alt.SCHEMA_VERSION.lstrip("v").rsplit(".", 1)[0]  # "6.4.1" -> "6.4"
    try:
        return vlc.vegalite_to_svg(spec, vl_version=version)
    except (ValueError, RuntimeError):  # a vl-convert older than altair's Vega-Lite: its newest version draws the spec
        return vlc.vegalite_to_svg(spec)


def chart_widget(chart):
    """An ipywidget showing ``chart`` (an SVG in an HTML widget when vl-convert is installed)."""
    import ipywidgets as w

    if have_svg():
        out = w.HTML(f"<div class='moakit-chart'>{chart_svg(chart)}</div>")
    else:  # pragma: no cover - depends on the environment
        out = w.Output()
        with out:
            from IPython.display import display

            display(chart)
    return out


def fmt(v: Any, digits: int = 3) -> str:
    """A table cell: floats to ``digits`` significant decimals, p-values in the usual way."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v != 0 and abs(v) < 10 ** -digits:
            return f"{v:.1e}"
        return f"{v:.{digits}f}"
    try:
        import numpy as np

        if isinstance(v, np.floating):
            return fmt(float(v), digits)
        if isinstance(v, np.integer):
            return f"{int(v):,}"
    except ImportError:  # pragma: no cover
        pass
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def table_html(df, columns=None, *, money_cols=(), max_rows: int = 50) -> str:
    """A compact HTML table of a DataFrame (the numbers a chart draws, to read exactly)."""
    from .tree import BORDER, MUTED, money

    cols = [c for c in (columns or list(df.columns)) if c in df.columns]
    th = f"text-align:right;padding:2px 6px;border-bottom:1px solid {BORDER};color:{MUTED};font-weight:normal"
    td = f"text-align:right;padding:2px 6px;border-bottom:1px solid {BORDER};white-space:nowrap"
    head = "".join(f"<th style='{th}'>{html.escape(str(c))}</th>" for c in cols)
    rows = []
    for rec in df[cols].head(max_rows).to_dict("records"):
        cells = "".join(f"<td style='{td}'>{html.escape(money(rec[c]) if c in money_cols else fmt(rec[c]))}</td>"
                        for c in cols)
        rows.append(f"<tr>{cells}</tr>")
    more = (f"<div style='color:{MUTED};font-size:11px'>{len(df) - max_rows} more rows not shown</div>"
            if len(df) > max_rows else "")
    return (f"<div style='max-width:100%;overflow-x:auto'><table class='moakit-table' style='border-collapse:collapse;"
            f"font-size:12px;line-height:1.35;font-family:var(--jp-ui-font-family, sans-serif)'><tr>{head}</tr>"
            f"{''.join(rows)}</table></div>{more}")


def reading_html(text: str | None) -> str:
    if not text:
        return ""
    return (f"<div class='moakit-reading' style='font-size:14px;line-height:1.4;font-weight:bold;margin:4px 0 8px 0;white-space:pre-line;"
            f"font-family:var(--jp-ui-font-family, sans-serif)'>{html.escape(text)}</div>")


class ChartView:
    """Base of the analysis views: the one-line reading above a chart with a table beside it.
    Subclasses give ``reading``, ``chart()`` and ``side()`` (the ipywidget beside the chart)."""

    css_class = "moakit-view"
    _widget = None

    def side(self):  # pragma: no cover - every view defines it
        raise NotImplementedError

    def widget(self):
        if self._widget is None:
            import ipywidgets as w

            body = w.HBox([chart_widget(self.chart()), self.side()],
                          layout=w.Layout(flex_flow="row wrap", align_items="flex-start", grid_gap="16px"))
            self._widget = w.VBox([w.HTML(reading_html(self.reading)), body])
            self._widget.add_class(self.css_class)
        return self._widget

    def _repr_mimebundle_(self, **kwargs):
        return self.widget()._repr_mimebundle_(**kwargs)


def analysis_reading(df) -> str | None:
    """The analysis' own reading of its result (``moakit.analysis.reading``), or
    ``df.attrs["reading"]``: a reading is a courtesy, and a view of any frame still draws."""
    try:
        from ..analysis import reading

        return reading(df)
    except Exception:  # noqa: BLE001
        return df.attrs.get("reading") if hasattr(df, "attrs") else None
