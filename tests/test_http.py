"""litellm's real HTTP path: llama.cpp's own OpenAI-compatible server (llama-cpp-python[server])
serving the embedded model on 127.0.0.1, and the stub server for timing-sensitive checks."""

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

import moakit
from moakit import pipelines
from moakit.llm.local import model_path
from moakit.testing.stub_server import StubServer

KEY = "sk-test-" + "9" * 32  # must never reach the trace file


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server():
    pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] not installed")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path()), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "4096", "--model_alias", "smollm2", "--api_key", KEY],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {KEY}"})
            urllib.request.urlopen(req, timeout=1)
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail("llama.cpp server exited at start")
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("llama.cpp server did not start within 60 s")
    yield f"http://127.0.0.1:{port}/v1"
    proc.terminate()
    proc.wait(10)


def test_moa_lite_through_litellm_http_to_llama_server(llama_server, store):
    spec = {"model": "openai/smollm2", "api_base": llama_server, "api_key": KEY}
    models = {a: spec for a in [*pipelines.PROPOSERS, "qwen1.5-72b-chat"]}
    r = moakit.run(pipelines.moa_lite, "Say hello.", models=models, seed=5, max_tokens=8, store=store)
    assert r.ok, r.error
    c = r.calls
    assert len(c) == 13 and c.error.isna().all()
    assert (c.model == "openai/smollm2").all() and (c.input_tokens > 0).all()
    spans = store.spans(r.trace_id)
    a = spans[spans.kind == "call"].iloc[0].attributes
    assert a["gen_ai.provider.name"] == "openai"
    store.close()
    raw = b"".join(open(p, "rb").read() for p in [store.path, *store.path.parent.glob(store.path.name + "-*")])
    assert KEY.encode() not in raw and b"api_key" not in raw and b"Bearer" not in raw


def test_proposers_overlap_with_latency(store):
    with StubServer(latency=0.3) as s:
        models = {a: s.model(a) for a in pipelines.PROPOSERS}
        r = moakit.run(pipelines.together_moa, "Q", models=models, store=store, seed=1)
        assert s.stats()["max_in_flight"] == 6
    c = r.calls
    for step_index in (0, 1, 2):
        layer = c[c.step_index == step_index]
        assert len(layer) == 6
        assert layer.start_ns.max() < layer.end_ns.min(), f"layer {step_index} did not overlap"


def test_concurrency_caps_are_respected(store):
    with StubServer(latency=0.2) as s:
        models = {a: s.model(a) for a in pipelines.PROPOSERS}
        moakit.run([moakit.Propose(pipelines.PROPOSERS)], "Q", models=models, store=store, max_concurrency=2)
        assert s.stats()["max_in_flight"] == 2
    with StubServer(latency=0.2) as s:
        models = {a: s.model("same") for a in pipelines.PROPOSERS}
        moakit.run([moakit.Propose(pipelines.PROPOSERS)], "Q", models=models, store=store,
                   per_model_concurrency=3)
        assert s.stats()["max_in_flight"] == 3


def test_direct_transport_against_llama_server_is_the_litellm_path(llama_server, tmp_path):
    """llama.cpp's own OpenAI-compatible server, the same seeded MoA-Lite through both
    transports: the same answers, token counts, finish reasons and call span attributes (all but
    the transport's name, the server's response ids, span ids and measured waits)."""
    spec = {"model": "openai/smollm2", "api_base": llama_server, "api_key": KEY}
    models = {a: spec for a in [*pipelines.PROPOSERS, "qwen1.5-72b-chat"]}
    stores = {}
    for transport in ("litellm", "direct"):
        st = stores[transport] = moakit.TraceStore(tmp_path / f"{transport}.db")
        r = moakit.run(pipelines.moa_lite, "Say hello.", models=models, seed=5, max_tokens=8, store=st,
                       max_concurrency=1, client_config=moakit.ClientConfig(transport=transport))
        assert r.ok, r.error
    calls = {t: s.calls().sort_values("request_key").reset_index(drop=True) for t, s in stores.items()}
    a, b = calls["litellm"], calls["direct"]
    assert len(a) == len(b) == 13
    for col in ("request_key", "output", "input_tokens", "output_tokens", "cost_usd", "attempts", "error"):
        assert a[col].tolist() == b[col].tolist(), col
    assert (a["input_tokens"] > 0).all() and (a["output_tokens"] > 0).all()
    skip = ("gen_ai.response.id", "moakit.transport", "moakit.input.sources", "moakit.wait.")

    def attrs(store):
        sp = store.spans()
        return {x["moakit.request.key"]: {k: v for k, v in x.items() if not k.startswith(skip)}
                for x in sp[sp.kind == "call"]["attributes"]}
    assert attrs(stores["litellm"]) == attrs(stores["direct"])
    for t, st in stores.items():
        assert {x["moakit.transport"] for x in st.spans()["attributes"] if "moakit.transport" in x} == {t}
        st.close()
