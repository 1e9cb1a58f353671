"""Exported traces open in a real Phoenix: ``phoenix serve`` (the arize-phoenix package, a test
extra) on 127.0.0.1 with a working folder of its own; a run on the stub server is exported over
OTLP/HTTP and read back through Phoenix's own REST API: the run -> step -> call tree arrived with
moakit's ids, its GenAI attributes, and Phoenix reads the calls as LLM spans."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request

import pytest

import moakit
from moakit import Aggregate, Propose
from moakit.store import schema as A
from moakit.testing.stub_server import StubServer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read() or b"null") if r.headers.get_content_type() == "application/json" else r.read()


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory):
    exe = shutil.which("phoenix")
    if exe is None:
        pytest.skip("Phoenix is not installed (pip install -e '.[dev]' brings arize-phoenix)")
    port, grpc = _free_port(), _free_port()
    work = tmp_path_factory.mktemp("phoenix")
    env = {**os.environ, "PHOENIX_WORKING_DIR": str(work), "PHOENIX_HOST": "127.0.0.1", "PHOENIX_PORT": str(port),
           "PHOENIX_GRPC_PORT": str(grpc), "PHOENIX_TELEMETRY_ENABLED": "false"}
    log = open(work / "phoenix.log", "wb")
    proc = subprocess.Popen([exe, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"phoenix serve exited at start: {(work / 'phoenix.log').read_text()[-2000:]}")
        try:
            _get(f"{base}/healthz", 2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("phoenix serve did not answer within 180 s")
    yield base
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def test_a_run_exported_over_otlp_arrives_in_phoenix_as_its_tree(phoenix, tmp_path):
    with StubServer() as stub:
        r = moakit.run([Propose(["a", "b"], max_tokens=8), Aggregate("c", max_tokens=8)], "hello phoenix",
                       models={k: stub.model(k) for k in "abc"}, seed=1, store=tmp_path / "t.db", name="tiny")
    assert r.ok
    assert r.store.export(f"{phoenix}/v1/traces", trace_id=r.trace_id) == 6
    spans = []
    deadline = time.time() + 60  # Phoenix ingests in the background
    while time.time() < deadline:
        spans = [s for s in _get(f"{phoenix}/v1/projects/default/spans?limit=100")["data"]
                 if s["context"]["trace_id"] == r.trace_id]
        if len(spans) == 6:
            break
        time.sleep(0.5)
    assert len(spans) == 6, spans
    by_id = {s["context"]["span_id"]: s for s in spans}
    stored = r.store.spans(r.trace_id).set_index("span_id")
    assert set(by_id) == set(stored.index)  # moakit's own ids
    (root,) = [s for s in spans if s["parent_id"] is None]
    assert root["name"] == "invoke_workflow tiny"
    assert root["attributes"][A.OPERATION_NAME] == "invoke_workflow" and root["attributes"][A.AGENT_NAME] == "tiny"
    steps = [s for s in spans if s["parent_id"] == root["context"]["span_id"]]
    assert sorted(s["name"] for s in steps) == ["step aggregate", "step propose"]
    calls = [s for s in spans if s["parent_id"] in {x["context"]["span_id"] for x in steps}]
    assert sorted(s["name"] for s in calls) == ["chat openai/a", "chat openai/b", "chat openai/c"]
    for s in calls:
        a = s["attributes"]
        assert a[A.OPERATION_NAME] == "chat" and a[A.PROVIDER_NAME] == "openai"
        assert a[A.REQUEST_MODEL] == s["name"].split(" ", 1)[1]
        assert a[A.USAGE_INPUT_TOKENS] > 0 and a[A.USAGE_OUTPUT_TOKENS] > 0
        assert a[A.RESPONSE_FINISH_REASONS] == ["stop"]
        assert json.loads(a[A.OUTPUT_MESSAGES])[0]["role"] == "assistant"
        assert s["span_kind"] == "LLM"  # Phoenix understood the GenAI conventions
        assert s["status_code"] == "OK"
    agg = next(s for s in calls if s["name"].endswith("/c"))
    assert json.loads(agg["attributes"][A.INPUT_SOURCES]) == [
        x["context"]["span_id"] for x in sorted(calls, key=lambda x: x["name"])[:2]]
