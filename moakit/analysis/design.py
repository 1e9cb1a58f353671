"""The design behind each aggregating call: was its order randomized, what was it shown,
which variant, item and repeat does it belong to?

:func:`design_columns` derives these from a store's public frames (``runs()``, ``steps()``,
``calls()``, ``spans()``) where ``aggregation_inputs()`` does not carry them yet, and uses the
columns themselves where it does (``randomized``, ``shown_text``, ``variant``, ``item``,
``repeat``). Every analysis that needs the design reads it through this one function.

**When is a call's shown order randomized?** The order of the list a call is shown follows
from the steps of its own run, walked in order:

* ``Shuffle`` and ``Sample`` (a random subset in random order) make it random;
* ``Dropout``, ``Take``, ``Filter`` and ``Map`` keep the flag: they remove by index or keep the
  order, so what remains is still a uniformly random ordering of the remaining set;
* ``Propose``, ``Synthesize``, ``Aggregate``, ``Vote`` and ``Rank`` make a new list (agent order or
  the ranker's order): fixed. ``Refine`` with several agents pins agents to positions: fixed.

One exception is made, because it is randomization by construction: a list made by one
``Propose`` or ``Synthesize`` layer whose responses all come from the *same agent* (Self-MoA:
``Propose(["m"] * 6)``) holds samples of identical requests, which are exchangeable: the order
they are listed in is as good as random. Such calls are ``design="exchangeable"``
(``exchangeable=False`` turns this off). A ``Refine`` by one agent keeps the flag it was given.

**What was shown.** The numbered texts shown to a call are the producing calls' outputs,
except after a ``Map`` step (which rewrote them). Each call records the hash of every text it
was shown and a Map step stores the texts it made, so ``shown_text`` is what the call saw.
Files written before calls recorded those hashes fall back to the producing calls' outputs,
and after a Map step the shown text is then unknown: a copy attribution is not attempted
(``shown_known=False``).

**Units.** ``variant``: the run's pipeline name (``run_batch(name=...)``, ``ablate``'s variant
names), else the chain of its step kinds (``Propose>Shuffle>Aggregate``). ``item``: the run's
``query_hash`` (``TraceStore.runs()``: a hash of its query). ``repeat``: the run's seed (variants of one item run with the same seed share
their proposals and their seeded draws; repeats use other seeds). Calls of one
``(item, repeat)`` share randomness: they form one cluster for inference.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

__all__ = ["design_columns", "load_inputs", "DESIGN_COLUMNS", "REQUIRED_COLUMNS", "order_status"]

REQUIRED_COLUMNS = ("trace_id", "span_id", "step", "agent", "position", "n_shown", "source_agent", "output")
DESIGN_COLUMNS = ("randomized", "design", "shown_text", "shown_known", "variant", "item", "repeat", "rank_choice")

SHUFFLES = ("Shuffle", "Sample")
KEEPS_ORDER = ("Dropout", "Take", "Filter", "Map")


def order_status(kind: str, before: str, out_agents: Sequence[Any], carried: int, exchangeable: bool = True) -> str:
    """The order status of the list a step outputs, given the status of the list it was given:
    ``"shuffled"``, ``"exchangeable"`` or ``"fixed"`` (module doc). ``out_agents``: the agents
    behind the step's output list; ``carried``: responses the step was given (a Propose after
    earlier steps appends its answers to them)."""
    one_agent = len(out_agents) > 1 and None not in out_agents and len(set(out_agents)) == 1
    if kind in SHUFFLES:
        return "shuffled"
    if kind in KEEPS_ORDER:
        return before
    if kind == "Propose":
        return "exchangeable" if (exchangeable and one_agent and not carried) else "fixed"
    if kind == "Synthesize":
        return "exchangeable" if (exchangeable and one_agent) else "fixed"
    if kind == "Refine":
        return before if one_agent else "fixed"
    return "fixed"  # Aggregate, Vote (one response), Rank (the ranker's order), anything new


def load_inputs(source, *, store: Any = None, trace_id: str | Sequence[str] | None = None,
                exchangeable: bool = True):
    """The aggregation inputs of ``source`` (a ``TraceStore`` or a DataFrame shaped like
    ``TraceStore.aggregation_inputs()``) with the design columns of :func:`design_columns`."""
    import pandas as pd

    from ..store import TraceStore, open_store

    if isinstance(source, TraceStore):
        return design_columns(source.aggregation_inputs(trace_id), source, exchangeable=exchangeable)
    if isinstance(source, pd.DataFrame):
        if store is not None and not isinstance(store, TraceStore):
            store = open_store(store, create=False)
        frame = source if trace_id is None else source[source["trace_id"].isin(
            [trace_id] if isinstance(trace_id, str) else list(trace_id))]
        return design_columns(frame, store, exchangeable=exchangeable)
    raise TypeError("source must be a moakit.TraceStore or a DataFrame shaped like TraceStore.aggregation_inputs() "
                    f"(columns {', '.join(REQUIRED_COLUMNS)}, plus source_text or shown_text); "
                    f"got {type(source).__name__}")


def design_columns(inputs, store: Any = None, *, exchangeable: bool = True):
    """``inputs`` (aggregation-input rows) with the columns :data:`DESIGN_COLUMNS` added:

    * ``randomized`` (bool): the call's order was randomized (``design`` is ``"shuffled"`` or
      ``"exchangeable"``); ``design``: ``"shuffled"``, ``"exchangeable"`` or ``"fixed"``;
    * ``shown_text``: the text shown at this position; ``shown_known`` (bool): False where it
      is not known (after a Map step, in files that did not record the texts shown);
    * ``variant``, ``item``, ``repeat``: the units (module doc);
    * ``rank_choice``: for Rank calls, the 0-based positions the ranker kept (None when its
      reply was not parsed: the engine's fallback is not the model's choice).

    Columns already present are used as they are (a frame from a store that records them, or
    a simulated frame); the others are derived from ``store``. Without a store, a missing
    ``randomized`` makes every call ``fixed`` (with a warning), a missing ``variant`` /
    ``item`` / ``repeat`` makes each run its own unit."""
    import pandas as pd

    df = inputs.copy()
    missing = set(REQUIRED_COLUMNS) - set(df.columns)
    if "source_text" not in df.columns and "shown_text" not in df.columns:
        missing.add("source_text (or shown_text)")
    if missing:
        raise ValueError(f"the aggregation inputs lack {sorted(missing)}: pass TraceStore.aggregation_inputs() "
                         "or a frame with its columns")
    if df.empty:
        for c in DESIGN_COLUMNS:
            if c not in df.columns:
                df[c] = pd.Series(dtype=object)
        return df
    ids = list(dict.fromkeys(df["trace_id"]))
    derived = _derive_from_store(store, ids, df, exchangeable) if store is not None else None
    per_call = derived["calls"] if derived is not None else {}
    per_run = derived["runs"] if derived is not None else {}
    key = list(zip(df["trace_id"], df["step_index"])) if "step_index" in df.columns else [None] * len(df)

    if "randomized" in df.columns:
        rnd = df["randomized"].fillna(False).astype(bool)
        derived_design = [per_call.get(k, {}).get("design") for k in key]
        if "design" not in df.columns:
            df["design"] = ["shuffled" if r else ("exchangeable" if d == "exchangeable" else "fixed")
                            for r, d in zip(rnd, derived_design)]
        df["randomized"] = df["design"].isin(["shuffled", "exchangeable"])
    elif "design" in df.columns:
        df["randomized"] = df["design"].isin(["shuffled", "exchangeable"])
    elif derived is not None:
        df["design"] = [per_call.get(k, {}).get("design", "fixed") for k in key]
        df["randomized"] = df["design"].isin(["shuffled", "exchangeable"])
    else:
        warnings.warn("the aggregation inputs carry no `randomized` column and no store was given to derive it: "
                      "every call is treated as shown in a fixed order (no position test). Pass store=... or "
                      "the TraceStore itself.", stacklevel=3)
        df["design"] = "fixed"
        df["randomized"] = False

    if "shown_text" not in df.columns:
        mapped = [per_call.get(k, {}).get("mapped", False) for k in key]
        df["shown_text"] = [None if m else t for m, t in zip(mapped, df["source_text"])]
        df["shown_known"] = [not m for m in mapped]
    elif "shown_known" not in df.columns:
        df["shown_known"] = df["shown_text"].notna()

    fallback = {"variant": lambda t: "all", "item": lambda t: t, "repeat": lambda t: 0}  # each run its own unit
    for col in ("variant", "item", "repeat"):
        if col not in df.columns:
            df[col] = [per_run.get(t, {}).get(col, fallback[col](t)) for t in df["trace_id"]]
    if "rank_choice" not in df.columns:
        df["rank_choice"] = [per_call.get(k, {}).get("rank_choice") for k in key]
    return df


def _derive_from_store(store, ids: list[str], inputs, exchangeable: bool) -> dict:
    """Per (trace_id, step_index): design, mapped, rank_choice; per trace: variant, item, repeat."""
    steps = store.steps(ids)
    runs = store.runs(ids)
    calls = store.calls(ids)
    agent_of = dict(zip(calls["span_id"], calls["agent"]))
    ranks = steps[steps["step"] == "Rank"]
    parsed = {(t, int(i)): p for t, i, p in zip(ranks["trace_id"], ranks["step_index"], ranks["rank_parsed"])}

    per_call: dict = {}
    chains: dict[str, list[str]] = {}
    state: dict[str, tuple[str, bool]] = {}  # trace -> (order status, mapped) of the list carried
    cols = ["trace_id", "step_index", "step", "rank_choice", "responses_in", "responses_out"]
    for trace_id, idx, kind, choice, r_in, r_out in steps.sort_values(["trace_id", "step_index"])[cols].itertuples(
            index=False, name=None):
        idx = int(idx)
        status, mapped = state.get(trace_id, ("fixed", False))
        entry = {"design": status, "mapped": mapped}
        if kind == "Rank":
            ok = parsed.get((trace_id, idx))
            entry["rank_choice"] = list(choice) if isinstance(choice, list) and ok not in (False, 0, "false") else None
        per_call[(trace_id, idx)] = entry
        out = r_out if isinstance(r_out, list) else []
        carried = len(r_in) if isinstance(r_in, list) else 0
        status = order_status(kind, status, [agent_of.get(x) for x in out], carried, exchangeable)
        if kind == "Map":
            mapped = True
        elif kind in ("Synthesize", "Aggregate", "Vote", "Refine") or (kind == "Propose" and not carried):
            mapped = False
        state[trace_id] = (status, mapped)
        chains.setdefault(trace_id, []).append(kind)

    per_run: dict = {}
    for trace_id, pipeline, seed, query_hash in zip(runs["trace_id"], runs["pipeline"], runs["seed"],
                                                     runs["query_hash"]):
        name = pipeline if isinstance(pipeline, str) and pipeline else None
        per_run[trace_id] = {
            "variant": name or ">".join(chains.get(trace_id, [])) or "(no steps)",
            "item": query_hash if isinstance(query_hash, str) else trace_id,
            "repeat": int(seed) if seed is not None and seed == seed else 0,
        }
    return {"calls": per_call, "runs": per_run}
