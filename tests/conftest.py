"""Shared fixtures. Tests never need an API key: provider keys are removed from the
environment, and traces go to temporary files (never to the repo's traces/)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ALPACA = SHARED_DATA / "alpaca_eval"


@pytest.fixture(autouse=True)
def _no_keys_no_repo_traces(monkeypatch, tmp_path):
    from moakit.models import PROVIDER_KEYS

    for names in PROVIDER_KEYS.values():
        for n in names:
            monkeypatch.delenv(n, raising=False)
    monkeypatch.setenv("MOAKIT_TRACES", str(tmp_path / "default-traces.db"))


@pytest.fixture(scope="module")
def stub():
    """The OpenAI-compatible stub server on 127.0.0.1 (moakit.testing.stub_server), one per test
    module; modules that need its latency, faults or prices define their own ``stub``."""
    from moakit.testing.stub_server import StubServer

    with StubServer() as s:
        yield s


@pytest.fixture
def store(tmp_path):
    from moakit import TraceStore

    s = TraceStore(tmp_path / "traces.db")
    yield s
    s.close()


def needs_alpaca():
    return pytest.mark.skipif(not ALPACA.is_dir(), reason=f"shared AlpacaEval data not found at {ALPACA}")
