"""How every view shows itself: live in a notebook with a kernel, and as a static copy
everywhere else (JupyterLab without a kernel, nbconvert's HTML, GitHub's preview, VS Code).

A view is a list of **parts**, each one output of its cell:

* ``html``: plain HTML that needs nothing (a reading, the words around a chart);
* ``chart``: an altair chart as a Vega-Lite mime bundle (``application/vnd.vegalite.v5+json``,
  which JupyterLab draws itself, offline, with tooltips, the chart's export menu and the width
  of the cell), with the chart rendered to SVG (``image/svg+xml``) beside it for front ends
  without a Vega renderer (nbconvert's HTML, GitHub);
* ``live``: a part that needs a kernel to be interactive (a table to sort, a tree to page or to
  fill in while a run is in flight). It is shown twice: a **static copy** (``text/html``, with
  every number, saying in words what needs a kernel) and, right after it, the **live widget**
  (ipywidgets). The live widget carries a few CSS rules that hide the static copy while the
  widget is connected to its kernel, and hide the widget itself once it is not (ipywidgets
  marks a widget drawn from saved state, with no kernel behind it, ``jupyter-widgets-disconnected``,
  and would draw a red broken-link icon on each of its nested widgets). So a live notebook shows
  the widget alone, and a saved one shows the static copy alone, with no broken-link icon; the
  widget's own plain-text fallback says it needs a kernel.

Why two outputs and not one bundle with ``text/html`` beside the widget view: JupyterLab
always prefers the widget view of a bundle in a trusted notebook, and without saved widget
state draws "Error displaying widget: model not found" instead of the HTML; nbconvert prefers
the widget view whenever the state is saved and draws it with scripts from a CDN, which show
nothing offline. A separate ``text/html`` output is drawn by every front end, trusted or not.

:class:`View` is the one mechanism: subclasses list their parts (:meth:`View.parts`); the base
class displays them (``_ipython_display_``), keeps their static copies and charts current
(:meth:`View.refresh`), and gives a single ipywidget (:meth:`View.widget`) and a single mime
bundle (``_repr_mimebundle_``: the widget view, the whole view as static HTML with inline SVG
charts, and a text form) for places that want one object.
"""

from __future__ import annotations

import itertools
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable

from .html import FONT, MUTED, esc

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
KERNEL_NOTE = ("This is the view as saved with the notebook. Sorting, filtering, paging and opening runs "
               "need a running kernel: run the cell again.")
_ids = itertools.count(1)
_prefix = f"{os.getpid():x}{id(_ids) % 4096:03x}"


@dataclass
class Part:
    """One output of a view. ``kind``: ``"html"``, ``"chart"`` or ``"live"``. ``static()`` gives
    the HTML of an html or live part; ``chart()`` the altair chart of a chart part (None: no
    chart to draw); ``svg()``, if given, the chart's SVG fallback drawn by the view itself
    instead of by vl-convert (a chart of many marks); ``widget()`` the ipywidget of a live part
    (built once by the view)."""

    name: str
    kind: str
    static: Callable[[], str] | None = None
    chart: Callable[[], Any] | None = None
    widget: Callable[[], Any] | None = None
    svg: Callable[[], str | None] | None = None


class View:
    """Base of every moakit view (see the module's docstring). Subclasses define :meth:`parts`
    and ``css_class``; ``__repr__`` gives the text form."""

    css_class = "moakit-view"
    #: what a saved copy of a live part says needs a kernel ("": nothing to say)
    kernel_note = KERNEL_NOTE

    def parts(self) -> list[Part]:  # pragma: no cover - every view defines it
        raise NotImplementedError

    # ---- identity and state ----------------------------------------------------------------
    @property
    def uid(self) -> str:
        """A name for this view's outputs, unique in the process (CSS classes tie the static
        copy of a live part to its widget)."""
        u = self.__dict__.get("_uid")
        if u is None:
            u = self.__dict__["_uid"] = f"{_prefix}-{next(_ids)}"
        return u

    def _state(self) -> dict:
        st = self.__dict__.get("_display_state")
        if st is None:
            st = self.__dict__["_display_state"] = {"handles": {}, "widgets": {}, "lock": threading.RLock(),
                                                    "parts": None}
        return st

    def _parts(self) -> list[Part]:
        st = self._state()
        if st["parts"] is None:
            st["parts"] = self.parts()
        return st["parts"]

    def part(self, name: str) -> Part:
        return next(p for p in self._parts() if p.name == name)

    # ---- the pieces ------------------------------------------------------------------------
    def static_copy(self, part: Part) -> str:
        """The static copy of an html or live part, wrapped so the live widget can hide it."""
        note = ""
        rules = ""
        if part.kind == "live":
            if self.kernel_note:
                note = (f"<div class='moakit-kernel-note' style='color:{MUTED};font-size:11px;margin-top:4px'>"
                        f"{esc(self.kernel_note)}</div>")
            # trusted JupyterLab with no saved widget state: the widget output after this copy can
            # only say "model not found"; this copy already shows the view
            rules = (f"<style>.jp-OutputArea-child:has(.moakit-static-live-{self.uid}) + .jp-OutputArea-child:has("
                     f"> .jp-OutputArea-output.jupyter-widgets:not(:has(*))){{display:none}}</style>")
        live = f" moakit-static-live-{self.uid}" if part.kind == "live" else ""
        return (f"<div class='moakit-static moakit-static-{self.uid}{live} {self.css_class}' data-part='{esc(part.name)}' "
                f"style='{FONT}'>{rules}{part.static() if part.static else ''}{note}</div>")

    def live_rules(self) -> str:
        """The CSS a live widget carries: its static copy hides while the widget is connected to
        a kernel; the widget hides once it is not (drawn from saved state)."""
        u = self.uid
        live = f".moakit-live-{u}:not(.jupyter-widgets-disconnected)"
        # only the static copies of live parts hide: a reading (an html part) has no widget to stand in for it
        return (f"<style>body:has({live}) .moakit-static-live-{u},"
                f"body:has({live}) .jp-OutputArea-child:has(.moakit-static-live-{u}){{display:none !important}}"
                f".moakit-live-{u}.jupyter-widgets-disconnected,"
                f".jp-OutputArea-child:has(.moakit-live-{u}.jupyter-widgets-disconnected){{display:none !important}}"
                f"</style>")

    def live_widget(self, part: Part):
        """The widget of a live part (built once), wearing the classes and rules above."""
        st = self._state()
        with st["lock"]:
            w = st["widgets"].get(part.name)
            if w is None:
                import ipywidgets as W

                inner = part.widget()
                w = W.VBox([W.HTML(self.live_rules()), inner], layout=W.Layout(width="100%"))
                for c in ("moakit-live", f"moakit-live-{self.uid}", self.css_class):
                    w.add_class(c)
                st["widgets"][part.name] = w
            return w

    def chart_bundle(self, part: Part, svg: bool = True) -> dict | None:
        from .chart import chart_bundle

        chart = part.chart() if part.chart else None
        if chart is None:
            return None
        if part.svg is None:
            return chart_bundle(chart, svg=svg)
        bundle = chart_bundle(chart, svg=False)
        drawn = part.svg() if svg else None
        if drawn:
            bundle["image/svg+xml"] = drawn
        return bundle

    def no_chart(self, part: Part) -> dict:
        """What a chart part shows while it has nothing to draw (a run whose first call is still
        in flight): its place, so it can be drawn there later."""
        text = f"({part.name}: nothing to draw yet)"
        return {"text/html": f"<div class='moakit-no-chart' style='color:{MUTED};font-size:11px;{FONT}'>{esc(text)}"
                             f"</div>", "text/plain": text}

    # ---- displaying --------------------------------------------------------------------------
    def _ipython_display_(self):
        from IPython.display import display

        st = self._state()
        for part in self._parts():
            if part.kind == "chart":
                bundle = self.chart_bundle(part) or self.no_chart(part)
                st["handles"].setdefault(part.name, []).append(display(bundle, raw=True, display_id=True))
                continue
            st["handles"].setdefault(part.name, []).append(
                display({"text/html": self.static_copy(part)}, raw=True, display_id=True))
            if part.kind == "live":
                w = self.live_widget(part)
                view = w._repr_mimebundle_()[WIDGET_VIEW]
                display({WIDGET_VIEW: view, "text/plain": f"(live view: {KERNEL_NOTE})"}, raw=True)

    def refresh(self, names=None, *, svg: bool = True) -> None:
        """Redraw the static copies and charts displayed so far (``names``: only these parts):
        after the view changed (a page turned, a table sorted, a run finished), so a notebook
        saved now holds what is shown. ``svg=False`` skips the SVG fallback (live updates)."""
        st = self._state()
        for part in self._parts():
            if names is not None and part.name not in names:
                continue
            handles = st["handles"].get(part.name) or []
            if not handles:
                continue
            if part.kind == "chart":
                data = self.chart_bundle(part, svg=svg) or self.no_chart(part)
            else:
                data = {"text/html": self.static_copy(part)}
            for h in handles:
                h.update(data, raw=True)

    @property
    def displayed(self) -> bool:
        return bool(self._state()["handles"])

    # ---- one object --------------------------------------------------------------------------
    def widget(self):
        """The whole view as one ipywidget (charts in ``Output`` widgets), to place in a layout
        of your own. In a notebook, displaying the view itself is better: its static copy then
        shows wherever the widget cannot."""
        st = self._state()
        w = st.get("whole")
        if w is None:
            import ipywidgets as W

            kids = []
            for part in self._parts():
                if part.kind == "html":
                    kids.append(W.HTML(part.static()))
                elif part.kind == "chart":
                    bundle = self.chart_bundle(part)
                    if bundle is not None:
                        out = W.Output()
                        out.outputs = ({"output_type": "display_data", "data": bundle, "metadata": {}},)
                        kids.append(out)
                else:
                    kids.append(self.live_widget(part))
            w = st["whole"] = W.VBox(kids)
            w.add_class(self.css_class)
        return w

    def static_html(self) -> str:
        """The whole view as one piece of static HTML: every part, charts as inline SVG."""
        from .chart import chart_svg

        out = []
        for part in self._parts():
            if part.kind == "chart":
                chart = part.chart() if part.chart and part.svg is None else None
                if part.svg is not None:
                    svg = part.svg()
                    out.append(f"<div class='moakit-chart'>{svg}</div>" if svg else "")
                elif chart is not None:
                    svg = chart_svg(chart)
                    out.append(f"<div class='moakit-chart'>{svg}</div>" if svg else "")
            else:
                out.append(self.static_copy(part))
        return f"<div class='{self.css_class}'>{''.join(out)}</div>"

    def _repr_mimebundle_(self, include=None, exclude=None, **kwargs):
        bundle = self.widget()._repr_mimebundle_()
        bundle["text/html"] = self.static_html()
        bundle["text/plain"] = repr(self)
        return bundle
