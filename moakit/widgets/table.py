"""Tables a reader can use: column names in words, a key of what each column means and in
which unit, sorting and filtering (with a kernel), and the same table as static HTML.

A :class:`Table` holds a DataFrame and a list of :class:`Column` s. ``static_html()`` is the
table as shown now (its sort and filter) with its key; ``widget()`` adds a sort menu, an order
toggle and a filter box, which redraw the table (and tell ``on_change``, so a view can keep the
static copy saved with the notebook in step). Nothing is computed: rows are only ordered and
chosen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .html import BORDER, MUTED, TABLE, TD, TH, esc, fmt, isnull, money, p_text


@dataclass
class Column:
    """A column as a reader sees it. ``kind``: ``num``, ``int``, ``text``, ``money``, ``p``
    (a p-value), ``bool`` or ``interval`` (drawn from the columns ``lo`` and ``hi``, sorted by
    ``lo``); ``means``: the key's definition, with the unit."""

    name: str
    label: str
    means: str = ""
    kind: str = "num"
    digits: int = 3
    lo: str | None = None
    hi: str | None = None

    def cell(self, row: dict) -> str:
        if self.kind == "interval":
            lo, hi = row.get(self.lo), row.get(self.hi)
            return "–" if isnull(lo) or isnull(hi) else f"{fmt(lo, self.digits)} to {fmt(hi, self.digits)}"
        v = row.get(self.name)
        if self.kind == "money":
            return money(v)
        if self.kind == "p":
            return "–" if isnull(v) else p_text(v).removeprefix("p = ").removeprefix("p ")
        if self.kind == "text":
            return "–" if isnull(v) else str(v)
        return fmt(v, self.digits)

    def sort_value(self, row: dict):
        v = row.get(self.lo if self.kind == "interval" else self.name)
        return None if isnull(v) else v

    @property
    def numeric(self) -> bool:
        return self.kind != "text"


@dataclass
class Table:
    """``Table(df, columns)``; ``sort`` (a column name, descending with a leading ``-``),
    ``title`` and ``notes`` (lines under the key) are optional."""

    df: Any
    columns: Sequence[Column]
    title: str | None = None
    sort: str | None = None
    notes: Sequence[str] = ()
    max_rows: int = 500
    on_change: Callable[[], None] | None = None
    filter_text: str = ""
    _widgets: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        present = set(self.df.columns)
        self.columns = [c for c in self.columns
                        if ((c.lo in present and c.hi in present) if c.kind == "interval" else c.name in present)]
        self._records = self.df.to_dict("records")
        self.descending = bool(self.sort and self.sort.startswith("-"))
        self.sort = self.sort.lstrip("-") if self.sort else None

    # ---- rows ------------------------------------------------------------------------------
    @property
    def rows(self) -> list[dict]:
        """The rows as shown: filtered by ``filter_text`` (in any cell), then sorted."""
        rows = self._records
        if self.filter_text:
            want = self.filter_text.lower()
            rows = [r for r in rows if any(want in c.cell(r).lower() for c in self.columns)]
        col = next((c for c in self.columns if c.name == self.sort), None)
        if col is not None:
            present = [r for r in rows if col.sort_value(r) is not None]
            missing = [r for r in rows if col.sort_value(r) is None]
            key = (lambda r: col.sort_value(r)) if col.numeric else (lambda r: str(col.sort_value(r)).lower())
            rows = sorted(present, key=key, reverse=self.descending) + missing
        return rows

    def set_frame(self, df) -> None:
        """Show other rows (a batch in flight): the sort and filter stay."""
        self.df = df
        self._records = df.to_dict("records")
        body = self._widgets.get("body")
        if body is not None:
            html = self.table_html()
            if body.value != html:
                body.value = html

    def sort_by(self, name: str | None, descending: bool = False) -> None:
        self.sort, self.descending = name, descending
        self._changed()

    def set_filter(self, text: str) -> None:
        self.filter_text = text or ""
        self._changed()

    # ---- drawing ---------------------------------------------------------------------------
    def table_html(self) -> str:
        rows = self.rows
        head = "".join(f"<th style='{TH};text-align:{'left' if c.kind == 'text' else 'right'}'"
                       f" title='{esc(c.means)}'>{esc(c.label)}</th>" for c in self.columns)
        body = []
        for r in rows[: self.max_rows]:
            cells = "".join(
                f"<td style='{TD};text-align:{'left' if c.kind == 'text' else 'right'};"
                f"{'' if c.kind == 'text' else 'white-space:nowrap'}'>{esc(c.cell(r))}</td>" for c in self.columns)
            body.append(f"<tr class='moakit-row'>{cells}</tr>")
        shown = len(rows)
        more = ""
        if shown > self.max_rows:
            more = f"<div style='color:{MUTED};font-size:11px'>{shown - self.max_rows:,} more rows not shown</div>"
        state = []
        if self.filter_text:
            state.append(f"{shown:,} of {len(self._records):,} rows contain “{esc(self.filter_text)}”")
        col = next((c for c in self.columns if c.name == self.sort), None)
        if col is not None:
            state.append(f"sorted by {esc(col.label)}, {'largest' if self.descending else 'smallest'} first")
        state_html = (f"<div style='color:{MUTED};font-size:11px'>{'; '.join(state)}</div>" if state else "")
        title = f"<div style='font-size:12px;margin:6px 0 2px 0'><b>{esc(self.title)}</b></div>" if self.title else ""
        return (f"{title}{state_html}<div style='max-width:100%;overflow-x:auto'><table class='moakit-table' "
                f"style='{TABLE}'><tr>{head}</tr>{''.join(body)}</table></div>{more}")

    def key_html(self) -> str:
        items = "".join(f"<div><b>{esc(c.label)}</b>: {esc(c.means)}</div>" for c in self.columns if c.means)
        notes = "".join(f"<div>{n}</div>" for n in self.notes)
        if not items and not notes:
            return ""
        return (f"<details class='moakit-key' style='font-size:11px;color:{MUTED};margin-top:4px'>"
                f"<summary style='cursor:pointer'>what the columns mean</summary>"
                f"<div style='border-left:2px solid {BORDER};padding-left:6px'>{items}{notes}</div></details>")

    def static_html(self) -> str:
        return f"<div class='moakit-table-block'>{self.table_html()}{self.key_html()}</div>"

    # ---- the live table --------------------------------------------------------------------
    def widget(self):
        import ipywidgets as W

        if "root" in self._widgets:
            return self._widgets["root"]
        options = [("shown order", "")] + [(c.label, c.name) for c in self.columns]
        sort = W.Dropdown(options=options, value=self.sort or "", description="sort by",
                          layout=W.Layout(width="260px"), style={"description_width": "52px"})
        order = W.ToggleButtons(options=[("smallest first", False), ("largest first", True)], value=self.descending,
                                style={"button_width": "100px"})
        text = W.Text(value=self.filter_text, placeholder="filter rows: any text in a cell",
                      layout=W.Layout(width="240px"))
        body = W.HTML(self.table_html())
        key = W.HTML(self.key_html())
        self._widgets.update(body=body)
        sort.observe(lambda ch: self.sort_by(ch["new"] or None, order.value), names="value")
        order.observe(lambda ch: self.sort_by(sort.value or None, ch["new"]), names="value")
        text.observe(lambda ch: self.set_filter(ch["new"]), names="value")
        controls = W.HBox([sort, order, text], layout=W.Layout(flex_flow="row wrap", grid_gap="6px"))
        root = self._widgets["root"] = W.VBox([controls, body, key])
        root.add_class("moakit-table-live")
        return root

    def _changed(self) -> None:
        body = self._widgets.get("body")
        if body is not None:
            body.value = self.table_html()
        if self.on_change is not None:
            self.on_change()
