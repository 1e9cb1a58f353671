"""ipywidgets views over traces and analysis results. They draw; they compute no statistics."""

from __future__ import annotations


def show_result(result):
    """Display a run's pipeline tree (used by ``Result._ipython_display_``)."""
    from IPython.display import display

    from .tree import PipelineTree

    display(PipelineTree(result.store, result.trace_id).widget())


def show(trace_id: str, store=None):
    """Show a stored run's pipeline tree: ``moakit.show(trace_id)``."""
    from IPython.display import display

    from ..engine import open_store
    from .tree import PipelineTree

    store = open_store(store)
    display(PipelineTree(store, store.resolve_trace_id(trace_id)).widget())
