"""Batches beyond one process: ``run_batch(..., executor="ray")``.

The prompts are dealt round-robin into shards; each shard is one Ray task that runs the batch's
pipeline on its prompts (the same item numbers, seeds and batch id as a single-process run: the
same request keys and, from a deterministic model, the same outputs) and writes its own SQLite
trace file, of the same schema, on its node's local disk. When a task is done its file goes to
the shard folder (``shard_dir``: a folder every node can write, e.g. a shared mount), or back to
the driver through Ray's object store (``collect=True``), and the driver folds the shards into the
batch's store with :meth:`TraceStore.merge` (deduplicated by span id; one transaction per shard).

Ray is an optional extra (``pip install 'moakit[ray]'``). With no Ray running, a local one is
started (``ray.init(num_cpus=workers)``) whose workers import the same moakit as the driver;
to use a cluster, call ``ray.init(address=...)`` first.
"""

from __future__ import annotations

import atexit
import math
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable

from ..errors import PipelineError

START_ATTEMPTS = 3  # tries at starting a local Ray

# keyword arguments a shard cannot be given as they are
_NOT_SHIPPED = ("otel",)


def ray_module():
    try:
        import ray
    except ImportError:
        raise PipelineError("executor='ray' needs Ray: pip install 'moakit[ray]' (or pip install ray)") from None
    return ray


def ensure_ray(ray, workers: int | None) -> int:
    """Start a local Ray when none is running (its workers import the moakit this process
    imported); return the CPUs the cluster offers."""
    if not ray.is_initialized():
        root = str(Path(__file__).resolve().parents[2])  # the folder this moakit is imported from
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
        for attempt in range(START_ATTEMPTS):
            try:
                ray.init(num_cpus=workers or os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
                         logging_level="ERROR", object_store_memory=256 * 1024 * 1024,
                         runtime_env={"env_vars": {"PYTHONPATH": path, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}})
                break
            except Exception:  # Ray gives its processes 30 s to start: a busy machine may need another go
                ray.shutdown()
                if attempt == START_ATTEMPTS - 1:
                    raise
        atexit.register(ray.shutdown)  # the Ray moakit started goes with this process
    return int(ray.cluster_resources().get("CPU", 1))


def run_shard(arun_batch: Callable, number: int, pipeline, prompts: list, indices: list[int], batch_id: str,
              kwargs: dict, shard_dir: str | None, collect: bool) -> dict:
    """One shard, in a Ray worker: run the batch on these prompts into a trace file of its own
    on local disk; then move the file to ``shard_dir`` or return its bytes. Returns the batch
    rows, the file's name, and its bytes when collected."""
    from ..store.store import open_store
    from .loop import run_sync

    name = f"shard-{batch_id}-{number:04d}.db"
    work = Path(tempfile.mkdtemp(prefix="moakit-shard-"))
    local = work / name
    try:
        df = run_sync(arun_batch(pipeline, prompts, store=str(local), item_indices=indices, batch_id=batch_id,
                                 progress=False, **kwargs))
        open_store(local).close()  # its last connection: the log is checkpointed into the file
        rows = df.to_dict("records")
        if collect:
            return {"rows": rows, "name": name, "data": local.read_bytes()}
        Path(shard_dir).mkdir(parents=True, exist_ok=True)
        shutil.move(str(local), str(Path(shard_dir) / name))
        return {"rows": rows, "name": name, "data": None}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_on_ray(arun_batch: Callable, pipeline, items: list, *, store, shards: int | None, workers: int | None,
               shard_dir, collect: bool, max_concurrency: int | None, kwargs: dict):
    """Run the batch's shards as Ray tasks, merge their files into ``store``; returns the rows
    (item order) and the batch id. ``items``: the checked queries, in order."""
    import pandas as pd

    from ..store.store import open_store

    bad = [k for k in _NOT_SHIPPED if kwargs.get(k) is not None]
    if bad:
        raise PipelineError(f"executor='ray' cannot take {', '.join(bad)} (it cannot be sent to other processes)")
    if shards is not None and (not isinstance(shards, int) or isinstance(shards, bool) or shards < 1):
        raise PipelineError(f"shards must be a positive integer or None, got {shards!r}")
    if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 1):
        raise PipelineError(f"workers must be a positive integer or None, got {workers!r}")
    ray = ray_module()
    target = open_store(store)
    cpus = ensure_ray(ray, workers)
    n = min(len(items), shards or cpus)
    at_once = min(n, cpus)
    cap = 16 if max_concurrency is None else max_concurrency
    kwargs = dict(kwargs, max_concurrency=max(1, math.ceil(cap / at_once)))  # the batch's cap, shared out
    batch_id = uuid.uuid4().hex[:16]
    own_dir = shard_dir is None
    folder = Path(shard_dir) if shard_dir is not None else Path(tempfile.mkdtemp(prefix="moakit-shards-",
                                                                                 dir=target.path.parent))
    task = ray.remote(num_cpus=1, max_retries=0)(run_shard)
    refs = []
    for k in range(n):
        idx = list(range(k, len(items), n))
        refs.append(task.remote(arun_batch, k, pipeline, [items[i] for i in idx], idx, batch_id, kwargs,
                                None if collect else str(folder), collect))
    results = ray.get(refs)
    paths = []
    for r in results:
        path = folder / r["name"]
        if r["data"] is not None:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_bytes(r["data"])
        paths.append(path)
    target.merge(paths)
    if own_dir:
        shutil.rmtree(folder, ignore_errors=True)
    rows = sorted((row for r in results for row in r["rows"]), key=lambda row: row["item"])
    return rows, batch_id


def plain(value: Any) -> Any:
    """A value of run_batch's arguments as it can travel to a worker: a store becomes its path."""
    from ..store.store import TraceStore

    return str(value.path) if isinstance(value, TraceStore) else value
