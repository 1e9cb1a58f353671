"""The event loop that moakit's synchronous calls run on."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading

_loop: asyncio.AbstractEventLoop | None = None
_loop_thread: threading.Thread | None = None
_loop_lock = threading.Lock()


def background_loop() -> asyncio.AbstractEventLoop:
    """The one event loop on which moakit's synchronous calls (``run``, ``run_batch``, ``replay``)
    run, on a daemon thread of its own, made on first use and kept for the process.

    One loop for every run, not a new one per call: the HTTP clients that litellm keeps are tied
    to the loop they were made on, so a loop per run left an open socket per run behind (a
    notebook looping over ``moakit.run`` ran out of descriptors), and their connection pools are
    reused across runs. A forked child makes a loop of its own."""
    global _loop, _loop_thread
    with _loop_lock:
        if _loop is None or _loop.is_closed() or _loop_thread is None or not _loop_thread.is_alive():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="moakit-loop", daemon=True)
            thread.start()
            _loop, _loop_thread = loop, thread
        return _loop


def _forget_loop() -> None:  # in a forked child the parent's loop thread does not exist
    global _loop, _loop_thread
    _loop = _loop_thread = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_loop)


def run_sync(coro):
    """Run a coroutine to completion on moakit's background loop and return its result, from
    plain Python or from inside a running loop (Jupyter). Called on that loop's own thread (a
    scorer that runs a pipeline inside a run), it runs on a fresh loop in a worker thread
    instead: waiting for its own loop would never return. An interrupt (Ctrl-C, a notebook's
    stop button) cancels the run; the calls it paid for are already recorded."""
    loop = background_loop()
    if threading.current_thread() is _loop_thread:
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="moakit") as ex:
            return ex.submit(asyncio.run, coro).result()
    fut = asyncio.run_coroutine_threadsafe(coro, loop)
    try:
        return fut.result()
    except BaseException:
        if not fut.done():
            fut.cancel()
            try:
                fut.result(timeout=30)  # let the run's cleanup (its trace rows) finish
            except BaseException:  # noqa: BLE001 - the interrupt below is what the caller sees
                pass
        raise
