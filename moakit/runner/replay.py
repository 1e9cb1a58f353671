"""Re-executing a recorded run from its trace alone: the pipeline JSON, query, seed, prompt set
and model mapping stored on the run span; every call served from the store."""

from __future__ import annotations

import json
from typing import Any

from ..steps import pipeline_from_json
from ..store import schema as A
from ..store.store import open_store
from .api import arun
from .loop import run_sync
from .plan import check_store


def replay_args(store, trace_id: str) -> dict[str, Any]:
    """The arguments that re-create a recorded run (everything but the store)."""
    trace_id = store.resolve_trace_id(trace_id)
    a = store.run_attributes(trace_id)
    sent = bool(a.get(A.SEED_SENT))
    return {
        "pipeline": pipeline_from_json(json.loads(a[A.PIPELINE])),
        "query": json.loads(a[A.QUERY]),
        "seed": a.get(A.SEED) if sent else None,
        "rng_seed": a.get(A.SEED),
        "models": json.loads(a.get(A.MODELS) or "{}"),
        "templates": a.get(A.PROMPT_SET, "together"),
        "max_tokens": a.get(A.MAX_TOKENS_CAP),
        "name": a.get(A.PIPELINE_NAME),
    }


async def areplay(trace_id: str, *, store: Any = None, offline: bool = True, pipeline=None, record_to: Any = None):
    check_store(store)
    check_store(record_to)
    store = open_store(store)
    args = replay_args(store, trace_id)
    if pipeline is not None:  # a variant: named after itself (if it is a named pipeline), not the original
        args["pipeline"] = pipeline
        args["name"] = None
    return await arun(args.pop("pipeline"), args.pop("query"), store=record_to or store, cache=store,
                      offline=offline, **args)


def replay(trace_id: str, *, store: Any = None, offline: bool = True, pipeline=None, record_to: Any = None):
    """Re-run the recorded run ``trace_id`` (a unique prefix is enough) from ``store``.

    With ``offline=True`` (default) every call must be in the store, no socket is opened and
    litellm is never imported; the new run is recorded (to ``record_to`` or the same store) with
    all its calls marked cached, and its output equals the recorded one."""
    return run_sync(areplay(trace_id, store=store, offline=offline, pipeline=pipeline, record_to=record_to))
