"""Batches on Ray (issue 16, item 3): ``TraceStore.merge`` (deduplicated by span id, idempotent,
a kill mid-merge loses nothing) and ``run_batch(..., executor="ray")`` on a real local Ray with
2 workers, whose merged file must hold the calls, outputs and request keys of the same batch run
in one process. The Ray tests are skipped where Ray is not installed (the dev extra installs it)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import moakit
from moakit import ClientConfig, PipelineError, TraceStore, TraceFileError
from moakit.pipelines import moa_lite
from moakit.testing.stub_server import StubServer

ROOT = Path(__file__).resolve().parents[1]


def make_shard(path: Path, n: int, prefix: str, text_len: int = 200) -> set[str]:
    """A trace file of ``n`` call spans (ids ``prefix``-numbered) and their texts."""
    st = TraceStore(path)
    rows, texts = [], {}
    for i in range(n):
        h = f"{prefix}{i:07d}".ljust(32, "0")
        texts[h] = f"{prefix} answer {i} " + "x" * text_len
        rows.append({"span_id": f"{prefix}{i:012d}", "trace_id": f"t{prefix}{i // 10:030d}", "name": "chat m",
                     "kind": "call", "start_ns": i, "end_ns": i + 1, "status": "OK", "request_key": f"k{prefix}{i}:0",
                     "output_hash": h, "attributes": "{}", "cached": 0, "attempt": 1, "model": "m", "agent": "a"})
    for k in range(0, n, 5000):
        st.write(rows[k:k + 5000], {r["output_hash"]: texts[r["output_hash"]] for r in rows[k:k + 5000]})
    st.close()
    return {r["span_id"] for r in rows}


def span_ids(path: Path) -> set[str]:
    with sqlite3.connect(path) as c:
        return {r[0] for r in c.execute("SELECT span_id FROM spans")}


def test_merge_adds_each_span_once_and_again_adds_nothing(tmp_path):
    a = make_shard(tmp_path / "a.db", 300, "a")
    b = make_shard(tmp_path / "b.db", 200, "b")
    both = make_shard(tmp_path / "ab.db", 0, "c")  # an empty file merges as nothing
    target = TraceStore(tmp_path / "all.db")
    seen = []
    assert target.merge([tmp_path / "a.db", tmp_path / "b.db", tmp_path / "ab.db"],
                        on_shard=lambda p, n: seen.append((p.name, n))) == 500
    assert seen == [("a.db", 300), ("b.db", 200), ("ab.db", 0)]
    assert target.merge([tmp_path / "b.db", tmp_path / "a.db"]) == 0  # idempotent
    assert span_ids(target.path) == a | b and not both
    calls = target.calls()
    assert len(calls) == 500 and calls["output"].str.contains(" answer ").all()
    assert target.cache_index()["ka5:0"][0] == "a000000000005"  # replay sees merged calls
    with pytest.raises(TraceFileError, match="no such trace file"):
        target.merge([tmp_path / "missing.db"])
    with pytest.raises(TraceFileError, match="into itself"):
        target.merge([target.path])
    (tmp_path / "junk.db").write_text("not a database at all")
    with pytest.raises(TraceFileError):
        target.merge([tmp_path / "junk.db"])
    target.close()


MERGER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from moakit import TraceStore
    t = TraceStore(sys.argv[1])
    t.merge(sys.argv[2:], on_shard=lambda p, n: print("MERGED", p.name, n, flush=True))
    print("DONE", flush=True)
""")


def test_a_merge_killed_midway_loses_nothing(tmp_path):
    """SIGKILL a merging process after its first shard: the file is intact, every shard is in
    it wholly or not at all, and merging again completes it."""
    shards = []
    expected: dict[str, set[str]] = {}
    for k in range(4):
        p = tmp_path / f"s{k}.db"
        expected[p.name] = make_shard(p, 40_000, f"{k}", text_len=400)
        shards.append(p)
    target = tmp_path / "merged.db"
    script = tmp_path / "merge.py"
    script.write_text(MERGER.format(root=str(ROOT)))
    proc = subprocess.Popen([sys.executable, str(script), str(target), *map(str, shards)], stdout=subprocess.PIPE,
                            text=True)
    first = proc.stdout.readline()
    assert first.startswith("MERGED s0.db"), first
    proc.send_signal(signal.SIGKILL)  # mid-way: the second shard's transaction is under way
    proc.wait()
    with sqlite3.connect(target) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    have = span_ids(target)
    merged = [name for name, ids in expected.items() if ids <= have]
    for name, ids in expected.items():
        assert ids <= have or not (ids & have), f"{name} half merged"
    assert "s0.db" in merged and len(merged) < 4
    t = TraceStore(target)
    added = t.merge(shards)
    assert added == sum(len(expected[n]) for n in expected if n not in merged)
    assert span_ids(target) == set().union(*expected.values())
    assert t.merge(shards) == 0
    t.close()
    for p in shards:  # the shards are only read
        assert span_ids(p) == expected[p.name]


def test_bad_executor_arguments_fail_before_anything_runs(tmp_path):
    with pytest.raises(PipelineError, match="executor must be"):
        moakit.run_batch(moa_lite, ["q"], models="local", executor="spark", store=tmp_path / "a.db")
    with pytest.raises(PipelineError, match="go with executor='ray'"):
        moakit.run_batch(moa_lite, ["q"], models="local", shards=2, store=tmp_path / "a.db")
    with pytest.raises(PipelineError, match="prompt 1"):
        moakit.run_batch(moa_lite, ["q", ""], models="local", executor="ray", store=tmp_path / "a.db")


# ---- on a real local Ray ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'moakit[ray]')")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def stub():
    with StubServer(latency=0.01) as s:
        yield s


def frame(path):
    st = TraceStore(path)
    calls = st.calls().sort_values("request_key").reset_index(drop=True)
    runs = st.runs().sort_values("batch_item").reset_index(drop=True)
    st.close()
    return calls, runs


@pytest.mark.parametrize("collect", [False, True])
def test_ray_batch_is_the_single_process_batch(tmp_path, ray_local, stub, collect):
    models = {a: stub.model(a) for s in moa_lite for a in s.agents}
    prompts = [f"question {i}: what is {i} squared?" for i in range(12)]
    common = dict(models=models, seed=21, progress=False, templates="mixture-llm", max_concurrency=8)
    one = moakit.run_batch(moa_lite, prompts, store=tmp_path / "one.db", **common)
    many = moakit.run_batch(moa_lite, prompts, store=tmp_path / "ray.db", executor="ray", workers=2, shards=3,
                            collect=collect, **common)
    assert ray_local.is_initialized() and ray_local.cluster_resources()["CPU"] == 2
    for col in ("item", "prompt", "output", "calls", "calls_paid", "input_tokens", "output_tokens"):
        assert one[col].tolist() == many[col].tolist(), col
    assert many["error"].isna().all()
    c1, r1 = frame(tmp_path / "one.db")
    c2, r2 = frame(tmp_path / "ray.db")
    assert len(c1) == len(c2) == 12 * 13
    for col in ("request_key", "output", "agent", "model", "step", "sample", "input_tokens", "output_tokens"):
        assert c1[col].tolist() == c2[col].tolist(), col
    assert r2["batch_item"].tolist() == list(range(12)) and r2["batch_id"].nunique() == 1
    assert r1["output"].tolist() == r2["output"].tolist() and r1["seed"].tolist() == r2["seed"].tolist()
    assert set(r2["batch_id"]) == {many.attrs["batch_id"]}
    assert not list(tmp_path.glob("moakit-shards-*"))  # the temporary shard folder is gone
    # replay from the merged file: every call served from it
    again = moakit.run_batch(moa_lite, prompts, store=tmp_path / "replay.db", cache=tmp_path / "ray.db",
                             offline=True, **common)
    assert again["output"].tolist() == one["output"].tolist() and (again["calls_reused"] == 13).all()


def test_ray_shards_land_in_a_given_folder_and_merge_again_to_nothing(tmp_path, ray_local, stub):
    models = {a: stub.model(a) for s in moa_lite for a in s.agents}
    folder = tmp_path / "shards"
    df = moakit.run_batch(moa_lite, [f"p{i}" for i in range(5)], models=models, store=tmp_path / "m.db", seed=3,
                          progress=False, executor="ray", workers=2, shard_dir=folder,
                          client_config=ClientConfig(transport="litellm"))
    files = sorted(folder.glob("shard-*.db"))
    assert len(files) == 2 and df["error"].isna().all()
    st = TraceStore(tmp_path / "m.db")
    assert st.merge(files) == 0
    assert {a.get("moakit.transport") for a in st.spans()["attributes"] if "moakit.transport" in a} == {"litellm"}
    st.close()
