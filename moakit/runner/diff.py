"""``moakit.diff``: two runs (or two batches) lined up call by call, every change traced to
what caused it.

Alignment. A call is identified by its place in the pipeline, not by its span id:
``(llm_step, step kind, agent, sample, occurrence)``. ``llm_step`` counts only the steps that
call models (Propose, Synthesize, Aggregate, Refine, Rank, Vote), so adding or removing a
Shuffle or Dropout does not shift the calls after it; ``occurrence`` is the suffix of the
request key (``...:3``: the fourth identical request of the run). Calls left over are then
matched without the occurrence (a changed prompt can change how many identical requests there
are); the rest are ``only in a`` / ``only in b``.

Status of an aligned pair:

* ``same``: the same request key and the same output (served from the cache, or identical);
* ``changed input``: the request differs (prompt, model, settings or seed);
* ``changed output``: the same request, another answer (a model that is not deterministic, not
  served from the cache);
* ``only in a`` / ``only in b``.

Cause. For every change, what caused it, read from what each call was shown
(``moakit.input.sources``: the call behind each numbered response, recorded with the call):

* ``upstream``: a response it was shown changed: ``cause`` names those calls, and
  ``root_cause`` follows them back to where the change began (e.g. layer 0's proposals);
* ``order``: it was shown the same responses in another order: the Shuffle (or Sample) step
  whose recorded permutation differs is named;
* ``selection``: it was shown another set of responses: the Dropout, Sample, Take, Filter or Rank
  step whose recorded choice (kept, rank_choice) differs is named;
* ``texts``: the same responses in the same order, rewritten differently (a Map step);
* ``request``: the call's own request changed (model, temperature, max_tokens, seed, prompt
  template or query; ``request_changes`` lists them);
* ``model output``: the same request was answered differently.

``request_changes`` is filled for every changed pair (a new seed changes every request as well as
the answers upstream). Text diffs (``prompt_diff``, ``output_diff``) are unified diffs (difflib)
of the messages sent and of the answers. Tokens, cost, latency (and a score, with ``scorer=``)
are given for both sides with their deltas (b - a).
"""

from __future__ import annotations

import difflib
import math
from collections import defaultdict
from typing import Any, Callable

from ..errors import MoakitError
from ..store import schema as A
from ..store.store import maybe_json, open_store

LLM_STEPS = ("Propose", "Synthesize", "Aggregate", "Refine", "Rank", "Vote")
SELECTION_STEPS = ("Dropout", "Sample", "Take", "Filter", "Rank")
STATUSES = ("same", "changed input", "changed output", "only in a", "only in b")

DIFF_COLUMNS = [
    "item_a", "item_b", "llm_step", "step", "step_index_a", "step_index_b", "agent", "sample", "occurrence",
    "status", "cause_kind", "cause", "root_cause", "root_step", "request_changes", "prompt_diff", "output_diff",
    "output_a", "output_b", "input_tokens_a", "input_tokens_b", "delta_input_tokens", "output_tokens_a",
    "output_tokens_b", "delta_output_tokens", "cost_usd_a", "cost_usd_b", "delta_cost_usd", "latency_s_a",
    "latency_s_b", "delta_latency_s", "score_a", "score_b", "delta_score", "cached_a", "cached_b",
    "request_key_a", "request_key_b", "span_id_a", "span_id_b", "trace_id_a", "trace_id_b"]


class DiffError(MoakitError, LookupError):
    """What was given to diff is not a run or batch of the store."""


# ---- reading one run ---------------------------------------------------------------------------
def _num(v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


class RunView:
    """One run as diff needs it: its calls keyed by their place, what each was shown, its steps."""

    def __init__(self, store, trace_id: str):
        self.trace_id = trace_id
        calls = store.calls(trace_id)
        spans = store.spans(trace_id)
        attrs = {r.span_id: r.attributes for r in spans.itertuples() if r.kind == A.KIND_CALL}
        steps = store.steps(trace_id)
        self.steps = {int(r["step_index"]): r for r in steps.to_dict("records")}
        self.kinds = [self.steps[i]["step"] for i in sorted(self.steps)]
        llm = sorted(i for i, s in self.steps.items() if s["step"] in LLM_STEPS)
        # a file missing a step span (a run cut short): the calls' own step indices
        llm = sorted(set(llm) | {int(i) for i in calls["step_index"].dropna()})
        self.ordinal = {i: n for n, i in enumerate(llm)}
        contents = store.call_contents(list(calls["span_id"]))
        self.calls: dict[str, dict] = {}
        for c in calls.to_dict("records"):
            a = attrs.get(c["span_id"], {})
            key = c.get("request_key") or ""
            occ = int(key.rsplit(":", 1)[1]) if ":" in key else 0
            content = contents.get(c["span_id"], {})
            c.update(
                occurrence=occ, llm_step=self.ordinal.get(int(c["step_index"]), -1),
                sources=maybe_json(a.get(A.INPUT_SOURCES)) or [], hashes=maybe_json(a.get(A.INPUT_HASHES)) or [],
                shuffle_step=a.get(A.INPUT_SHUFFLE_STEP), seed=a.get(A.REQUEST_SEED),
                temperature=a.get(A.REQUEST_TEMPERATURE), max_tokens=a.get(A.REQUEST_MAX_TOKENS),
                messages=content.get("messages") or [])
            c["sample"] = int(c["sample"]) if c.get("sample") == c.get("sample") and c.get("sample") is not None else 0
            c["place"] = (c["llm_step"], c["step"], c["agent"], c["sample"], occ)
            self.calls[c["span_id"]] = c
        run = store.run_attributes(trace_id)
        self.output, self.error = run.get(A.OUTPUT), run.get("error")
        self.seed, self.query = run.get(A.SEED), run.get(A.QUERY)
        sent = self.seed if run.get(A.SEED_SENT) else None  # the seed in the request keys (None: not sent)
        for c in self.calls.values():
            c["run_seed"] = sent
        self.cost_usd = float(sum(0.0 if (c["cached"] or c["cost_usd"] != c["cost_usd"] or c["cost_usd"] is None)
                                  else c["cost_usd"] for c in self.calls.values()))


# ---- resolving what was given ------------------------------------------------------------------
def _runs_of(x, store) -> tuple[str, list[tuple[str, Any]]]:
    """("run" | "batch", [(trace id, item)]) for a trace id, Result, batch DataFrame or batch id."""
    if hasattr(x, "trace_id") and hasattr(x, "store") and not hasattr(x, "columns"):  # a Result
        return "run", [(x.trace_id, None)]
    if hasattr(x, "columns"):  # a DataFrame from run_batch (or rows of store.runs())
        if "trace_id" not in x.columns:
            raise DiffError("a DataFrame given to diff needs a trace_id column (run_batch's result or store.runs())")
        items = list(x["item"]) if "item" in x.columns else list(x.get("batch_item", range(len(x))))
        return "batch", [(t, i) for t, i in zip(x["trace_id"], items) if isinstance(t, str)]
    if not isinstance(x, str) or not x:
        raise DiffError(f"diff compares runs (a trace id or Result) or batches (run_batch's DataFrame or a batch id), "
                        f"got {type(x).__name__}")
    try:
        return "run", [(store.resolve_trace_id(x), None)]
    except KeyError as e:
        runs = store.runs()
        hit = runs[runs["batch_id"].fillna("").str.startswith(x)]
        ids = set(hit["batch_id"])
        if len(ids) == 1:
            hit = hit.sort_values("batch_item")
            return "batch", list(zip(hit["trace_id"], hit["batch_item"]))
        if len(ids) > 1:
            raise DiffError(f"batch id prefix {x!r} is ambiguous in {store.path} ({len(ids)} batches)") from None
        raise DiffError(f"{x!r} is neither a run (trace id) nor a batch id in {store.path}: {e.args[0]}") from None


def _pairs(store, ra: list, rb: list) -> list[tuple]:
    """Runs of two batches matched by prompt (the query's hash), in item order."""
    ids = [t for t, _ in ra] + [t for t, _ in rb]
    runs = store.runs(ids)
    qh = dict(zip(runs["trace_id"], runs["query_hash"]))
    by_q: dict = defaultdict(list)
    for t, i in rb:
        by_q[qh.get(t)].append((t, i))
    out = []
    for t, i in ra:
        queue = by_q.get(qh.get(t))
        if queue:
            tb, ib = queue.pop(0)
            out.append((t, i, tb, ib))
        else:
            out.append((t, i, None, None))
    for queue in by_q.values():
        out += [(None, None, t, i) for t, i in queue]
    return out


# ---- one pair of runs -------------------------------------------------------------------------
def _align(a: RunView | None, b: RunView | None) -> list[tuple[dict | None, dict | None]]:
    ca = list(a.calls.values()) if a else []
    cb = list(b.calls.values()) if b else []
    by_place = {c["place"]: c for c in cb}
    pairs, left_a = [], []
    used = set()
    for c in ca:
        m = by_place.get(c["place"])
        if m is not None and id(m) not in used:
            used.add(id(m))
            pairs.append((c, m))
        else:
            left_a.append(c)
    loose: dict = defaultdict(list)  # without the occurrence
    for c in sorted((c for c in cb if id(c) not in used), key=lambda c: c["occurrence"]):
        loose[c["place"][:4]].append(c)
    for c in left_a:
        q = loose.get(c["place"][:4])
        if q:
            m = q.pop(0)
            used.add(id(m))
            pairs.append((c, m))
        else:
            pairs.append((c, None))
    pairs += [(None, c) for c in cb if id(c) not in used]
    return sorted(pairs, key=lambda p: tuple((p[0] or p[1])["place"][:2]) + ((p[0] or p[1])["start_ns"],))


def _prompt_text(messages: list[dict]) -> list[str]:
    lines = []
    for m in messages:
        lines.append(f"[{m.get('role')}]")
        lines += str(m.get("content") or "").splitlines() or [""]
    return lines


def text_diff(a: str | list[str] | None, b: str | list[str] | None, name_a="a", name_b="b") -> str:
    """A unified diff (difflib) of two texts or line lists: '' when they are equal."""
    la = a if isinstance(a, list) else ("" if a is None else str(a)).splitlines()
    lb = b if isinstance(b, list) else ("" if b is None else str(b)).splitlines()
    if la == lb:
        return ""
    return "\n".join(difflib.unified_diff(la, lb, fromfile=name_a, tofile=name_b, lineterm="", n=1))


def _label(c: dict) -> str:
    return f"step {c['step_index']} {c['step']} {c['agent']}#{c['sample']}"


def _request_changes(ca: dict, cb: dict) -> list[str]:
    """What differs in a pair's own requests besides the responses shown. The seed sent with a
    call is derived from the run's seed and the request key, so it differs whenever anything
    does: the run's seed is compared instead."""
    out = []
    for f in ("model", "temperature", "max_tokens"):
        if ca.get(f) != cb.get(f):
            out.append(f"{f}: {ca.get(f)!r} -> {cb.get(f)!r}")
    if ca.get("run_seed") != cb.get("run_seed"):
        out.append(f"run seed: {ca.get('run_seed')!r} -> {cb.get('run_seed')!r}")
    ma, mb = ca["messages"], cb["messages"]
    if ma and mb:
        sys_a = [m["content"] for m in ma if m.get("role") == "system"]
        sys_b = [m["content"] for m in mb if m.get("role") == "system"]
        usr_a = [m["content"] for m in ma if m.get("role") == "user"]
        usr_b = [m["content"] for m in mb if m.get("role") == "user"]
        if sys_a != sys_b and not (ca["sources"] or cb["sources"]):
            out.append("system prompt")
        if usr_a != usr_b and not (ca["sources"] or cb["sources"]) or (usr_a and usr_b and usr_a[-1] != usr_b[-1]
                                                                       and ca["step"] in ("Propose", "Synthesize",
                                                                                          "Aggregate", "Vote")
                                                                       and "Responses:" not in usr_a[-1]):
            out.append("query")
    return out


def _step_choice(step: dict | None) -> Any:
    if step is None:
        return None
    for k in ("permutation", "kept", "rank_choice"):
        v = step.get(k)
        if isinstance(v, list):
            return (k, v)
    return None


def _steps_between(run: RunView, lo: int, hi: int, kinds) -> list[dict]:
    return [run.steps[i] for i in sorted(run.steps) if lo < i < hi and run.steps[i]["step"] in kinds]


def _diff_pair(a: RunView | None, b: RunView | None, scorer, reference) -> list[dict]:
    pairs = _align(a, b)
    pid_a = {ca["span_id"]: n for n, (ca, _) in enumerate(pairs) if ca is not None}
    pid_b = {cb["span_id"]: n for n, (_, cb) in enumerate(pairs) if cb is not None}
    status = []
    for ca, cb in pairs:
        if cb is None:
            status.append("only in a")
        elif ca is None:
            status.append("only in b")
        elif ca["request_key"] != cb["request_key"]:
            status.append("changed input")
        elif (ca["output"] if ca["output"] == ca["output"] else None) != (cb["output"] if cb["output"] ==
                                                                           cb["output"] else None):
            status.append("changed output")
        else:
            status.append("same")
    causes: list[tuple[str | None, str | None, list[int], list]] = []
    for n, (ca, cb) in enumerate(pairs):
        st = status[n]
        if st == "same":
            causes.append((None, None, [], []))
            continue
        if st == "changed output":
            causes.append(("model output", "the same request was answered differently (not served from the cache: "
                           "the model is not deterministic)", [], []))
            continue
        if ca is None or cb is None:
            c = ca or cb
            other, here = ("b", "a") if cb is None else ("a", "b")
            kinds_other = (b if cb is None else a)
            if kinds_other is None:
                why = f"the run of this prompt is only in {here}"
            elif c["step"] not in kinds_other.kinds:
                why = f"{other} has no {c['step']} step here"
            else:
                why = f"{other} makes no such call at this step (another agent list, or fewer responses to work on)"
            causes.append(("structure", why, [], []))
            continue
        src_a = [pid_a.get(s) for s in ca["sources"]]
        src_b = [pid_b.get(s) for s in cb["sources"]]
        upstream = sorted({p for p in src_a + src_b if p is not None and status[p] != "same"})
        if upstream:
            names = [_label(pairs[p][1] or pairs[p][0]) + f" ({status[p]})" for p in upstream]
            causes.append(("upstream", "shown responses that changed: " + "; ".join(names), upstream, []))
            continue
        if set(src_a) != set(src_b):
            lo = min([(pairs[p][1] or pairs[p][0])["step_index"] for p in src_b if p is not None] or [-1])
            sa = _steps_between(a, min([(pairs[p][0] or pairs[p][1])["step_index"] for p in src_a if p is not None]
                                       or [-1]), ca["step_index"], SELECTION_STEPS)
            sb = _steps_between(b, lo, cb["step_index"], SELECTION_STEPS)
            named = _name_steps(sa, sb, "chose differently")
            causes.append(("selection", f"shown {len(src_b)} responses in b, {len(src_a)} in a: {named}", [],
                           [s["step_index"] for s in sb] or [s["step_index"] for s in sa]))
            continue
        if src_a != src_b:
            ia = ca.get("shuffle_step")
            ib = cb.get("shuffle_step")
            sa = [a.steps[int(ia)]] if ia is not None and int(ia) in a.steps else \
                _steps_between(a, -1, ca["step_index"], ("Shuffle", "Sample", "Rank"))[-1:]
            sb = [b.steps[int(ib)]] if ib is not None and int(ib) in b.steps else \
                _steps_between(b, -1, cb["step_index"], ("Shuffle", "Sample", "Rank"))[-1:]
            named = _name_steps(sa, sb, "drew another order")
            causes.append(("order", f"shown the same responses in another order: {named}", [],
                           [s["step_index"] for s in sb] or [s["step_index"] for s in sa]))
            continue
        if ca["hashes"] != cb["hashes"]:
            causes.append(("texts", "shown the same responses in the same order, rewritten differently (a Map step)",
                           [], []))
            continue
        changes = _request_changes(ca, cb)
        causes.append(("request", "its own request changed: " + (", ".join(changes) or "the prompt template"), [],
                       []))

    memo: dict[int, frozenset] = {}

    def roots(n: int) -> frozenset:
        """The changes a change began from: follow 'upstream' causes down to the first that has
        another cause. (Sources come from earlier steps, so this ends.)"""
        if n not in memo:
            kind, _, up, _ = causes[n]
            memo[n] = frozenset({n}) if kind != "upstream" else frozenset().union(*(roots(p) for p in up))
        return memo[n]

    rows = []
    for n, (ca, cb) in enumerate(pairs):
        kind, cause, up, steps_named = causes[n]
        root_desc, root_steps = [], []
        if kind is not None:
            for r in sorted(roots(n)):
                rk, rc, _, rsteps = causes[r]
                c = pairs[r][1] or pairs[r][0]
                if rsteps:  # a step's choice (Shuffle, Dropout, ...) is the root
                    run = b if pairs[r][1] is not None else a
                    for i in rsteps:
                        root_desc.append(f"step {i} {run.steps[i]['step']} ({rk})")
                        root_steps.append(int(i))
                else:
                    root_desc.append(f"{_label(c)} ({rk})")
                    root_steps.append(int(c["step_index"]))
        c0 = cb or ca
        row = {
            "llm_step": c0["llm_step"], "step": c0["step"], "agent": c0["agent"], "sample": c0["sample"],
            "occurrence": c0["occurrence"], "status": status[n], "cause_kind": kind, "cause": cause,
            "root_cause": list(dict.fromkeys(root_desc)), "root_step": sorted(set(root_steps)),
            "request_changes": _request_changes(ca, cb) if ca is not None and cb is not None and status[n] ==
            "changed input" else [],
            "prompt_diff": text_diff(_prompt_text(ca["messages"]) if ca else None,
                                     _prompt_text(cb["messages"]) if cb else None, "prompt a", "prompt b")
            if status[n] != "same" else "",
            "output_diff": text_diff(_out(ca), _out(cb), "output a", "output b") if status[n] != "same" else "",
        }
        for side, c in (("a", ca), ("b", cb)):
            row[f"step_index_{side}"] = None if c is None else int(c["step_index"])
            row[f"output_{side}"] = _out(c)
            for f in ("input_tokens", "output_tokens", "cost_usd", "latency_s"):
                row[f"{f}_{side}"] = math.nan if c is None else _num(c.get(f))
            row[f"cached_{side}"] = None if c is None else bool(c["cached"])
            row[f"request_key_{side}"] = None if c is None else c["request_key"]
            row[f"span_id_{side}"] = None if c is None else c["span_id"]
            row[f"score_{side}"] = _score(scorer, _out(c), reference) if c is not None else math.nan
        for f in ("input_tokens", "output_tokens", "cost_usd", "latency_s", "score"):
            row[f"delta_{f}"] = row[f"{f}_b"] - row[f"{f}_a"]
        rows.append(row)
    return rows


def _out(c: dict | None) -> str | None:
    if c is None:
        return None
    o = c.get("output")
    return o if isinstance(o, str) else None


def _name_steps(sa: list[dict], sb: list[dict], verb: str) -> str:
    """The steps (of a and b) whose recorded choice differs, in words."""
    parts = []
    by_kind_a = {s["step"]: s for s in sa}
    by_kind_b = {s["step"]: s for s in sb}
    for kind in dict.fromkeys([s["step"] for s in sb] + [s["step"] for s in sa]):
        x, y = by_kind_a.get(kind), by_kind_b.get(kind)
        if x is None:
            parts.append(f"the {kind} at step {y['step_index']} of b (a has none), {_choice_text(y)}")
        elif y is None:
            parts.append(f"the {kind} at step {x['step_index']} of a (b has none), {_choice_text(x)}")
        elif _step_choice(x) != _step_choice(y):
            parts.append(f"the {kind} (step {x['step_index']} of a, {y['step_index']} of b) {verb}: "
                         f"{_choice_text(x)} in a, {_choice_text(y)} in b")
    return "; ".join(parts) or "no step recorded a different choice (the responses reaching the step differed)"


def _choice_text(step: dict) -> str:
    c = _step_choice(step)
    return "no recorded choice" if c is None else f"{c[0]} {c[1]}"


def _score(scorer, output, reference) -> float:
    if scorer is None or output is None:
        return math.nan
    try:
        v = scorer(output, reference)
    except TypeError:
        v = scorer(output)
    return _num(v)


# ---- the entry point ---------------------------------------------------------------------------
def diff(a, b, *, store: Any = None, scorer: Callable | None = None, reference: Any = None,
         references: Any = None):
    """Line up two runs (or two batches) call by call.

    Args:
        a, b: a run (a trace id, a unique prefix of one, or a :class:`Result`) or a batch (the
            DataFrame ``run_batch`` returned, or a batch id). Two batches are matched by prompt
            (the query's hash); two runs are compared whatever their prompts.
        store: the trace store holding both (default ``$MOAKIT_TRACES``; a Result's own store
            when one is given).
        scorer: optional ``scorer(output, reference) -> float`` (a moakit Scorer works) applied
            to every call's output and to each run's answer, giving score deltas.
        reference: the reference answer for ``scorer`` (one run); ``references``: a dict
            query text -> reference, or a list aligned with batch a's items.

    Returns a DataFrame, one row per aligned call (columns :data:`DIFF_COLUMNS`; see the module
    doc for the alignment, the statuses and the causes). ``df.attrs["runs"]`` has one row per
    pair of runs (outputs, whether they are equal, cost, calls by status, score), and
    ``df.attrs["summary"]`` counts the statuses in a sentence.
    """
    import pandas as pd

    if store is None:  # a Result's own store, or the file a run_batch DataFrame was recorded to
        for x in (a, b):
            if hasattr(x, "columns"):
                store = store or getattr(x, "attrs", {}).get("store")
            elif hasattr(x, "trace_id"):
                store = store or getattr(x, "store", None)
    st = open_store(store, create=False) if store is not None else open_store(None)
    if scorer is not None and not callable(scorer):
        raise DiffError(f"scorer must be a callable scorer(output, reference), got {type(scorer).__name__}")
    ka, ra = _runs_of(a, st)
    kb, rb = _runs_of(b, st)
    if ka != kb:
        raise DiffError(f"diff compares a run with a run or a batch with a batch; got a {ka} and a {kb}")
    if not ra or not rb:
        raise DiffError("one side has no runs")
    pairs = [(ra[0][0], ra[0][1], rb[0][0], rb[0][1])] if ka == "run" else _pairs(st, ra, rb)
    views: dict[str, RunView] = {}

    def view(t):
        if t is None:
            return None
        if t not in views:
            views[t] = RunView(st, t)
        return views[t]

    rows, runs = [], []
    for k, (ta, ia, tb, ib) in enumerate(pairs):
        va, vb = view(ta), view(tb)
        ref = _reference(reference, references, va or vb, k)
        part = _diff_pair(va, vb, scorer, ref)
        for r in part:
            r.update(item_a=ia, item_b=ib, trace_id_a=ta, trace_id_b=tb)
        rows += part
        counts = {s: sum(r["status"] == s for r in part) for s in STATUSES}
        sa = _score(scorer, va.output if va else None, ref)
        sb = _score(scorer, vb.output if vb else None, ref)
        runs.append({"item_a": ia, "item_b": ib, "trace_id_a": ta, "trace_id_b": tb,
                     "output_a": va.output if va else None, "output_b": vb.output if vb else None,
                     "output_same": (va.output if va else None) == (vb.output if vb else None),
                     "error_a": va.error if va else None, "error_b": vb.error if vb else None,
                     "cost_usd_a": va.cost_usd if va else math.nan, "cost_usd_b": vb.cost_usd if vb else math.nan,
                     "score_a": sa, "score_b": sb, "delta_score": sb - sa,
                     **{s.replace(" ", "_"): counts[s] for s in STATUSES}})
    df = pd.DataFrame(rows, columns=DIFF_COLUMNS)
    run_df = pd.DataFrame(runs)
    run_df["delta_cost_usd"] = run_df["cost_usd_b"] - run_df["cost_usd_a"]
    df.attrs["runs"] = run_df
    df.attrs["kind"] = ka
    df.attrs["store"] = str(st.path)
    df.attrs["summary"] = diff_summary(df)
    return df


def _reference(reference, references, v: RunView | None, k: int):
    if references is None:
        return reference
    if isinstance(references, dict):
        q = maybe_json(v.query) if v is not None else None
        text = q[-1].get("content") if isinstance(q, list) and q and isinstance(q[-1], dict) else q
        return references.get(text, reference)
    refs = list(references)
    return refs[k] if k < len(refs) else reference


def group_roots(roots: list[str]) -> list[str]:
    """Root causes grouped by step: ``["step 0 Propose (6 calls: request)", "step 3 Shuffle (order)"]``."""
    groups: dict[str, set] = {}
    for r in roots:
        words = r.split(" ")
        where = " ".join(words[:3])
        tail = r[r.rfind("(") + 1:-1] if r.endswith(")") else ""
        key = f"{where} ({tail})" if len(words) <= 4 else where + f"|{tail}"  # a step, or calls of a step
        groups.setdefault(key, set()).add(r)
    named = []
    for g, members in groups.items():
        if "|" in g:
            where, tail = g.split("|", 1)
            if len(members) == 1:
                named.append(next(iter(members)))
            else:
                named.append(f"{where} ({len(members)} calls: {tail})")
        else:
            named.append(g)
    return named


def diff_summary(df) -> str:
    """The statuses counted, and the roots of the changes, in a sentence."""
    if df is None or not len(df):
        return "no calls"
    counts = df["status"].value_counts()
    parts = [f"{int(counts.get(s, 0))} {s}" for s in STATUSES if counts.get(s, 0)]
    runs = df.attrs.get("runs")
    head = f"{len(df)} calls" + (f" in {len(runs)} pairs of runs" if runs is not None and len(runs) > 1 else "")
    named = group_roots([r for rs in df.loc[df["status"] != "same", "root_cause"] for r in rs])
    why = ("; the changes begin at " + ", ".join(named)) if named else ""
    return f"{head}: " + ", ".join(parts) + why


def diff_text(df, *, max_changes: int = 20, width: int = 100) -> str:
    """The diff for a terminal (``moakit traces diff``): the summary, then each change with its
    cause and text diffs."""
    lines = [df.attrs.get("summary") or diff_summary(df)]
    runs = df.attrs.get("runs")
    if runs is not None and len(runs) == 1:
        r = runs.iloc[0]
        lines.append(f"a {str(r.trace_id_a)[:12]}  b {str(r.trace_id_b)[:12]}  answers "
                     f"{'equal' if r.output_same else 'differ'}; cost ${r.cost_usd_a:.6f} -> ${r.cost_usd_b:.6f}")
    changed = df[df["status"] != "same"]
    same = df[df["status"] == "same"]
    if len(same):
        by_step = same.groupby(["llm_step", "step"], sort=True).size()
        lines.append("same: " + ", ".join(f"{k[1]} x{v}" for k, v in by_step.items()))
    for _, r in changed.head(max_changes).iterrows():
        where = f"item {r.item_a if r.item_a == r.item_a and r.item_a is not None else r.item_b} " \
            if df.attrs.get("kind") == "batch" else ""
        lines.append("")
        lines.append(f"{where}{r.step} {r.agent}#{r['sample']} (step {_idx(r.step_index_a)} in a, "
                     f"{_idx(r.step_index_b)} in b): {r.status.upper()}")
        if r.cause:
            lines.append(f"  cause: {r.cause}"[:width * 3])
        if r.root_cause:
            lines.append(f"  root: {', '.join(r.root_cause)}"[:width * 3])
        if r.request_changes:
            lines.append(f"  request: {', '.join(r.request_changes)}")
        for col in ("prompt_diff", "output_diff"):
            text = r[col]
            if text:
                body = text.splitlines()
                shown = [ln[:width] for ln in body[:12]]
                lines += ["  " + ln for ln in shown]
                if len(body) > 12:
                    lines.append(f"  ... {len(body) - 12} more diff lines")
        d = r.delta_cost_usd
        if d == d and d:
            lines.append(f"  cost {d:+.6f} USD, tokens in {r.delta_input_tokens:+.0f}, out {r.delta_output_tokens:+.0f}")
    if len(changed) > max_changes:
        lines.append(f"\n... {len(changed) - max_changes} more changed calls (moakit.diff(...) has them all)")
    return "\n".join(lines)


def _idx(v) -> str:
    return "-" if v is None or v != v else str(int(v))
