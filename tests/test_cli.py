"""The ``moakit`` command as a user runs it (a real subprocess, the embedded model)."""

import subprocess
import sys

import moakit


def _moakit(*args, env=None):
    return subprocess.run([sys.executable, "-m", "moakit.cli", *args], capture_output=True, text=True, timeout=300,
                          env=env)


def test_pipelines_lists_page_and_paper_variants():
    out = _moakit("pipelines")
    assert out.returncode == 0
    for name in ("together_moa", "moa_lite", "self_moa_seq", "refine_pipeline", "together_moa_paper"):
        assert name in out.stdout
    assert "19 calls" in out.stdout and "13 calls" in out.stdout


def test_run_writes_traces_and_prints_answer(tmp_path):
    db = tmp_path / "cli.db"
    out = _moakit("run", "vote_pipeline", "What is 2+2?", "--models", "local", "--seed", "3", "--max-tokens", "8",
                  "--traces", str(db))
    assert out.returncode == 0, out.stderr
    assert "4 calls (4 paid, 0 reused)" in out.stdout and str(db) in out.stdout
    store = moakit.TraceStore(db)
    runs = store.runs()
    assert len(runs) == 1 and runs.pipeline[0] == "vote_pipeline" and runs.calls[0] == 4
    ls = _moakit("traces", "ls", "--traces", str(db))
    assert runs.trace_id[0] in ls.stdout
    show = _moakit("traces", "show", runs.trace_id[0][:10], "--traces", str(db))
    assert "Vote" in show.stdout and "gpt-5.2-chat-latest" in show.stdout


def test_run_reports_bad_input_clearly(tmp_path):
    out = _moakit("run", "no_such_pipeline", "q", "--models", "local", "--traces", str(tmp_path / "x.db"))
    assert out.returncode == 2 and "unknown pipeline 'no_such_pipeline'" in out.stderr
    out = _moakit("run", "self_moa", "q", "--traces", str(tmp_path / "x.db"))  # no key, no --models local
    assert out.returncode == 2 and "OPENAI_API_KEY" in out.stderr
