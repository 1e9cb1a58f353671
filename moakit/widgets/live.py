"""Views that fill in while a run or a batch is in flight (``moakit.run(..., live=True)``,
``moakit.run_batch(..., live=True)``).

A live view is a recorder listener (:meth:`moakit.runner.recorder.Recorder.add_listener`). The
recorder calls it on the run's event-loop thread with every record (and the streamed text of
aggregating calls); it only puts the event on a queue and returns. A thread of its own takes
the events off the queue, at most every ``interval`` seconds, applies them to the view's
:class:`~moakit.widgets.trace.TraceData` and redraws the widget under the view's lock (the
kernel sends widget updates from any thread), and redraws the timeline chart every
``chart_interval`` seconds (without its SVG, which is drawn once at the end). When the run
ends, :meth:`LiveRun.finish` (called on the notebook's thread, after every row is written)
reads the run back from the store, so what stays in the notebook is the stored run, redacted
as stored, and its static copy is the one saved with the notebook.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

from ..store.records import RunRecord
from .trace import TraceData
from .tree import BatchView, PipelineTree


def execution_count() -> int | None:
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover
        return None
    ip = get_ipython()
    return getattr(ip, "execution_count", None) if ip is not None else None


class Live:
    """The queue and the drawing thread shared by :class:`LiveRun` and :class:`LiveBatch`."""

    wants_chunks = True  # aggregating calls stream their answer to the view

    def __init__(self, view, *, interval: float = 0.25, chart_interval: float = 1.5, display: bool = True):
        self.view = view
        self.interval, self.chart_interval = interval, chart_interval
        self.events: collections.deque = collections.deque()
        self.wake = threading.Event()
        self.stop = threading.Event()
        self.shown_in = None
        self.draws = 0
        if display:
            from IPython.display import display as show

            show(view)
            self.shown_in = execution_count()
        self.thread = threading.Thread(target=self.loop, name="moakit-live-view", daemon=True)
        self.thread.start()

    def __call__(self, event: Any) -> None:
        """The recorder's listener: queue the event (on the run's loop thread; returns at once)."""
        self.events.append(event)
        self.wake.set()

    def loop(self) -> None:
        last_chart = 0.0
        dirty_chart = False
        while not self.stop.is_set():
            self.wake.wait(1.0)  # and once a second anyway: the clock in the header moves
            if self.stop.is_set():
                break
            self.wake.clear()
            try:
                dirty_chart |= self.drain()
                self.draw()
                now = time.monotonic()
                if dirty_chart and now - last_chart >= self.chart_interval:
                    self.view.refresh(["timeline"], svg=False)
                    last_chart, dirty_chart = now, False
            except Exception:  # noqa: BLE001 - a drawing error must not stop the run; finish() redraws
                pass
            time.sleep(self.interval)

    def drain(self) -> bool:
        changed = False
        while self.events:
            changed |= self.apply(self.events.popleft())
        return changed

    def close(self) -> None:
        self.stop.set()
        self.wake.set()
        self.thread.join(10)
        self.drain()

    @property
    def shown_here(self) -> bool:
        """Whether this view was displayed by the cell running now (its result then draws nothing more)."""
        return self.shown_in is not None and self.shown_in == execution_count()

    # subclasses
    def apply(self, event) -> bool:  # pragma: no cover
        raise NotImplementedError

    def draw(self) -> None:  # pragma: no cover
        raise NotImplementedError


class LiveRun(Live):
    """One run's tree and timeline, filled in as its calls finish."""

    def __init__(self, *, page_size: int = 25, **kwargs):
        self.data = TraceData(live=True)
        super().__init__(PipelineTree(data=self.data, page_size=page_size), **kwargs)

    def apply(self, event) -> bool:
        with self.view.lock:
            return self.data.apply(event)

    def draw(self) -> None:
        self.view.redraw()
        self.draws += 1

    def finish(self, result, error: BaseException | None = None) -> None:
        """The run ended (on the notebook's thread, its rows written): show it as stored."""
        self.close()
        tree = self.view
        if result is not None and result.trace_id:
            tree.set_data(TraceData.from_store(result.store, result.trace_id), result.store)
        else:
            with tree.lock:
                self.data.ended = True
                self.data.run["error"] = f"{type(error).__name__}: {error}" if error is not None else "stopped"
            tree.redraw()
        tree.refresh()


class LiveBatch(Live):
    """A batch's view (totals, the table of runs, the tree of the run opened, the timeline),
    filled in as runs start and their calls finish."""

    def __init__(self, *, total: int | None = None, name: str | None = None, **kwargs):
        self.datas: dict[str, TraceData] = {}
        self.items: dict[str, float] = {}
        self.new_runs = False
        super().__init__(BatchView(datas=self.datas, name=name, total=total), **kwargs)

    def apply(self, event) -> bool:
        tid = getattr(event, "trace_id", None)
        if tid is None:
            return False
        view = self.view
        with view.lock:
            d = self.datas.get(tid)
            if d is None:
                d = self.datas[tid] = TraceData(live=True)
                self.new_runs = True
            if isinstance(event, RunRecord) and event.batch_item is not None:
                self.items[tid] = event.batch_item
            changed = d.apply(event)
            if self.new_runs:
                view.order = sorted(self.datas, key=lambda t: self.items.get(t, float("inf")))
                if view.opened is None and view.order:
                    view.opened = 1
            return changed

    def draw(self) -> None:
        with self.view.lock:
            new, self.new_runs = self.new_runs, False
        self.view.redraw(new_runs=new)
        self.draws += 1

    def finish(self, df, store=None, error: BaseException | None = None) -> None:
        """The batch ended (on the notebook's thread, its rows written): show it as stored."""
        from ..store import open_store

        self.close()
        view = self.view
        if df is not None:
            st = open_store(store)
            ids = [t for t in df["trace_id"] if isinstance(t, str)]
            datas = TraceData.many_from_store(st, list(dict.fromkeys(ids)))
            with view.lock:
                view.store = st
                view.prompts = {t: str(p) for t, p in zip(df["trace_id"], df["prompt"]) if isinstance(t, str)
                                and isinstance(p, str)}
                view.datas = datas
                view.order = list(datas)
                for tid, tree in list(view.trees.items()):
                    if tid in datas:
                        tree.set_data(datas[tid], st)
                    else:
                        view.trees.pop(tid)
                if view.opened is not None and view.opened > len(view.order):
                    view.opened = 1 if view.order else None
            view.total = None
            view.redraw(new_runs=True)
            view.draw_opened()
        else:
            with view.lock:
                view.name = f"{view.name or 'batch'}: stopped ({type(error).__name__}: {error})" if error else view.name
            view.redraw()
        view.refresh()


def live_view(kind: str, **info):
    """The live view ``moakit.run(..., live=True)`` (``kind="run"``) or ``run_batch(...,
    live=True)`` (``"batch"``, with ``total`` and ``name``) displays and listens with."""
    if kind == "run":
        return LiveRun(**info)
    if kind == "batch":
        return LiveBatch(**info)
    raise ValueError(f"no live view of kind {kind!r} (run or batch)")
