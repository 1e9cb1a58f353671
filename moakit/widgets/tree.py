"""Pipeline tree: run -> steps -> calls. (Placeholder text form; the widget lands with issue 4.)"""

from __future__ import annotations


def tree_text(store, trace_id: str) -> str:
    runs = store.runs()
    run = runs[runs.trace_id == trace_id].iloc[0]
    lines = [f"run {trace_id} {run.pipeline or ''} calls={run.calls} output={str(run.output)[:80]!r}"]
    calls = store.calls(trace_id)
    for st in store.steps(trace_id).itertuples():
        lines.append(f"  step {st.step_index} {st.step} {st.duration_s:.2f}s")
        for c in calls[calls.step_index == st.step_index].itertuples():
            flag = " cached" if c.cached else ""
            err = f" ERROR {c.error}" if c.error else ""
            lines.append(f"    {c.agent}#{c.sample} {c.model} {c.input_tokens}->{c.output_tokens} tok "
                         f"{c.latency_s:.2f}s{flag}{err}")
    return "\n".join(lines)


class PipelineTree:
    def __init__(self, store, trace_id):
        self.store, self.trace_id = store, trace_id

    def widget(self):
        import ipywidgets as w

        return w.HTML(f"<pre>{tree_text(self.store, self.trace_id)}</pre>")
