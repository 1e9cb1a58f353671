"""Smoke test of the benchmarks (issue 6, 16): every case B1..B9 runs at its quick size in-process,
so CI exercises the code paths that ``python -m benchmarks.run --full`` times. No timing is
asserted (speed goals belong to BENCHMARKS.md); what is asserted are the things that must hold
at any speed: every case finishes, reports its figures, replay reproduces the recorded outputs,
both libraries give the same answers from the same stub, the report renders."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root holds benchmarks/
from benchmarks import run as bench  # noqa: E402


@pytest.fixture(scope="module")
def results():
    out = bench.run_cases(list(bench.CASES), quick=True, log=lambda *a, **k: None)
    return {r.case: r for r in out}


def _number(text: str) -> float:
    return float(text.replace(",", "").rstrip("x%").split()[0])


def test_every_case_runs_and_reports_figures(results):
    assert set(results) == {"B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B10"}
    for case, res in results.items():
        assert res.error is None, f"{case} crashed: {res.error}\n{res.notes}"
        assert res.rows, f"{case} reported nothing"
        for row in res.rows:
            if row.moakit not in ("yes", "NO", "-"):
                assert math.isfinite(_number(row.moakit)), (case, row)
        goals = [r for r in res.rows if r.met is not None]
        assert goals, f"{case} has no line with a goal"


def test_b1_both_libraries_get_the_same_answers_from_the_stub(results):
    d = results["B1"].details
    assert d["same_output"], "moakit (mixture-llm prompts) and mixture-llm sent different requests"
    assert len(d["moakit_s"]) == len(d["mixture_s"]) >= 1
    assert min(d["moakit_s"]) >= d["ideal_s"] * 0.99, "faster than the stub's latency allows: not waiting?"


def test_b1_the_direct_transport_and_litellm_give_the_same_answers(results):
    d = results["B1"].details
    assert len(d["moakit_litellm_s"]) == len(d["moakit_s"])
    assert min(d["moakit_litellm_s"]) >= d["ideal_s"] * 0.99


def test_b2_records_every_call(results):
    d = results["B2"].details
    for chars in (60, 1500):
        m = d[f"chars{chars}"]
        assert m["calls_recorded"] >= 19 * len(m["moakit_us"])  # every timed run stored its 19 calls


def test_b3_respects_the_cap(results):
    d = results["B3"].details
    assert d["stub_max_in_flight"] <= 64
    assert len(d["aiohttp_s"]) == len(d["moakit_s"]) == len(d["moakit_litellm_s"]) >= 1


def test_b4_replay_reproduces_the_recorded_outputs(results):
    d = results["B4"].details
    assert d["identical"] and d["identical2"]
    assert d["calls"] == 20 * 19


def test_b5_stores_repeated_texts_once(results):
    d = results["B5"].details
    assert d["spans"] == 20_000
    assert d["unique_text_bytes"] < d["inline_text_bytes"] / 2  # six synthesizers share one prompt
    assert 0 < d["saving"] < 1


def test_b6_same_tokens_through_moakit_and_direct(results):
    d = results["B6"].details
    assert all(d["same_text"]), "same prompt, settings and seed should give the same text"
    assert d["tokens"]["moakit"] == d["tokens"]["direct"]


def test_b7_import_loads_no_heavy_module(results):
    assert results["B7"].details["heavy_modules_loaded"] == ""


def test_b8_ray_merged_file_is_the_single_process_run(results):
    pytest.importorskip("ray", reason="Ray is not installed")
    d = results["B8"].details
    assert d["same"] and d["calls"] == 8 * 13 and d["ray_cpus"] == 2


def test_b9_every_429_on_a_span_and_the_stub_never_served_more_than_its_slots(results):
    d = results["B9"].details
    for side in ("adaptive", "fixed"):
        assert all(d[side]["on_spans"]), side
        assert max(d[side]["served_max"]) <= 20
    assert d["fixed"]["share"][0] > d["adaptive"]["share"][0]  # without the limit, far more 429s


def test_report_renders_and_cli_writes_it(tmp_path, results):
    info = bench.machine()
    assert info["cores"] and info["versions"]["moakit"]
    md = bench.markdown(list(results.values()), info, "quick", "today", "0 0 0", "0 0 0", 1.0)
    assert "| B4 |" in md and "## Machine" in md
    section = tmp_path / "S.md"
    section.write_text("# title\n\nkept\n\n## Old\n\nold text\n\n## Later\n\nkept too\n")
    assert bench.main(["--quick", "--only", "B7", "--output", str(section), "--section", "Old"]) == 0
    text = section.read_text()
    assert "kept\n" in text and "kept too" in text and "old text" not in text and "| B7 |" in text
    assert bench.main(["--quick", "--only", "B7", "--output", str(section), "--section", "Old"]) == 0
    assert section.read_text().count("## Old") == 1
    out, raw = tmp_path / "B.md", tmp_path / "b.json"
    assert bench.main(["--quick", "--only", "B7", "--output", str(out), "--json", str(raw)]) == 0
    assert "| B7 |" in out.read_text()
    assert json.loads(raw.read_text())["cases"][0]["case"] == "B7"
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--only", "B99"])  # no such case
