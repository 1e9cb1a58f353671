"""ipywidgets views over traces and analysis results. They draw; they compute no statistics.

* :class:`~moakit.widgets.tree.PipelineTree`: one run, run -> steps -> calls.
* :class:`~moakit.widgets.tree.BatchView`: many runs, a page at a time.
* :class:`~moakit.widgets.bias.BiasView`: a positional-bias DataFrame drawn with its intervals.
* :class:`~moakit.widgets.ablation.AblationView`: an ablation DataFrame: score with intervals,
  tokens, cost, calls paid and reused.
* :class:`~moakit.widgets.diff.DiffView`: two runs (or batches) side by side, call by call,
  changes highlighted with their causes (:func:`moakit.diff`); static HTML.

All are built from stock ipywidgets (HTML, VBox, HBox, Accordion), so a saved notebook shows them
without a kernel. See ``docs/widgets.md``.
"""

from __future__ import annotations

_LAZY = {"PipelineTree": "tree", "BatchView": "tree", "BiasView": "bias", "AblationView": "ablation",
         "ImpactView": "ablation", "DiffView": "diff"}

__all__ = ["show", "show_result", "view", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def show_result(result):
    """Display a run's pipeline tree (used by ``Result._ipython_display_``)."""
    from IPython.display import display

    from .tree import PipelineTree

    display(PipelineTree(result.store, result.trace_id).widget())


def view(runs, store=None, **kwargs):
    """The view of stored runs: a :class:`PipelineTree` for one trace id (a unique prefix is
    enough), a :class:`BatchView` for a list of trace ids or a ``run_batch`` DataFrame."""
    from ..store import open_store
    from .tree import BatchView, PipelineTree

    store = open_store(store)
    if isinstance(runs, str):
        return PipelineTree(store, runs, **kwargs)
    if hasattr(runs, "trace_id") and hasattr(runs, "store") and not hasattr(runs, "columns"):  # a Result
        return PipelineTree(runs.store, runs.trace_id, **kwargs)
    return BatchView(store, runs, **kwargs)


def show(trace_id, store=None, **kwargs):
    """Show stored runs: ``moakit.show(trace_id)`` draws one run's tree; a list of trace ids or
    a ``run_batch`` DataFrame draws the batch view. ``store`` is a TraceStore or a path
    (default ``$MOAKIT_TRACES`` or ``traces/moakit.db``)."""
    from IPython.display import display

    v = view(trace_id, store, **kwargs)
    display(v.widget())
    return None
