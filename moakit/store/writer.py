"""Getting rows into the file: durable rows committed before their caller goes on, the rest
batched, and large batches committed by a writer thread.

What must hold (tests/test_crash.py, tests/test_group_commit.py, tests/test_write_behind.py):

* A paid call's row is committed before the engine uses its answer: the caller awaits
  :meth:`Writer.committed`. The calls that end in the same event-loop turn share one
  ``BEGIN IMMEDIATE`` transaction (a group commit), so a layer of fast calls costs one commit;
  the transaction runs on the writer thread and the future resolves on the caller's loop only
  once it has committed. While one group commit is in the writer thread's hands, the calls
  ending meanwhile wait for it to end and then share the next transaction (they would have
  waited behind it anyway: one thread, batches in order), so a busy loop makes fewer, larger
  transactions instead of one per turn. The run row of a run that paid for something, ending normally, is
  awaited the same way before the run returns.
* A failed attempt (and the run row of a run leaving with an error) is committed at once
  (``durable=True``): a crash loses no call that was paid for.
* Everything else (steps, calls served from the store, the run row of a replay) waits for the
  next commit: at the latest when ``run`` / ``run_batch`` returns (:meth:`Writer.flush`). A
  crash can lose those; they cost nothing to redo.
* When ``MAX_PENDING`` rows (or ``MAX_PENDING_CHARS`` of new text) wait, the writer thread
  commits them while the caller goes on (SQLite's work then runs on another core). At most one
  batch is in its hands; every flush waits for it first, so rows reach the file in order and
  none is reported written before it is. A failed write puts its rows back at the front of the
  queue and raises at the next flush: nothing recorded is dropped.
"""

from __future__ import annotations

import asyncio
import atexit
import threading
import weakref
from typing import Any

from .records import Rows, RowBuilder


class Writer:
    """The queue between record makers and one :class:`~moakit.store.store.TraceStore`.

    ``builder`` turns records into rows (see :mod:`moakit.store.records`): one per writer."""

    MAX_PENDING = 4096  # rows waiting before the writer thread takes them
    MAX_PENDING_CHARS = 16_000_000  # bounds the memory held by waiting texts (long prompts)

    def __init__(self, store):
        self.store = store
        self.builder = RowBuilder()
        self._rows: list = []
        self._texts: dict[str, str] = {}
        self._chars = 0
        self._lock = threading.Lock()
        self._flushing = threading.Lock()  # a flush returns only once rows taken by another are written
        self._waiters: dict[Any, list] = {}  # event loop -> futures waiting for its scheduled group commit
        self._deferred: dict[Any, list] = {}  # event loop -> futures waiting for the transaction in flight to end
        self._behind: Any = None  # the Future of the batch the writer thread holds
        _writers.add(self)

    # ---- queueing ----------------------------------------------------------------------
    def add(self, rows: Rows, durable: bool = False) -> None:
        """Queue ``rows`` for the next commit; commit now (this thread) when ``durable``."""
        with self._lock:
            self._rows += rows.rows
            waiting = self._texts
            for h, t in rows.texts.items():  # a layer's calls share their prompt: counted once
                if h not in waiting:
                    waiting[h] = t
                    self._chars += len(t)
            if not durable and len(self._rows) < self.MAX_PENDING and self._chars < self.MAX_PENDING_CHARS:
                return
        if durable:
            self.flush()
        else:
            self._write_behind()

    def committed(self) -> "asyncio.Future[None]":
        """A future resolved once every row queued so far is committed (group commit).

        The first caller in an event-loop turn schedules one flush for all the rows queued until
        it runs; each caller gets its own future, so cancelling one waiter touches no other."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._lock:
            waiters = self._waiters.get(loop)
            if waiters is None:
                waiters = self._waiters[loop] = []
                loop.call_soon(self._group_commit, loop)
            waiters.append(fut)
        return fut

    def _group_commit(self, loop) -> None:
        """Commit the rows queued so far for the waiters of this loop turn. The statements are
        made here; SQLite's part runs on the writer thread (batches reach the file in the order
        they were handed over), so the loop goes on answering other calls meanwhile; each waiter
        is told on its loop when the transaction holding its row has committed."""
        with self._lock:
            waiters = self._waiters.pop(loop, [])
        behind = self._behind
        if THREADED_GROUP_COMMIT and behind is not None and not behind.done():
            # a transaction is in flight: these rows join the next one, handed over once it ends
            deferred = self._deferred.get(loop)
            if deferred is not None:
                deferred += waiters
                return
            self._deferred[loop] = waiters
            behind.add_done_callback(lambda f: loop.call_soon_threadsafe(self._commit_deferred, loop))
            return
        self._commit(loop, waiters)

    def _commit_deferred(self, loop) -> None:
        self._commit(loop, self._deferred.pop(loop, []))

    def _commit(self, loop, waiters: list) -> None:
        try:
            fut = self._hand_over() if THREADED_GROUP_COMMIT else None
            if fut is None:
                self.flush()
        except BaseException as e:  # noqa: BLE001 - every waiter sees the failure
            _settle(waiters, e)
            return
        if fut is None:
            _settle(waiters, None)
        else:
            fut.add_done_callback(lambda f: loop.call_soon_threadsafe(_settle, waiters, f.exception()))

    def _hand_over(self):
        """Give every waiting row to the writer thread as one transaction; return its future (None
        when nothing waits, or the interpreter is going down: then the caller commits itself)."""
        with self._flushing:
            rows, texts = self._take()
            if not rows:
                return None if self._behind is None else self._behind
            try:
                prepared = self.store.prepare_write(rows, texts, bulk=True)
            except BaseException:
                self._requeue(rows, texts)
                raise
            try:
                fut = _writer_thread().submit(self._write, rows, texts, prepared)
            except RuntimeError:  # shutting down: no new thread work
                self._write(rows, texts, prepared)
                return None
            self._behind = fut  # (one thread, first in first out: the last batch done means all are)
            return fut

    # ---- writing -----------------------------------------------------------------------
    def _take(self) -> tuple[list, dict]:
        with self._lock:
            rows, texts = self._rows, self._texts
            self._rows, self._texts, self._chars = [], {}, 0
        return rows, texts

    def _requeue(self, rows: list, texts: dict) -> None:
        with self._lock:  # kept for the next attempt, ahead of what came since
            self._rows[:0] = rows
            self._texts.update(texts)
            self._chars += sum(map(len, texts.values()))

    def _write(self, rows: list, texts: dict, prepared=None) -> None:
        try:
            if prepared is None:
                self.store.write(rows, texts)
            else:
                self.store.write_prepared(prepared)
        except BaseException:
            self._requeue(rows, texts)
            raise

    def _wait_behind(self) -> None:
        """Wait for the writer thread's batch; raise its error (its rows are queued again)."""
        behind, self._behind = self._behind, None
        if behind is not None:
            behind.result()

    def _write_behind(self) -> None:
        with self._flushing:
            self._wait_behind()
            rows, texts = self._take()
            if not rows:
                return
            try:  # the statements' parameters are made here: Python work would hold the GIL anyway
                prepared = self.store.prepare_write(rows, texts, bulk=True)
            except BaseException:
                self._requeue(rows, texts)
                raise
            try:
                self._behind = _writer_thread().submit(self._write, rows, texts, prepared)
            except RuntimeError:  # the interpreter is shutting down: no new thread work
                self._write(rows, texts, prepared)

    def flush(self) -> None:
        """Commit every row waiting (one transaction), after the writer thread's batch."""
        with self._flushing:
            self._wait_behind()
            rows, texts = self._take()
            if rows:
                self._write(rows, texts)

    @property
    def pending(self) -> int:
        """Rows waiting for a commit."""
        return len(self._rows)


# group commits run on the writer thread (False: on the event loop, as before issue 16)
THREADED_GROUP_COMMIT = True


def _settle(waiters: list, error: BaseException | None) -> None:
    for f in waiters:
        if not f.done():
            if error is None:
                f.set_result(None)
            else:
                f.set_exception(error)


_writers: "weakref.WeakSet[Writer]" = weakref.WeakSet()
_thread = None
_thread_lock = threading.Lock()


def _writer_thread():
    """The one writer thread (an executor of one) that every store's writer hands batches to."""
    global _thread
    with _thread_lock:
        if _thread is None:
            import concurrent.futures

            _thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="moakit-trace-writer")
        return _thread


@atexit.register
def _flush_all() -> None:  # rows of runs interrupted mid-way (rare): written at exit
    for w in list(_writers):
        try:
            w.flush()
        except Exception:  # noqa: BLE001 - the store may be closed already
            pass
