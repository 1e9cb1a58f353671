"""Pairwise LLM judges, AlpacaEval style, with the diagnostics a reader needs to trust them.

The judge sees an instruction and two outputs, (a) and (b), and says which is better. Each
output is judged against its reference **in both orders** (output shown as (a), then as (b)):

* a reply is read by :func:`parse_verdict`, which looks for the *verdict* ("Between Output (a)
  and Output (b), (b) is better" -> b), not the first label mentioned; a reply it cannot read
  (or a call that failed) is **missing** (``NaN``) and counted, never scored as a tie;
* per (item, reference): ``win_output_first`` (1 if the output won when shown as (a)),
  ``win_output_second`` (1 if it won when shown as (b)), and ``score``, their mean when both
  replies were read (1 = won both, 0 = lost both, 0.5 = the verdict followed the position:
  the judge contradicted itself), else ``NaN``;
* where litellm says the judge's model supports structured output
  (``litellm.supports_response_schema``), the judge asks for ``{"better": "a" | "b"}`` through
  ``response_format``; the text parser reads those replies too, and is the fallback.

:func:`judge_summary` gives the win rate with its interval and the diagnostics as columns: the
per-order win rates, ``p_first`` (how often the judge picks whatever is shown first; 0.5 for an
unbiased judge) with its interval and test, the share of inconsistent pairs, parse failures and
the output lengths. :func:`judge_agreement` / :func:`cohen_kappa`: agreement of two judges
(Cohen's kappa) with a bootstrap interval over items. The length-controlled win rate is
:func:`moakit.analysis.length.length_controlled_win_rate`, which reads :meth:`LLMJudge.judgements`'
frame directly.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Sequence

from .scorers import Scorer
from .stats import cluster_share, mean_interval, percentile_interval

__all__ = ["JUDGE_SYSTEM", "JUDGE_USER", "JUDGE_USER_JSON", "VERDICT_SCHEMA", "parse_verdict", "read_judgements",
           "LLMJudge", "llm_judge", "judge_summary", "judge_agreement", "cohen_kappa", "JUDGEMENT_COLUMNS",
           "SUMMARY_COLUMNS", "AGREEMENT_COLUMNS"]

JUDGE_SYSTEM = (
    "You are a careful, impartial judge. You compare two outputs written for the same instruction and decide "
    "which one a knowledgeable person would prefer: correct, helpful, honest and to the point. The order in "
    "which the outputs are shown must not influence you, and neither must their length."
)
JUDGE_USER = (
    "# Instruction\n{instruction}\n\n# Output (a)\n{a}\n\n# Output (b)\n{b}\n\n"
    "# Your verdict\nWhich output is better? Answer with exactly \"Output (a)\" or \"Output (b)\" and nothing else."
)
JUDGE_USER_JSON = (
    "# Instruction\n{instruction}\n\n# Output (a)\n{a}\n\n# Output (b)\n{b}\n\n"
    "# Your verdict\nWhich output is better? Answer with a JSON object, {{\"better\": \"a\"}} or {{\"better\": \"b\"}}, "
    "and nothing else."
)
VERDICT_SCHEMA = {
    "type": "json_schema",
    "json_schema": {"name": "verdict", "strict": True, "schema": {
        "type": "object", "properties": {"better": {"type": "string", "enum": ["a", "b"]}},
        "required": ["better"], "additionalProperties": False}},
}

JUDGEMENT_COLUMNS = ["item", "reference_index", "prompt", "output_length", "reference_length", "verdict_ab",
                     "verdict_ba", "win_output_first", "win_output_second", "score", "consistent", "parse_failures",
                     "call_failures", "structured", "reply_ab", "reply_ba", "trace_ab", "trace_ba"]
SUMMARY_COLUMNS = ["n_items", "n_judgements", "n_scored", "win_rate", "ci_low", "ci_high", "win_rate_output_first",
                   "win_rate_output_second", "p_first", "p_first_ci_low", "p_first_ci_high", "p_first_p_value",
                   "inconsistent", "parse_failures", "call_failures", "parse_failure_rate", "output_length",
                   "reference_length"]
AGREEMENT_COLUMNS = ["n", "n_items", "dropped", "agreement", "kappa", "ci_low", "ci_high", "p_value"]

# ---- reading a verdict ------------------------------------------------------------------------
# A label: "Output (a)", "output b", "Response [B]", "(b)", "[a]". A bare "a" is not a label (it is
# an English article); a bare "b" alone is accepted only as a whole reply.
_LBL = r"(?:(?:output|response|answer|option|assistant)\s*[\(\[]?\s*([ab])\s*[\)\]]?(?![\w])|[\(\[]\s*([ab])\s*[\)\]])"
_GOOD = (r"(?:better|superior|preferable|preferred|stronger|more\s+(?:helpful|accurate|correct|complete|useful)|"
         r"the\s+winner|the\s+best|best|the\s+better(?:\s+(?:one|output|response))?)")
_BAD = r"(?:worse|inferior|weaker|less\s+(?:helpful|accurate|correct|useful))"
_IS = r"(?:is|was|seems|appears|would\s+be|remains|looks)"
_PATTERNS = [
    # "(b) is better", "Output (a) is clearly the better one", "(a) is not better" (negated: the other)
    (re.compile(_LBL + r"\s*,?\s*" + _IS + r"((?:\s+(?:not|\w+ly|much|far|a\s+bit|overall|the|also)){0,3})\s+" + _GOOD,
                re.IGNORECASE), "qualified"),
    (re.compile(_LBL + r"\s*(?:isn't|wasn't|is\s+not|was\s+not)\s+(?:\w+\s+){0,2}?" + _GOOD, re.IGNORECASE), "negated"),
    (re.compile(_LBL + r"\s*,?\s*" + _IS + r"\s+(?:\w+\s+){0,2}?" + _BAD, re.IGNORECASE), "negated"),
    (re.compile(_LBL + r"\s+wins\b", re.IGNORECASE), "label"),
    # "I prefer Output (b)", "I choose (a)", "go with Output (b)"
    (re.compile(r"\b(?:prefer|choose|chose|pick|picked|select|selected|go\s+with|vote\s+for|recommend)\s+(?:the\s+)?"
                + _LBL, re.IGNORECASE), "label"),
    # "The better output is (b)", "Verdict: Output (a)", "Winner - (b)", "my answer: Output (b)"
    (re.compile(r"\b(?:better|best|preferred|winning|superior|stronger)\s+(?:output|response|one|answer|choice)\s*"
                r"(?:is|:|would\s+be|=|-)\s*" + _LBL, re.IGNORECASE), "label"),
    (re.compile(r"\b(?:verdict|winner|choice|decision|conclusion|answer|preference)\s*(?:is|:|=|-)\s*" + _LBL,
                re.IGNORECASE), "label"),
]
_WHOLE = re.compile(r"^\W*(?:(?:output|response|answer|option)\s*)?[\(\[]?\s*([ab])\s*[\)\]]?\W*$", re.IGNORECASE)
_JSON = re.compile(r"\{[^{}]*\}")
_JSON_KEYS = ("better", "verdict", "winner", "preferred", "choice", "answer", "best")


def _from_json(text: str) -> str | None:
    for m in _JSON.finditer(text):
        try:
            obj = json.loads(m.group(0))
        except ValueError:
            continue
        if isinstance(obj, dict):
            for k in _JSON_KEYS:
                v = obj.get(k)
                if isinstance(v, str):
                    w = _WHOLE.match(v.strip())
                    if w:
                        return w.group(1).lower()
    return None


def parse_verdict(text: str | None) -> str | None:
    """``"a"``, ``"b"`` or ``None`` (unreadable) from a judge's reply.

    Read in this order: a JSON object with a ``better`` / ``verdict`` / ``winner`` key (what
    structured output returns); a reply that is only a label ("Output (b)", "(a)", "b."); else
    the **last verdict phrase** of the reply: "(b) is better", "Output (a) is clearly the better
    one", "I prefer Output (b)", "The better output is (a)", "Verdict: (b)", and negations
    ("(a) is not better", "(a) is worse" -> b); else a first line that is only a label ("Output
    (b)" followed by an explanation). A reply that mentions the outputs without a
    verdict ("Output (a) is longer than Output (b)"), declares a tie, or says nothing of them is
    ``None``: guessing from the first mention reads "Between Output (a) and Output (b), (b) is
    better" as (a)."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return None
    text = str(text).strip()
    if not text:
        return None
    v = _from_json(text)
    if v:
        return v
    m = _WHOLE.match(text)
    if m:
        return m.group(1).lower()
    found: list[tuple[int, str]] = []
    for pattern, kind in _PATTERNS:
        for m in pattern.finditer(text):
            label = (m.group(1) or m.group(2)).lower()
            negated = kind == "negated" or (kind == "qualified" and re.search(r"\bnot\b", m.group(3) or "", re.I))
            found.append((m.start(), ("b" if label == "a" else "a") if negated else label))
    if found:
        return max(found)[1]  # the last verdict stated is the conclusion
    first_line = _WHOLE.match(text.splitlines()[0].strip())  # "Output (b)" then an explanation
    return first_line.group(1).lower() if first_line else None


def read_judgements(frame):
    """Add the verdicts and scores to a frame of judge replies.

    ``frame`` needs ``reply_ab`` (the reply when the output was shown as (a)) and ``reply_ba``
    (shown as (b)); a ``None`` reply is a failed call. Returns a copy with ``verdict_ab``,
    ``verdict_ba`` (``"a"``, ``"b"`` or ``None``), ``win_output_first``, ``win_output_second``
    (1.0 / 0.0 / NaN), ``score`` (their mean when both were read, else NaN), ``consistent``
    (both read and naming different positions, i.e. the same output; ``<NA>`` when a reply is
    missing), ``parse_failures`` (replies that arrived but could not be read) and
    ``call_failures`` (replies that never arrived). This is what :meth:`LLMJudge.judgements`
    does with the replies it gets; use it on replies you collected yourself."""
    import numpy as np
    import pandas as pd

    for col in ("reply_ab", "reply_ba"):
        if col not in frame.columns:
            raise ValueError(f"read_judgements: the frame needs a {col!r} column (columns: {list(frame.columns)})")
    out = frame.copy()
    missing_ab = out["reply_ab"].isna().to_numpy()
    missing_ba = out["reply_ba"].isna().to_numpy()
    v_ab = [None if m else parse_verdict(r) for r, m in zip(out["reply_ab"], missing_ab)]
    v_ba = [None if m else parse_verdict(r) for r, m in zip(out["reply_ba"], missing_ba)]
    out["verdict_ab"], out["verdict_ba"] = v_ab, v_ba
    first = np.array([{"a": 1.0, "b": 0.0}.get(v, np.nan) for v in v_ab])  # output shown as (a)
    second = np.array([{"b": 1.0, "a": 0.0}.get(v, np.nan) for v in v_ba])  # output shown as (b)
    out["win_output_first"], out["win_output_second"] = first, second
    both = ~np.isnan(first) & ~np.isnan(second)
    out["score"] = np.where(both, (first + second) / 2, np.nan)
    out["consistent"] = pd.array([bool(f == s) if b else pd.NA for f, s, b in zip(first, second, both)],
                                 dtype="boolean")
    out["parse_failures"] = ((~missing_ab) & pd.isna(pd.Series(v_ab, dtype=object)).to_numpy()).astype(int) + (
        (~missing_ba) & pd.isna(pd.Series(v_ba, dtype=object)).to_numpy()).astype(int)
    out["call_failures"] = missing_ab.astype(int) + missing_ba.astype(int)
    return out


# ---- the judge ------------------------------------------------------------------------------------
def _prompt_text(prompt) -> str:
    if prompt is None:
        return ""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, (list, tuple)):
        for m in reversed(prompt):
            if isinstance(m, dict) and m.get("role") == "user":
                return str(m.get("content", ""))
    return str(prompt)


def _isnan(x) -> bool:
    return isinstance(x, float) and math.isnan(x)


class LLMJudge(Scorer):
    """Pairwise LLM judge against reference answers, both orders (see :func:`llm_judge`).

    :meth:`judgements` returns one row per (item, reference) (``JUDGEMENT_COLUMNS``);
    :meth:`score_many` returns one score per item (the mean over its references' readable
    judgements, NaN when none was readable) and keeps the rows in ``last_details``."""

    def __init__(self, judge: str, *, models: Any, store: Any, seed: int | None, temp: float, max_tokens: int,
                 system: str, template: str, structured: Any, max_concurrency: int | None, progress: bool):
        super().__init__(lambda o, r, p: self.score_many([o], [r], [p])[0], f"llm_judge[{judge}]")
        self.judge, self.models, self.store, self.seed = judge, models, store, seed
        self.temp, self.max_tokens, self.system, self.template = temp, max_tokens, system, template
        self.structured, self.max_concurrency, self.progress = structured, max_concurrency, progress
        self.last_details = None
        self._structured_ok: bool | None = None

    def __call__(self, output, reference=None, prompt=None):
        if output is None or _isnan(output):
            return math.nan
        return self.score_many([output], [reference], [prompt])[0]

    def with_store(self, store) -> "LLMJudge":
        """The same judge recording to ``store`` (used by the analyses when none was given)."""
        return LLMJudge(self.judge, models=self.models, store=store, seed=self.seed, temp=self.temp,
                        max_tokens=self.max_tokens, system=self.system, template=self.template,
                        structured=self.structured, max_concurrency=self.max_concurrency, progress=self.progress)

    # -- structured output ------------------------------------------------------------------------
    def model_spec(self):
        """The judge agent's resolved :class:`moakit.models.ModelSpec` (raises ``ModelError`` for an
        unknown model, before anything is called)."""
        from ..models import resolve

        return resolve([self.judge], self.models)[self.judge]

    def uses_structured_output(self) -> bool:
        """Whether this judge asks for ``{"better": ...}`` through ``response_format``:
        ``structured=True`` always, ``False`` never, ``"auto"`` when litellm says the model
        supports a response schema (never for the embedded model, which ignores it)."""
        if self._structured_ok is None:
            if self.structured is True or self.structured is False:
                self._structured_ok = self.structured
            else:
                spec = self.model_spec()
                ok = False
                if not spec.is_local and not spec.is_recorded:
                    try:
                        import litellm

                        ok = bool(litellm.supports_response_schema(model=spec.model))
                    except Exception:  # unknown to litellm's model map: no claim of support
                        ok = False
                self._structured_ok = ok
        return self._structured_ok

    def _models_for_run(self):
        """``models`` with ``response_format`` added to the judge's model when structured output
        is used (a litellm keyword passed through the model mapping)."""
        if not self.uses_structured_output():
            return self.models
        spec = self.model_spec()
        entry: dict[str, Any] = {"model": spec.model, **dict(spec.extra), "response_format": VERDICT_SCHEMA}
        if spec.api_base:
            entry["api_base"] = spec.api_base
        if spec.api_key:
            entry["api_key"] = spec.api_key
        return {self.judge: entry}

    def messages(self, instruction: str, a: str, b: str) -> list[dict]:
        template = JUDGE_USER_JSON if self.uses_structured_output() and self.template == JUDGE_USER else self.template
        return [{"role": "system", "content": self.system},
                {"role": "user", "content": template.format(instruction=instruction, a=a, b=b)}]

    # -- judging ----------------------------------------------------------------------------------
    def judgements(self, outputs: Sequence[str | None], references: Sequence[Any],
                   prompts: Sequence[Any] | None = None):
        """Judge every output against each of its references in both orders; one row per
        (item, reference) with the columns ``JUDGEMENT_COLUMNS`` (see :func:`read_judgements`).
        Outputs that are ``None`` (failed runs) and missing references get no row. Everything
        is checked before the first call."""
        import pandas as pd

        from ..runner import run_batch
        from ..steps import Propose

        n = len(outputs)
        if references is None:
            raise ValueError("llm_judge compares each output with a reference answer: give references")
        refs = list(references)
        prs = list(prompts) if prompts is not None else [None] * n
        if len(refs) != n or len(prs) != n:
            raise ValueError(f"llm_judge: {n} outputs but {len(refs)} references and {len(prs)} prompts")
        rows = []
        for i, (o, r, p) in enumerate(zip(outputs, refs, prs)):
            if o is None or _isnan(o) or r is None:
                continue
            ref_list = list(r) if isinstance(r, (list, tuple)) else [r]
            for j, ref in enumerate(ref_list):
                if ref is None or _isnan(ref):
                    continue
                if not isinstance(ref, str):
                    raise TypeError(f"llm_judge: reference {j} of item {i} is a {type(ref).__name__}, not a string")
                rows.append({"item": i, "reference_index": j, "prompt": _prompt_text(p), "output": str(o),
                             "reference": ref})
        self.model_spec()  # an unknown model fails here, before any call
        structured = self.uses_structured_output()
        queries = []
        for row in rows:
            queries.append(self.messages(row["prompt"], row["output"], row["reference"]))  # output as (a)
            queries.append(self.messages(row["prompt"], row["reference"], row["output"]))  # output as (b)
        frame = pd.DataFrame(rows, columns=["item", "reference_index", "prompt", "output", "reference"])
        if queries:
            pipeline = [Propose([self.judge], temp=self.temp, max_tokens=self.max_tokens)]
            df = run_batch(pipeline, queries, seed=self.seed, models=self._models_for_run(), store=self.store,
                                  cache=True, max_concurrency=self.max_concurrency, progress=self.progress,
                                  name="llm_judge")
            replies, traces = list(df["output"]), list(df["trace_id"])
        else:
            replies, traces = [], []
        frame["reply_ab"], frame["reply_ba"] = replies[0::2], replies[1::2]
        frame["trace_ab"], frame["trace_ba"] = traces[0::2], traces[1::2]
        frame["output_length"] = frame["output"].str.len()
        frame["reference_length"] = frame["reference"].str.len()
        frame["structured"] = structured
        out = read_judgements(frame)
        return out[JUDGEMENT_COLUMNS].reset_index(drop=True)

    def score_many(self, outputs, references=None, prompts=None):
        """One score per output: the mean of its references' readable judgements (1 won both
        orders, 0.5 inconsistent, 0 lost both), ``NaN`` when none could be read or the output is
        ``None``. The rows are kept in ``last_details``."""
        details = self.judgements(outputs, references, prompts)
        self.last_details = details
        means = details.groupby("item")["score"].mean()
        return [float(means.get(i, math.nan)) for i in range(len(outputs))]


def llm_judge(judge: str = "judge", *, models: Any = "local", store: Any = None, seed: int | None = 0,
              temp: float = 0.0, max_tokens: int = 16, system: str = JUDGE_SYSTEM, template: str = JUDGE_USER,
              structured: Any = "auto", max_concurrency: int | None = None, progress: bool = False) -> LLMJudge:
    """A pairwise LLM judge, AlpacaEval style: the judge sees the instruction, the output and a
    reference answer and says which is better, once with the output shown first and once
    second.

    Per (item, reference): ``score`` = 1.0 if the output wins both orders, 0.0 if it loses
    both, 0.5 if the verdicts name the same position (the judge followed the order, not the
    content), ``NaN`` if either reply could not be read (counted in ``parse_failures``, never
    scored as a tie). A list of references is judged against every one of them; the item's
    score is the mean over its readable judgements. The mean over items estimates the output's
    win rate against the references, averaged over both orders (ties from inconsistency count
    half, as AlpacaEval counts ties). It assumes unreadable replies are unrelated to which
    output is better; ``judge_summary`` reports how many there were.

    ``structured``: ``"auto"`` (default) asks for a JSON verdict through litellm's
    ``response_format`` when ``litellm.supports_response_schema`` says the model supports it;
    ``True`` forces it, ``False`` never. The text parser reads every reply either way.

    Every judgement is a moakit run (pipeline ``[Propose([judge])]``, named ``llm_judge``) in
    ``store`` with ``cache=True``: traced, and a rerun over the same outputs pays nothing.
    ``judge`` is an agent name resolved like any other (``models="local"`` runs it on the
    embedded model; ``models={"judge": "openai/gpt-4.1"}`` on a real one). ``seed`` (default 0)
    keeps judgements reproducible and cacheable."""
    if not isinstance(judge, str) or not judge.strip():
        raise ValueError("llm_judge: judge must be an agent name")
    if not isinstance(template, str) or any(f"{{{k}}}" not in template for k in ("instruction", "a", "b")):
        raise ValueError("llm_judge: template must contain {instruction}, {a} and {b}")
    if structured not in ("auto", True, False):
        raise ValueError(f"llm_judge: structured must be 'auto', True or False, got {structured!r}")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise ValueError(f"llm_judge: max_tokens must be a positive integer, got {max_tokens!r}")
    return LLMJudge(judge, models=models, store=store, seed=seed, temp=temp, max_tokens=max_tokens, system=system,
                    template=template, structured=structured, max_concurrency=max_concurrency, progress=progress)


# ---- summaries ------------------------------------------------------------------------------------
def judge_summary(details, by: str | Sequence[str] | None = None):
    """One row per group of :meth:`LLMJudge.judgements` rows (``by``: e.g. ``"variant"`` after
    concatenating the judgements of several variants with such a column), ``SUMMARY_COLUMNS``:

    * ``win_rate``, ``ci_low``, ``ci_high``: mean over items of the item's score (its readable
      judgements averaged over references and both orders), a t interval over items (items
      are independent; the two orders and the references of one item are not);
    * ``win_rate_output_first`` / ``win_rate_output_second``: how often the output won when
      shown as (a) / as (b); a gap between them is the judge's position bias;
    * ``p_first``: share of readable replies that chose whatever was shown first (0.5 for a
      judge without position bias, whatever the outputs' quality, because every pair is shown
      both ways), with a 95% interval clustered by item and the p-value of ``p_first = 0.5``;
    * ``inconsistent``: share of (item, reference) pairs with both replies read whose two
      verdicts named the same position; ``parse_failures`` / ``call_failures``: replies that
      could not be read / never arrived; ``parse_failure_rate``: both, over all replies;
    * ``output_length`` / ``reference_length``: mean lengths in characters, so a win rate is
      never shown without the lengths behind it."""
    import numpy as np
    import pandas as pd

    need = {"item", "score", "verdict_ab", "verdict_ba", "win_output_first", "win_output_second", "parse_failures"}
    missing = need - set(details.columns)
    if missing:
        raise ValueError(f"judge_summary: not a judgements frame (missing {sorted(missing)})")
    keys = [] if by is None else ([by] if isinstance(by, str) else list(by))
    for k in keys:
        if k not in details.columns:
            raise ValueError(f"judge_summary: by={k!r} is not a column")
    groups = details.groupby(keys, sort=False, dropna=False) if keys else [((), details)]
    out = []
    for key, d in groups:
        key = key if isinstance(key, tuple) else (key,)
        item_scores = d.groupby("item")["score"].mean().dropna()
        wr, lo, hi = mean_interval(item_scores.to_numpy())
        firsts = d.assign(fa=(d["verdict_ab"] == "a").astype(float) + (d["verdict_ba"] == "a").astype(float),
                          fn=d["verdict_ab"].notna().astype(float) + d["verdict_ba"].notna().astype(float))
        per_item = firsts.groupby("item")[["fa", "fn"]].sum()
        pf, pf_lo, pf_hi, pf_p = cluster_share(per_item["fa"], per_item["fn"], 0.5)
        both = d["verdict_ab"].notna() & d["verdict_ba"].notna()
        replies = 2 * len(d)
        calls = int(d["call_failures"].sum()) if "call_failures" in d.columns else 0
        row = dict(zip(keys, key))
        row.update(
            n_items=int(d["item"].nunique()), n_judgements=len(d), n_scored=int(len(item_scores)),
            win_rate=wr, ci_low=lo, ci_high=hi,
            win_rate_output_first=float(d["win_output_first"].mean()),
            win_rate_output_second=float(d["win_output_second"].mean()),
            p_first=pf, p_first_ci_low=pf_lo, p_first_ci_high=pf_hi, p_first_p_value=pf_p,
            inconsistent=float((d.loc[both, "verdict_ab"] == d.loc[both, "verdict_ba"]).mean()) if both.any() else np.nan,
            parse_failures=int(d["parse_failures"].sum()), call_failures=calls,
            parse_failure_rate=(int(d["parse_failures"].sum()) + calls) / replies if replies else np.nan,
            output_length=float(d["output_length"].mean()) if "output_length" in d.columns else np.nan,
            reference_length=float(d["reference_length"].mean()) if "reference_length" in d.columns else np.nan)
        out.append(row)
    return pd.DataFrame(out, columns=[*keys, *SUMMARY_COLUMNS])


# ---- agreement of two judges ----------------------------------------------------------------------
def _kappa_from_counts(c):
    """Cohen's kappa from a (..., k, k) array of joint counts (NaN where chance agreement is 1)."""
    import numpy as np

    c = np.asarray(c, dtype=float)
    n = c.sum(axis=(-1, -2))
    with np.errstate(invalid="ignore", divide="ignore"):
        po = np.trace(c, axis1=-2, axis2=-1) / n
        pe = (c.sum(axis=-1) * c.sum(axis=-2)).sum(axis=-1) / (n * n)
        return np.where(pe < 1, (po - pe) / (1 - pe), np.nan), po


def cohen_kappa(x: Sequence[Any], y: Sequence[Any], *, clusters: Sequence[Any] | None = None, n_boot: int = 2000,
                seed: int = 0) -> dict[str, float]:
    """Cohen's kappa of two raters' labels ``x`` and ``y`` (aligned; pairs with a missing label
    are dropped and counted), with a 95% percentile bootstrap interval and a bootstrap p-value
    of kappa = 0 that agrees with it (0 outside the interval <=> p < 0.05).

    The bootstrap resamples ``clusters`` (e.g. items, when each item contributes several pairs:
    both orders of a pairwise judgement), else single pairs. Estimand: kappa of the two raters
    on the population of clusters the data were drawn from. Returns ``{n, n_items, dropped,
    agreement, kappa, ci_low, ci_high, p_value}``."""
    import numpy as np
    import pandas as pd

    x, y = list(x), list(y)
    if len(x) != len(y):
        raise ValueError(f"cohen_kappa: {len(x)} labels against {len(y)}")
    cl = list(clusters) if clusters is not None else list(range(len(x)))
    if len(cl) != len(x):
        raise ValueError(f"cohen_kappa: {len(x)} labels but {len(cl)} clusters")
    if not isinstance(n_boot, int) or n_boot < 100:
        raise ValueError(f"cohen_kappa: n_boot must be an integer >= 100, got {n_boot!r}")
    df = pd.DataFrame({"x": x, "y": y, "c": cl})
    keep = df["x"].notna() & df["y"].notna()
    dropped = int((~keep).sum())
    df = df[keep]
    res = {"n": len(df), "n_items": int(df["c"].nunique()), "dropped": dropped, "agreement": math.nan,
           "kappa": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan}
    if df.empty:
        return res
    labels = sorted(set(df["x"]) | set(df["y"]), key=str)
    k = len(labels)
    idx = {v: i for i, v in enumerate(labels)}
    ci = pd.factorize(df["c"])[0]
    g = ci.max() + 1
    cell = np.array([idx[a] * k + idx[b] for a, b in zip(df["x"], df["y"])])
    counts = np.zeros((g, k * k))  # joint label counts per cluster
    np.add.at(counts, (ci, cell), 1.0)
    kappa, po = _kappa_from_counts(counts.sum(axis=0).reshape(k, k))
    res.update(agreement=float(po), kappa=float(kappa))
    if g < 2 or math.isnan(float(kappa)):
        return res
    rng = np.random.default_rng(seed)
    w = rng.multinomial(g, np.full(g, 1.0 / g), size=n_boot)  # cluster weights of each resample
    boot, _ = _kappa_from_counts((w @ counts).reshape(n_boot, k, k))
    boot = boot[~np.isnan(boot)]
    if len(boot) < n_boot // 2:
        return res
    lo, hi, p = percentile_interval(boot)
    res.update(ci_low=lo, ci_high=hi, p_value=p)
    return res


def judge_agreement(a, b, *, n_boot: int = 2000, seed: int = 0):
    """Agreement of two judges on the same judgements (two :meth:`LLMJudge.judgements` frames,
    matched on item, reference and order): Cohen's kappa of "the output won" per reply, with a
    bootstrap interval over items (``AGREEMENT_COLUMNS``). Replies either judge could not read
    are dropped and counted in ``dropped``. Labels are about content (did the output win), so a
    judge that always picks position (a) agrees with nobody beyond chance."""
    import pandas as pd

    cols = ["item", "reference_index", "win_output_first", "win_output_second"]
    for name, f in (("a", a), ("b", b)):
        missing = set(cols) - set(f.columns)
        if missing:
            raise ValueError(f"judge_agreement: {name} is not a judgements frame (missing {sorted(missing)})")
    m = a[cols].merge(b[cols], on=["item", "reference_index"], suffixes=("_a", "_b"))
    if m.empty:
        raise ValueError("judge_agreement: the two frames share no (item, reference_index)")
    x = pd.concat([m["win_output_first_a"], m["win_output_second_a"]], ignore_index=True)
    y = pd.concat([m["win_output_first_b"], m["win_output_second_b"]], ignore_index=True)
    items = pd.concat([m["item"], m["item"]], ignore_index=True)
    res = cohen_kappa(x, y, clusters=items, n_boot=n_boot, seed=seed)
    return pd.DataFrame([res], columns=AGREEMENT_COLUMNS)
