"""Charts: altair specs emitted as Vega-Lite mime bundles, with an SVG beside them.

* ``application/vnd.vegalite.v5+json``: JupyterLab (and Notebook 7, VS Code) draws it with its
  own bundled Vega, no network: tooltips (each one defines its figure), the chart's export menu
  (SVG, PNG, source) and zoom where a chart binds its scales. Views write ``width: "container"``;
  it is made a fixed width (:data:`CHART_WIDTH`) before the spec is emitted, because in
  JupyterLab 4.6 a container-width chart in an output area resizes itself in a loop until the
  browser's page runs out of memory and crashes (seen in headless Chromium opening a saved
  quickstart: a fixed width opened it, the same chart with "container" crashed the page, with or
  without zoom and with ``autosize: fit-x``). The JupyterLab installed here (4.6) renders
  Vega-Lite 5.6.1 and no later major version, so the spec declares the v5 schema and uses only
  what Vega-Lite 5 knows.
* ``image/svg+xml``: the same chart rendered in-process by ``vl-convert`` (no browser, no
  network), for front ends without a Vega renderer: nbconvert's HTML, GitHub's preview.

Why not ``alt.JupyterChart`` or altair's default renderer: both load vega-embed from a CDN at
display time, so they draw nothing offline or from a saved notebook opened without that CDN.
"""

from __future__ import annotations

from typing import Any

VEGALITE_MIME = "application/vnd.vegalite.v5+json"
VEGALITE_SCHEMA = "https://vega.github.io/schema/vega-lite/v5.json"
CHART_WIDTH = 720  # what a "container" width becomes (see the module's docstring)
SVG_VL_VERSION = "5.8"  # the oldest Vega-Lite vl-convert has: the closest to JupyterLab's 5.6


def have_svg() -> bool:
    try:
        import vl_convert  # noqa: F401
    except ImportError:
        return False
    return True


def chart_spec(chart) -> dict:
    """The chart's Vega-Lite spec, declaring the v5 schema (what JupyterLab renders)."""
    # not validated against altair's (v6) schema here: slow (tens of ms a chart), and the views'
    # specs are validated by the tests
    spec = _fixed(chart.to_dict(validate=False) if hasattr(chart, "to_dict") else chart)
    spec["$schema"] = VEGALITE_SCHEMA
    return spec


def _fixed(spec: Any) -> Any:
    """The spec with every ``width: "container"`` made a number (see the module's docstring)."""
    if isinstance(spec, dict):
        return {k: (CHART_WIDTH if k == "width" and v == "container" else _fixed(v)) for k, v in spec.items()}
    if isinstance(spec, list):
        return [_fixed(v) for v in spec]
    return spec


def chart_svg(chart) -> str | None:
    """The SVG of an altair chart (or a spec), rendered in-process by vl-convert; None without it."""
    if not have_svg():
        return None
    return spec_svg(chart_spec(chart))


def spec_svg(spec: dict) -> str:
    """The SVG of a Vega-Lite spec (left as it is: :func:`_fixed` builds a new one)."""
    import vl_convert as vlc

    spec = _fixed(spec)
    try:
        return vlc.vegalite_to_svg(spec, vl_version=SVG_VL_VERSION)
    except (ValueError, RuntimeError):  # a vl-convert without that version: its own default
        return vlc.vegalite_to_svg(spec)


def chart_bundle(chart, *, svg: bool = True) -> dict:
    """The mime bundle of a chart: Vega-Lite (drawn by JupyterLab itself), the SVG fallback and
    a line of text saying what the chart is."""
    spec = chart_spec(chart)
    title = spec.get("title")
    if isinstance(title, dict):
        title = title.get("text")
    bundle: dict[str, Any] = {VEGALITE_MIME: spec,
                              "text/plain": f"<chart: {title or 'moakit'}; needs a Vega-Lite or SVG renderer>"}
    if svg and have_svg():
        drawn = spec_svg(spec)
        if drawn:
            bundle["image/svg+xml"] = drawn
    return bundle


def tooltip(field: str, title: str, fmt: str | None = None, kind: str = "quantitative"):
    """A tooltip line: ``title`` says what the figure is (and its unit)."""
    import altair as alt

    return alt.Tooltip(field, title=title, format=fmt, type=kind) if fmt else alt.Tooltip(field, title=title,
                                                                                         type=kind)


def linked_rows(data, pick, columns, *, row: str = "row", width: Any = "container"):
    """A chart's rows as a small table of text marks to go under it (``alt.vconcat``): the row
    of a point clicked in the chart (selection ``pick`` on the field ``row``) is highlighted.
    ``columns``: (field, heading, x offset in pixels, d3 format or None) for each column."""
    import altair as alt
    import pandas as pd

    rows = list(dict.fromkeys(data[row]))
    base = alt.Chart(data).encode(y=alt.Y(f"{row}:N", sort=rows, axis=None))
    layers = [base.mark_rect(color="#fff3c4").encode(
        opacity=alt.condition(pick, alt.value(1.0), alt.value(0.0), empty=False))]
    for field, _head, px, fmt in columns:
        text = alt.Text(f"{field}:Q", format=fmt) if fmt else alt.Text(f"{field}:N")
        layers.append(base.mark_text(align="left", baseline="middle", fontSize=11).encode(x=alt.value(px), text=text))
    heads = pd.DataFrame({"h": [0]})
    for _field, head, px, _fmt in columns:
        layers.append(alt.Chart(heads).mark_text(align="left", baseline="bottom", fontSize=11, color="#666").encode(
            x=alt.value(px), y=alt.value(-2), text=alt.value(head)))
    return alt.layer(*layers).properties(width=width, height=16 * len(rows) + 4)
