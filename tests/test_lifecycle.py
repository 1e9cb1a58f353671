"""Resources a loop of runs must not accumulate: file descriptors, SQLite connections and
tracer providers. A notebook that calls ``moakit.run`` in a loop with the default store used to
die at run ~254 with "Too many open files" (a new store and provider per run, kept forever)."""

import gc
import os

import pytest

import moakit
from moakit import steps as S
from moakit.testing.stub_server import StubServer


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _providers() -> int:
    from opentelemetry.sdk.trace import TracerProvider

    return sum(1 for o in gc.get_objects() if isinstance(o, TracerProvider))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors through /proc")
def test_runs_in_a_loop_keep_descriptors_and_providers_constant():
    from moakit.store.store import open_store

    pipe = [S.Propose(["a"], max_tokens=8), S.Aggregate("b", max_tokens=8)]
    default = open_store()  # held throughout, as the last run's Result holds it at the end
    with StubServer() as srv:
        models = {"a": srv.model("a"), "b": srv.model("b")}
        for _ in range(5):  # warm up: litellm's client pool, the store, the writer thread
            assert moakit.run(pipe, "q", models=models, seed=1).ok
        gc.collect()
        fds, providers = _open_fds(), _providers()
        for i in range(300):
            r = moakit.run(pipe, f"q{i}", models=models, seed=i)
            assert r.ok, r.error
        gc.collect()
        assert _open_fds() <= fds, "descriptors grew with the number of runs"
        assert _providers() <= providers, "tracer providers grew with the number of runs"
        # the runs all went to the one default store object, and every run is there
        assert r.store is default and len(default.runs()) == 305


def test_the_default_store_is_shared_and_released(tmp_path):
    from moakit.store.store import open_store

    a = open_store(tmp_path / "x.db")
    assert open_store(str(tmp_path / "x.db")) is a  # one object per file per process
    a.close()
    b = open_store(tmp_path / "x.db")  # a closed store is not handed out again
    assert b is not a and not b.closed
    fds = _open_fds()
    del a, b
    gc.collect()
    assert _open_fds() < fds  # nobody holds it: its connection is closed
