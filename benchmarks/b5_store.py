"""B5 store scale: 1,000,000 call spans (quick: 20,000) bulk-written with ``TraceStore.write``
in transactions of 10,000 rows, then ``calls()`` of all of them as one DataFrame.

The synthetic workload looks like a year of MoA experiments: runs of the page's Together MoA
(19 calls: 6 proposals, 2 x 6 syntheses, 1 aggregation) on AlpacaEval instructions, with real
AlpacaEval answers (each made unique) as outputs, and each synthesizer / aggregator shown the
previous layer's answers, so six calls share one long input. Every original run is followed by
two counterfactual variants (Shuffle before Aggregate) that replay the 18 upstream calls
(cached spans pointing at the same texts) and pay for a new aggregation. A call's parent is its
step's span (shared by the step's calls, as in a real trace). Span ids come from moakit's own
generator (sequential per process, random start), trace ids are random. Rows carry the
attributes a real call span carries (GenAI semconv names, sources, seed, ...)."""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path

from .common import CaseResult, Row, alpaca_outputs, alpaca_prompts

CHUNK = 10_000
LAYOUT = [("Propose", 0)] * 6 + [("Synthesize", 1)] * 6 + [("Synthesize", 2)] * 6 + [("Aggregate", 3)]
AGENTS = ["wizardlm-2-8x22b", "qwen1.5-110b-chat", "qwen1.5-72b-chat", "llama-3-70b-instruct",
          "mixtral-8x22b-instruct", "dbrx-instruct"]


def _messages(system: str | None, user: str) -> str:
    msgs = ([{"role": "system", "parts": [{"type": "text", "content": system}]}] if system else []) + \
        [{"role": "user", "parts": [{"type": "text", "content": user}]}]
    return json.dumps(msgs, ensure_ascii=False)


class Workload:
    """Generates call-span rows and their texts, experiment by experiment (3 runs x 19 calls)."""

    def __init__(self, seed: int = 0):
        from moakit.prompts import TOGETHER_AGGREGATE, numbered_system

        self.rng = random.Random(seed)
        self.prompts, self.prompt_source = alpaca_prompts(805)
        self.answers = alpaca_outputs()
        self.system = lambda responses: numbered_system(TOGETHER_AGGREGATE, responses)
        self.t_ns = 1_760_000_000 * 10**9
        self.n_exp = 0
        self.inline_text_bytes = 0  # what the texts would take stored with every span

    def _id(self, bits: int) -> str:
        return format(self.rng.getrandbits(bits), f"0{bits // 4}x")

    def experiment(self, rows: list, texts: dict) -> None:
        from moakit.store.ids import span_id_hex
        from moakit.store.records import text_hash

        rng = self.rng
        q = self.prompts[self.n_exp % len(self.prompts)]
        self.n_exp += 1

        def put(value: str) -> str:
            h = text_hash(value)
            texts[h] = value
            return h

        original: list[dict] = []
        outs: list[str] = []  # outputs of the previous layer
        q_hash = put(_messages(None, q))
        for variant in range(3):
            trace = self._id(128)
            step_ids = [span_id_hex() for _ in range(4)]  # a call's parent is its step's span: 6 calls share one
            layer_outs: dict[int, list[tuple[str, str]]] = {}
            for k, (step, layer) in enumerate(LAYOUT):
                agent = AGENTS[k % 6] if step != "Aggregate" else "qwen1.5-110b-chat"
                cached = variant > 0 and step != "Aggregate"
                if cached:  # replayed from the original run: same texts
                    base = original[k]
                    in_hash, out_hash, sources, out_text = base["input_hash"], base["output_hash"], base["_src"], base["_out"]
                    in_len, out_len = base["_in_len"], base["_out_len"]
                else:
                    prev = layer_outs.get(layer - 1, [])
                    shown = list(prev)
                    if step == "Aggregate" and variant > 0:
                        rng.shuffle(shown)  # the variant: Shuffle before Aggregate
                    if layer == 0:
                        in_hash, in_len = q_hash, len(q) + 60
                    else:
                        value = _messages(self.system([t for _, t in shown]), q)
                        in_hash, in_len = put(value), len(value.encode())
                    a = self.answers[rng.randrange(len(self.answers))]
                    out_text = f"({self.n_exp}.{variant}.{k}) {a}"
                    out_hash, out_len = put(out_text), len(out_text.encode())
                    sources = [sid for sid, _ in shown]
                span_id = span_id_hex()  # moakit's own ids (sequential per process, store/ids.py)
                start = self.t_ns
                self.t_ns += rng.randrange(200_000_000, 4_000_000_000)
                attrs = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "together_ai",
                         "gen_ai.request.temperature": 0.7, "gen_ai.request.max_tokens": 2048,
                         "gen_ai.request.seed": rng.getrandbits(31), "gen_ai.response.model": agent,
                         "gen_ai.response.finish_reasons": ["stop"], "moakit.step.kind": step}
                if sources:
                    attrs["moakit.input.sources"] = json.dumps(sources)
                    attrs["moakit.input.agents"] = json.dumps(AGENTS[:len(sources)])
                if cached:
                    attrs["moakit.replayed_from"] = original[k]["span_id"]
                row = {"span_id": span_id, "trace_id": trace, "parent_id": step_ids[layer], "name": f"chat {agent}",
                       "kind": "call", "start_ns": start, "end_ns": self.t_ns, "status": "OK", "error": None,
                       "step_index": layer, "step": step, "agent": agent, "model": f"together_ai/{agent}",
                       "sample": 0, "input_tokens": in_len // 4, "output_tokens": out_len // 4,
                       "cost_usd": 0.0 if cached else 1.2e-6 * (in_len + out_len) / 4,
                       "request_key": f"{self._id(128)}:0", "input_hash": in_hash, "output_hash": out_hash,
                       "attributes": json.dumps(attrs), "cached": cached, "attempt": 0 if cached else 1}
                rows.append(row)
                self.inline_text_bytes += in_len + out_len
                if variant == 0:
                    original.append({**row, "_src": sources, "_out": out_text, "_in_len": in_len,
                                     "_out_len": out_len})
                layer_outs.setdefault(layer, []).append((span_id, out_text))

    def chunk(self, n: int) -> tuple[list[dict], dict[str, str]]:
        rows: list[dict] = []
        texts: dict[str, str] = {}
        while len(rows) < n:
            self.experiment(rows, texts)
        return rows, texts


def run(quick: bool, n: int | None = None) -> CaseResult:
    from moakit.store.store import TraceStore

    n = n or (20_000 if quick else 1_000_000)
    res = CaseResult("B5", f"store scale: {n:,} call spans")
    wl = Workload()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "b5.db"
        store = TraceStore(path)
        written = 0
        write_s = 0.0
        gen_s = 0.0
        carry: tuple[list, dict] = ([], {})
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, desc="B5 ingest", unit="span", disable=quick, mininterval=2)
        except ImportError:  # pragma: no cover
            bar = None
        while written < n:
            t0 = time.perf_counter()
            rows, texts = wl.chunk(min(CHUNK, n - written))
            rows = rows[: n - written]
            gen_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            store.write(rows, texts)
            write_s += time.perf_counter() - t0
            written += len(rows)
            if bar is not None:
                bar.update(len(rows))
        if bar is not None:
            bar.close()
        # the last checkpoint (write-ahead log into the database file) is part of ingest: a store
        # that checkpointed less often during the load would otherwise look faster than it is
        t0 = time.perf_counter()
        store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        checkpoint_s = time.perf_counter() - t0
        write_s += checkpoint_s
        size = path.stat().st_size
        text_bytes = store.query("SELECT coalesce(sum(length(CAST(text AS BLOB))), 0), count(*) FROM texts")[0]
        t0 = time.perf_counter()
        df = store.calls()
        calls_s = time.perf_counter() - t0
        assert len(df) == n, (len(df), n)
        store.close()
    ingest = n / write_s
    # without content addressing every span would carry its texts inline
    inline_size = size - text_bytes[0] + wl.inline_text_bytes
    saving = 1 - size / inline_size
    res.rows += [
        Row("B5", "ingest, spans/s (TraceStore.write, 10k rows a transaction)", f"{ingest:,.0f}", goal=">= 50,000",
            met=ingest >= 50_000),
        Row("B5", f"calls() DataFrame of all {n:,} calls, s", f"{calls_s:.2f}", goal="<= 5 s", met=calls_s <= 5),
        Row("B5", "bytes per call (file / calls)", f"{size / n:,.0f}"),
        Row("B5", "saving from storing repeated texts once", f"{saving:.0%}",
            peer=f"{inline_size / n:,.0f} B/call inline"),
    ]
    res.details = {"spans": n, "write_s": write_s, "final_checkpoint_s": checkpoint_s, "generate_s": gen_s,
                   "calls_s": calls_s, "file_bytes": size,
                   "unique_text_bytes": text_bytes[0], "unique_texts": text_bytes[1],
                   "inline_text_bytes": wl.inline_text_bytes, "saving": saving}
    res.notes.append(f"file {size / 1e9:.2f} GB, {text_bytes[1]:,} distinct texts ({text_bytes[0] / 1e9:.2f} GB) "
                     f"for {wl.inline_text_bytes / 1e9:.2f} GB of texts referenced; generating the rows "
                     f"(not timed) took {gen_s:.1f} s; texts: {wl.prompt_source}, real AlpacaEval answers")
    return res
