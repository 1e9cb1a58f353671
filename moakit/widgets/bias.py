"""Positional-bias view: how much aggregating calls draw on the response at each position,
with 95% intervals, the table of numbers beside the chart, and the one-line reading.

``BiasView(df)`` takes the DataFrame of :func:`moakit.analysis.positional_bias` (columns
``measure, step, aggregator, position, source_agent, n, rate, chance, lift, influence,
ci_low, ci_high, p_value, ...``). ``influence`` is chance-corrected (0 = no positional effect,
drawn as a dashed line); with ``by="agent"`` the x axis is the source agent. Several blocks
(``copied`` by Synthesize/Aggregate/Vote, ``kept`` by Rank, or one per step or aggregator)
are drawn side by side in colours. The view draws what it is given; the statistics and the
sentence that reads them come from :mod:`moakit.analysis` (``moakit.analysis.reading``).
"""

from __future__ import annotations

from typing import Any

from .chart import ChartView, table_html

BLOCK_COLUMNS = ("measure", "step", "aggregator")


def _reading(df) -> str | None:
    """The analysis' own reading (``moakit.analysis.reading``), or ``df.attrs["reading"]``."""
    try:
        from ..analysis import reading

        return reading(df)
    except Exception:  # noqa: BLE001 - a reading is a courtesy; the view still draws
        return df.attrs.get("reading") if hasattr(df, "attrs") else None


def _nonnull(df, col) -> bool:
    return col in df.columns and df[col].notna().any()


class BiasView(ChartView):
    """Chart (influence by position with its interval; 0, no effect, dashed), table, reading.

    State: ``table`` (the DataFrame drawn), ``reading`` (str), ``x`` (``position`` or
    ``source_agent``), ``block`` (per-row label of the block a row belongs to, or None when
    there is one block), ``spec`` (the Vega-Lite dict)."""

    def __init__(self, df, reading: str | None = None, *, title: str | None = None, y: str = "influence",
                 reference: float | None = None):
        needed = {y, "ci_low", "ci_high"}
        if not needed <= set(df.columns) or not ({"position", "source_agent"} & set(df.columns)):
            raise ValueError(f"the positional-bias DataFrame needs position (or source_agent), {y}, ci_low, ci_high; "
                             f"it has {list(df.columns)} (give the output of moakit.analysis.positional_bias)")
        self.table = df.reset_index(drop=True)
        self.y = y
        self.x = "position" if _nonnull(self.table, "position") or not _nonnull(self.table, "source_agent") \
            else "source_agent"
        varying = [c for c in BLOCK_COLUMNS if c in self.table.columns
                   and self.table[c].astype(str).nunique(dropna=False) > 1]
        self.block = None
        if varying:
            self.block = [" · ".join(str(r[c]) for c in varying if r[c] is not None and r[c] == r[c])
                          for r in self.table[varying].to_dict("records")]
        self.reference = reference if reference is not None else (0.0 if y == "influence" else None)
        self.reading = reading if reading is not None else _reading(df)
        self.title = title or f"{y} by {'source agent' if self.x == 'source_agent' else 'position shown'}"
        self._widget = None

    def chart(self):
        import altair as alt

        data = self.table.copy()
        data = data[[c for c in data.columns if c not in ("aggregator",) or data[c].notna().any()]]
        data[self.x] = data[self.x].astype(str)
        data = data.assign(block=self.block) if self.block else data
        color = alt.Color("block:N", title=None, legend=alt.Legend(orient="bottom", direction="vertical")) \
            if self.block else alt.value("#1f5fa8")
        offset = {"xOffset": alt.XOffset("block:N")} if self.block else {}
        order = list(dict.fromkeys(data[self.x]))
        x = alt.X(f"{self.x}:O", title=self.x.replace("_", " "), sort=order, axis=alt.Axis(labelAngle=0, labelLimit=90))
        base = alt.Chart(data).encode(x=x, color=color, **offset)
        layers = [base.mark_rule(strokeWidth=2).encode(y=alt.Y("ci_low:Q", title=self.y), y2="ci_high:Q"),
                  base.mark_point(filled=True, size=70, opacity=1).encode(y=f"{self.y}:Q")]
        if self.reference is not None:
            import pandas as pd

            layers.insert(0, alt.Chart(pd.DataFrame({"no_effect": [self.reference]})).mark_rule(
                strokeDash=[5, 4], color="#888").encode(y="no_effect:Q"))
        width = max(220, 48 * len(order) * (1 + 0.5 * (len(set(self.block)) - 1 if self.block else 0)))
        sub = "95% interval" + ("; dashed: no effect (chance)" if self.reference is not None else "")
        return alt.layer(*layers).properties(width=min(width, 640), height=220,
                                             title=alt.TitleParams(self.title, subtitle=sub))

    @property
    def spec(self) -> dict[str, Any]:
        return self.chart().to_dict()

    def table_columns(self) -> list[str]:
        # block columns only when they tell rows apart (a constant one is in the reading)
        cols = [c for c in BLOCK_COLUMNS if c in self.table.columns and self.table[c].notna().any()
                and self.table[c].astype(str).nunique() > 1]
        cols += [self.x] + [c for c in ("n", "rate", "chance", "lift", self.y, "ci_low", "ci_high", "p_position",
                                        "p_value", "confounded") if c in self.table.columns]
        return list(dict.fromkeys(cols))

    css_class = "moakit-bias"

    def side(self):
        import ipywidgets as w

        return w.HTML(table_html(self.table, self.table_columns()))

    def __repr__(self) -> str:
        return f"BiasView({len(self.table)} rows by {self.x}: {self.reading or ''})"
