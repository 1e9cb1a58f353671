"""Views over traces and analysis results, live in a notebook and readable when saved. They
draw; they compute no statistics.

* :class:`~moakit.widgets.tree.PipelineTree`: one run, run -> steps -> calls, with its timeline.
* :class:`~moakit.widgets.tree.BatchView`: many runs: every run's summary, a run's tree, the timeline.
* :class:`~moakit.widgets.bias.BiasView`: a positional-bias result drawn with its intervals.
* :class:`~moakit.widgets.ablation.AblationView`, :class:`~moakit.widgets.ablation.ImpactView`:
  ablation and aggregator-vs-proposer results.
* :class:`~moakit.widgets.diff.DiffView`: two runs (or batches) side by side, call by call,
  changes highlighted with their causes (:func:`moakit.diff`); static HTML.

Each view is shown as a few outputs (:mod:`moakit.widgets.display`): charts as Vega-Lite with an
SVG beside them, and for what needs a kernel a live ipywidget beside a static copy that shows
wherever the widget cannot (a saved notebook, nbconvert's HTML, GitHub). See ``docs/widgets.md``.
"""

from __future__ import annotations

_LAZY = {"PipelineTree": "tree", "BatchView": "tree", "BiasView": "bias", "AblationView": "ablation",
         "ImpactView": "ablation", "TraceData": "trace", "Table": "table", "Column": "table", "View": "display",
         "DiffView": "diff", "progress_bar": "progress"}

__all__ = ["show", "show_result", "view", "live_view", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def show_result(result):
    """Display a run's tree (used by ``Result._ipython_display_``); nothing when the run was
    followed live by a view this same cell displayed (that view is its tree)."""
    from IPython.display import display

    from .tree import PipelineTree

    live = getattr(result, "view", None)
    if live is not None and getattr(live, "shown_here", False):
        return
    display(PipelineTree(result.store, result.trace_id))


def live_view(kind: str, **info):
    """The view ``moakit.run(..., live=True)`` and ``run_batch(..., live=True)`` display and
    fill in (a recorder listener); see :mod:`moakit.widgets.live`."""
    from .live import live_view as make

    return make(kind, **info)


def view(runs, store=None, **kwargs):
    """The view of stored runs: a :class:`PipelineTree` for one trace id (a unique prefix is
    enough) or a Result, a :class:`BatchView` for a list of trace ids or a ``run_batch`` DataFrame."""
    from ..store import open_store
    from .tree import BatchView, PipelineTree

    if hasattr(runs, "trace_id") and hasattr(runs, "store") and not hasattr(runs, "columns"):  # a Result
        return PipelineTree(runs.store, runs.trace_id, **kwargs)
    store = open_store(store)
    if isinstance(runs, str):
        return PipelineTree(store, runs, **kwargs)
    return BatchView(store, runs, **kwargs)


def show(trace_id, store=None, **kwargs):
    """Show stored runs: ``moakit.show(trace_id)`` draws one run's tree; a list of trace ids or
    a ``run_batch`` DataFrame draws the batch view. ``store`` is a TraceStore or a path
    (default ``$MOAKIT_TRACES`` or ``traces/moakit.db``)."""
    from IPython.display import display

    display(view(trace_id, store, **kwargs))
    return None
