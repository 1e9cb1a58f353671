"""Property tests (issue 7, item 6), with hypothesis:

* Rank parsing of arbitrary model replies never raises and returns distinct, in-range
  positions, at most ``n``; a well-formed ranking is read back exactly.
* Prompts with odd unicode (RTL marks, emoji sequences, NUL, combining marks, line separators)
  and very long responses go through litellm's real HTTP path to the stub's ``echo`` model and
  come back, and are stored and read back, identical; a lone surrogate (not valid Unicode, no
  provider accepts it) is refused before any call; a lone surrogate in a model's output is
  stored as U+FFFD instead of crashing the trace writer.
* Request keys: the same request gives the same key (dict key order, int vs float, -0.0 vs 0.0
  do not matter; the key is stable across processes and versions); any change of agent, model,
  messages, temperature, max_tokens or seed gives a different key.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import moakit
from moakit import PipelineError, Propose, TraceStore
from moakit.rank_parse import parse_rank
from moakit.testing.stub_server import StubServer
from moakit.store.keys import request_hash, request_key

FIXTURE_OK = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]

# ---------------------------------------------------------------------------------------------
# Rank parsing
NOISE = st.sampled_from(["[", "]", ",", ", ", " ", ">", "Response ", "#", ".", "\n", "1.5", "0", "-2", "３", "٣",
                         "𝟕", "²", "10000", "best: ", "(", ")", "and", "1e3", "v2.0", "\u200f", "\x00"])
REPLIES = st.one_of(st.none(), st.text(), st.lists(st.one_of(st.integers(-5, 99999).map(str), NOISE)).map("".join))


@given(text=REPLIES, n_shown=st.integers(-3, 60), n=st.integers(-3, 20))
@settings(max_examples=400, database=None)
def test_rank_parse_never_raises_and_stays_in_range(text, n_shown, n):
    out = parse_rank(text, n_shown, n)
    assert isinstance(out, list)
    assert len(out) <= max(n, 0)
    assert len(set(out)) == len(out)
    assert all(type(i) is int and 0 <= i < n_shown for i in out)


@given(perm=st.integers(1, 12).flatmap(lambda k: st.permutations(range(1, k + 1))), n=st.integers(1, 12),
       fmt=st.sampled_from(["[{}]", "{}", "Ranking: {}", "The order is {}.", "```\n{}\n```"]),
       sep=st.sampled_from([", ", ",", " > ", " ", "\n", ", Response "]))
@settings(database=None)
def test_rank_parse_reads_a_well_formed_ranking_exactly(perm, n, fmt, sep):
    reply = fmt.format(sep.join(str(p) for p in perm))
    assert parse_rank(reply, len(perm), n) == [p - 1 for p in perm][:n]


# ---------------------------------------------------------------------------------------------
# Odd unicode and long texts, through the real HTTP path and the store
ODD = st.sampled_from(["\u202e", "\u202c", "\u200f", "\u200d", "\u0301", "\x00", "\ufeff", "\u2028", "\r\n", "\t",
                       "👩‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "ﷺ", "مرحبا", "שלום", "ℌ", "\U0010fffd", "a\u0308",
                       "\u0000\u0000", "'\"\\", "{}", "😀"])
VALID_TEXT = st.characters(blacklist_categories=("Cs",))
PROMPTS = st.lists(st.one_of(ODD, st.text(VALID_TEXT, min_size=1, max_size=20)), min_size=1, max_size=12) \
    .map("".join).filter(lambda s: s.strip())


@pytest.fixture(scope="module")
def echo(tmp_path_factory):
    with StubServer() as stub:
        store = TraceStore(tmp_path_factory.mktemp("props") / "unicode.db")
        yield {"stub": stub, "store": store, "models": {"echo": stub.model("echo")}}
        store.close()


def _roundtrip(echo, prompt: str) -> None:
    r = moakit.run([Propose(["echo"], max_tokens=8)], prompt, models=echo["models"], store=echo["store"])
    assert r.ok, r.error
    assert r.output == prompt  # through litellm's HTTP path and back
    calls = r.calls
    assert len(calls) == 1 and calls["output"].iloc[0] == prompt  # stored and read back
    contents = r.store.call_contents([calls["span_id"].iloc[0]]) if hasattr(r.store, "call_contents") else None
    if contents is not None:
        assert contents[calls["span_id"].iloc[0]]["messages"][-1]["content"] == prompt
    import json

    assert json.loads(r.store.run_attributes(r.trace_id)["moakit.query"])[0]["content"] == prompt


@given(prompt=PROMPTS)
@settings(max_examples=40, deadline=None, database=None, suppress_health_check=FIXTURE_OK)
def test_odd_unicode_prompts_round_trip_identically(echo, prompt):
    _roundtrip(echo, prompt)


@given(size=st.integers(20_000, 300_000), unit=st.sampled_from(["a", "é", "😀", "مرحبا ", "line\n", "\x00x"]))
@settings(max_examples=4, deadline=None, database=None, suppress_health_check=FIXTURE_OK)
def test_very_long_responses_round_trip_identically(echo, size, unit):
    _roundtrip(echo, (unit * (size // len(unit) + 1))[:size] + "END")


@given(prefix=st.text(VALID_TEXT, max_size=10), surrogate=st.characters(categories=["Cs"]),
       suffix=st.text(VALID_TEXT, max_size=10))
@settings(max_examples=25, deadline=None, database=None, suppress_health_check=FIXTURE_OK)
def test_lone_surrogates_are_refused_before_any_call(echo, prefix, surrogate, suffix):
    before = echo["stub"].stats().get("requests", 0)
    with pytest.raises(PipelineError, match=rf"lone surrogate U\+{ord(surrogate):04X} at character {len(prefix) + 3}"):
        moakit.run([Propose(["echo"], max_tokens=8)], "ok " + prefix + surrogate + suffix, models=echo["models"],
                   store=echo["store"])
    assert echo["stub"].stats().get("requests", 0) == before


_LONE = re.compile("[\ud800-\udfff]")


@given(text=st.text(st.characters(), max_size=200))
@settings(max_examples=100, deadline=None, database=None, suppress_health_check=FIXTURE_OK)
def test_any_output_text_is_stored_without_crashing(echo, text):
    """Whatever a provider returns (a JSON "\\ud800" escape decodes to a lone surrogate), the
    span writer stores it; valid text comes back identical, lone surrogates as U+FFFD."""
    from moakit.store.ids import span_id_hex
    from moakit.store.records import CallRecord, Rows

    store = echo["store"]
    sid = span_id_hex()
    rows = Rows()
    store.writer.builder.call(CallRecord(sid, "0" * 32, None, 1, 2, "m", "p", "a", request_key="prop-" + str(abs(hash(text))),
                                         output=text, extra={"moakit.note": text}), rows)
    store.write(rows.rows, rows.texts)
    row = store.frame("SELECT s.*, t.text AS out FROM spans s LEFT JOIN texts t ON t.hash = s.output_hash "
                      "WHERE s.span_id = ?", [sid]).iloc[0]
    expected = _LONE.sub("\ufffd", text)
    assert row["out"] == expected
    assert store.full_attributes(row.to_dict())["moakit.note"] == expected


# ---------------------------------------------------------------------------------------------
# Request keys
MESSAGES = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]),
                                           "content": st.text(VALID_TEXT, max_size=40)}), min_size=1, max_size=4)
REQUEST = st.fixed_dictionaries({
    "agent": st.text(VALID_TEXT, min_size=1, max_size=12),
    "model": st.text(VALID_TEXT, min_size=1, max_size=20),
    "messages": MESSAGES,
    "temperature": st.one_of(st.none(), st.floats(0, 2), st.integers(0, 2)),
    "max_tokens": st.one_of(st.none(), st.integers(1, 100_000)),
    "seed": st.one_of(st.none(), st.integers(0, 2 ** 31 - 1)),
})


def _same_value(a, b) -> bool:
    return a == b and type(a) is type(b) or (isinstance(a, (int, float)) and isinstance(b, (int, float))
                                             and a is not None and b is not None and float(a) == float(b))


@given(req=REQUEST)
@settings(database=None)
def test_same_request_same_key_whatever_the_dict_order(req):
    k1 = request_hash(**req)
    reordered = copy.deepcopy(req)
    reordered["messages"] = [dict(reversed(list(m.items()))) for m in reordered["messages"]]
    assert request_hash(**dict(reversed(list(reordered.items())))) == k1
    if req["temperature"] is not None:  # 1 and 1.0, 0.0 and -0.0 are the same temperature
        assert request_hash(**{**req, "temperature": -float(req["temperature"]) if req["temperature"] == 0
                               else float(req["temperature"])}) == k1
    assert re.fullmatch(r"[0-9a-f]{32}", k1)
    assert request_key(k1, 3) == f"{k1}:3" and request_key(k1, 0) != request_key(k1, 1)


@given(req=REQUEST, data=st.data())
@settings(database=None)
def test_any_change_gives_a_different_key(req, data):
    field = data.draw(st.sampled_from(sorted(req)))
    new = data.draw(REQUEST)[field]
    if field == "messages":
        new = data.draw(st.one_of(st.just(new), MESSAGES.map(lambda m: req["messages"] + m),
                                  st.just([{**req["messages"][0], "content": req["messages"][0]["content"] + " "}]
                                          + req["messages"][1:]),
                                  st.just([{**req["messages"][0], "role": "user" if req["messages"][0]["role"] != "user"
                                            else "system"}] + req["messages"][1:])))
        assume([(m["role"], m["content"]) for m in new] != [(m["role"], m["content"]) for m in req["messages"]])
    else:
        assume(not _same_value(new, req[field]))
    assert request_hash(**{**req, field: new}) != request_hash(**req), field


GOLDEN = dict(agent="qwen1.5-110b-chat", model="together_ai/Qwen/Qwen1.5-110B-Chat",
              messages=[{"role": "user", "content": "What is MoA? ✓"}], temperature=0.7, max_tokens=512, seed=None)
GOLDEN_KEY = "95750a135b6296b27da80189786091b4"


def test_request_key_is_stable_across_processes_and_versions():
    """A changed key silently invalidates every recorded trace as a cache: change it only on purpose."""
    assert request_hash(**GOLDEN) == GOLDEN_KEY
    code = ("from moakit.store.keys import request_hash; "
            f"print(request_hash(**{GOLDEN!r}))")
    for hashseed in ("0", "12345"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={"PYTHONHASHSEED": hashseed, "PATH": "/usr/bin:/bin"})
        assert out.stdout.strip() == GOLDEN_KEY
