"""Run the benchmark cases and report: ``python -m benchmarks.run [--quick|--full] [--only B1,B4]``.

``--full`` (default) runs every case at its real size, prints the table and writes
``BENCHMARKS.md`` at the repository root (``--output`` to write elsewhere, ``--json`` for the raw
figures). ``--quick`` is the CI smoke test: small sizes, a couple of minutes, no timing
asserts, no file written unless ``--output`` is given; it exits non-zero only when a case
crashed. Figures are medians over alternating runs (A B A B ...) in one process.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.metadata
import json
import os
import platform
import sqlite3
import subprocess
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from .common import CaseResult, Row  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CASES = {
    "B1": "b1_critical_path", "B2": "b2_overhead", "B3": "b3_batch", "B4": "b4_replay",
    "B5": "b5_store", "B6": "b6_local", "B7": "b7_startup", "B8": "b8_ray", "B9": "b9_overload",
    "B10": "b10_views",
}
PACKAGES = ["moakit", "mixture-llm", "litellm", "llama_cpp_python", "opentelemetry-sdk", "pandas", "aiohttp",
            "pyarrow", "ray"]


def machine() -> dict:
    info: dict = {"cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                  "sqlite": sqlite3.sqlite_version}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gb"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    info["cpu"] = info.get("cpu") or platform.processor() or "unknown"
    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            versions[p] = "absent"
    info["versions"] = versions
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                        text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        info["commit"] = "unknown"
    return info


def speed_probe() -> dict:
    """How fast this machine is right now, on fixed work (medians of 5): a pure-Python loop, a
    SQLite insert of 50,000 indexed rows in memory, and the first write to 256 MB of fresh
    memory. The VMs these figures come from have differed by 2-3x from one day to the next:
    compare figures from different runs through these, and comparisons only within a run."""
    import mmap
    import random as _random

    from .common import alternate, median

    def loop():
        s = 0
        for i in range(2_000_000):
            s += i & 7
        return s

    rows = [(_random.getrandbits(63), _random.random(), "x" * 40) for _ in range(50_000)]

    def sqlite_insert():
        c = sqlite3.connect(":memory:")
        c.execute("CREATE TABLE t (k INTEGER, v REAL, s TEXT)")
        c.execute("CREATE INDEX t_k ON t(k)")
        c.executemany("INSERT INTO t VALUES (?, ?, ?)", rows)
        c.close()

    def fresh_memory():
        size = 256 << 20
        m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        t0 = time.perf_counter()
        for i in range(0, size, 4096):
            m[i] = 1
        dt = time.perf_counter() - t0
        m.close()
        return dt * (1 << 30) / size

    loop_s, sqlite_s = alternate([lambda i: loop(), lambda i: sqlite_insert()], pairs=5, warmup=0)
    return {"python_loop_s": median(loop_s), "sqlite_50k_insert_s": median(sqlite_s),
            "fresh_memory_s_per_gb": median([fresh_memory() for _ in range(5)])}


def _speed_text(p: dict) -> str:
    return (f"Python loop {p['python_loop_s']:.3f} s, SQLite 50k-row insert {p['sqlite_50k_insert_s']:.3f} s, "
            f"fresh memory {p['fresh_memory_s_per_gb']:.2f} s/GB")


def load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "unknown"


def run_cases(names: list[str], quick: bool, log=print) -> list[CaseResult]:
    """Run the named cases in order; a case that raises is reported with its error, the others go on."""
    results = []
    for name in names:
        mod = importlib.import_module(f"benchmarks.{CASES[name]}")
        log(f"[{name}] {(mod.__doc__ or '').strip().splitlines()[0]}", flush=True)
        t0 = time.perf_counter()
        try:
            res = mod.run(quick)
        except Exception as e:  # noqa: BLE001 - report and go on with the other cases
            res = CaseResult(name, f"{name} crashed", error=f"{type(e).__name__}: {e}")
            res.notes.append(traceback.format_exc(limit=6))
        res.seconds = time.perf_counter() - t0
        for r in res.rows:
            log(f"    {r.measure}: moakit {r.moakit}  peer {r.peer}  ratio {r.ratio}  goal {r.goal}  "
                f"{'' if r.met is None else ('met' if r.met else 'MISSED')}", flush=True)
        if res.error:
            log(f"    CRASHED: {res.error}", flush=True)
        log(f"    ({res.seconds:.1f} s)", flush=True)
        results.append(res)
    return results


def _met(r: Row) -> str:
    return "" if r.met is None else ("yes" if r.met else "**no**")


def table(results: list[CaseResult]) -> str:
    lines = ["| case | measure | moakit | peer | ratio | goal | met |", "|---|---|---|---|---|---|---|"]
    for res in results:
        if res.error:
            lines.append(f"| {res.case} | crashed: {res.error[:120]} | | | | | **no** |")
        for r in res.rows:
            lines.append(f"| {r.case} | {r.measure} | {r.moakit} | {r.peer} | {r.ratio} | {r.goal} | {_met(r)} |")
    return "\n".join(lines)


def text_table(results: list[CaseResult]) -> str:
    rows = [("case", "measure", "moakit", "peer", "ratio", "goal", "met")]
    for res in results:
        if res.error:
            rows.append((res.case, "CRASHED " + res.error[:60], "", "", "", "", "no"))
        for r in res.rows:
            rows.append((r.case, r.measure, r.moakit, r.peer, r.ratio, r.goal,
                         "" if r.met is None else ("yes" if r.met else "NO")))
    widths = [min(60, max(len(str(x[i])) for x in rows)) for i in range(7)]
    return "\n".join("  ".join(str(v)[:w].ljust(w) for v, w in zip(row, widths)) for row in rows)


def write_section(path: Path, title: str, report: str, command: str) -> str:
    """The file at ``path`` with its section ``## title`` replaced by ``report`` (its own
    headings demoted one level), or the section added at the end."""
    body = [f"## {title}", "", f"Written by `{command}`; the rest of this file is left as it was.", ""]
    for line in report.splitlines():
        if line.startswith("# "):
            continue
        body.append("#" + line if line.startswith("## ") else line)
    section = "\n".join(body).rstrip() + "\n"
    text = path.read_text() if path.exists() else ""
    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.rstrip("\n") == f"## {title}"), None)
    if start is None:
        return (text.rstrip() + "\n\n" if text.strip() else "") + section
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    rest = "".join(lines[end:])
    return "".join(lines[:start]) + section + ("\n" + rest if rest else "")


def markdown(results: list[CaseResult], info: dict, mode: str, started: str, load_before: str, load_after: str,
             total_s: float, with_notes: bool = True) -> str:
    v = info["versions"]
    out = [
        "# moakit benchmarks",
        "",
        f"Generated by `python -m benchmarks.run --{mode}` on {started} (commit {info['commit']}), "
        f"{total_s / 60:.1f} minutes. Every comparison ran its contenders alternately (A B A B ...) in one "
        "process; figures are medians, ratios are medians of the pair-by-pair ratios. "
        "The peer is mixture-llm (same stub server, same litellm path, same prompts) except in B6, where it "
        "is llama-cpp-python called directly.",
        "",
        "Rerun: `pip install -e .[dev]` then `python -m benchmarks.run --full` (6-12 minutes; writes this "
        "file) or `python -m benchmarks.run --quick` (CI smoke test, no file). One case: `--only B4`.",
        "",
        "## Machine",
        "",
        f"- {info['cores']} cores, {info['cpu']}, {info.get('memory_gb', '?')} GB memory; {info['platform']}",
        f"- Python {info['python']}, SQLite {info['sqlite']}; "
        + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- load average (1, 5, 15 min) before: {load_before}; after: {load_after} (a load above about 1 means "
        "other processes shared the cores; single figures are then noisy, while the alternating pairs keep the "
        "comparisons fair and the medians keep outliers out).",
        *([f"- speed probe (fixed work, medians of 5; `benchmarks.run.speed_probe`), before: "
           f"{_speed_text(info['speed'][0])}; after: {_speed_text(info['speed'][1])}. Absolute figures scale "
           "with these: compare runs through them."] if info.get("speed") else []),
        "",
        "## Figures",
        "",
        table(results),
        "",
        "## Details per case",
        "",
    ]
    for res in results:
        out.append(f"- **{res.case}** {res.title} ({res.seconds:.0f} s). " + " ".join(
            n for n in res.notes if not n.startswith("Traceback")))
    notes = Path(__file__).with_name("NOTES.md")
    if with_notes and notes.exists():
        out += ["", notes.read_text().strip()]
    return "\n".join(out) + "\n"


def render(json_path: str, output: str, section: str | None = None) -> int:
    """Rewrite the markdown from the raw figures of an earlier run (e.g. after editing NOTES.md);
    with ``section``, as that section of ``output``."""
    raw = json.loads(Path(json_path).read_text())
    results = []
    for c in raw["cases"]:
        res = CaseResult(**{k: v for k, v in c.items() if k != "rows"})
        res.rows = [Row(**r) for r in c["rows"]]
        results.append(res)
    load_before, load_after = raw.get("load", ["unknown", "unknown"])
    md = markdown(results, raw["machine"], raw["mode"], raw["started"], load_before, load_after,
                  raw.get("total_s", sum(r.seconds for r in results)), with_notes=section is None)
    if section:
        cases = ",".join(r.case for r in results)
        md = write_section(Path(output), section, md, f"python -m benchmarks.run --{raw['mode']} --only {cases} "
                                                      f"--section {section!r}")
    Path(output).write_text(md)
    print(f"wrote {output}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small sizes, smoke test for CI (no file written)")
    mode.add_argument("--full", action="store_true", help="real sizes; writes BENCHMARKS.md (the default)")
    ap.add_argument("--only", help="comma-separated cases, e.g. B1,B4")
    ap.add_argument("--output", help="markdown file to write (default: BENCHMARKS.md at the repo root in full mode)")
    ap.add_argument("--json", help="also write the raw figures as JSON here")
    ap.add_argument("--section", metavar="TITLE",
                    help="write the report as the section '## TITLE' of the output file (replacing that section, "
                         "leaving the rest of the file as it is) instead of as the whole file")
    ap.add_argument("--render", metavar="JSON", help="write the markdown again from a --json file (no run)")
    a = ap.parse_args(argv)
    if a.render:
        return render(a.render, a.output or str(ROOT / "BENCHMARKS.md"), a.section)
    quick = bool(a.quick)
    names = [n.strip().upper() for n in a.only.split(",")] if a.only else list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        ap.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    started = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    load_before = load()
    speed_before = None if quick else speed_probe()
    t0 = time.perf_counter()
    results = run_cases(names, quick)
    total = time.perf_counter() - t0
    info = machine()
    if speed_before is not None:
        info["speed"] = [speed_before, speed_probe()]
        print(f"speed probe before: {_speed_text(speed_before)}\nspeed probe after:  {_speed_text(info['speed'][1])}")
    print()
    print(text_table(results))
    output = a.output or (None if quick else str(ROOT / "BENCHMARKS.md"))
    if output:
        md = markdown(results, info, "quick" if quick else "full", started, load_before, load(), total,
                      with_notes=not a.section)
        if a.section:
            md = write_section(Path(output), a.section, md, " ".join(["python -m benchmarks.run",
                                                                      "--quick" if quick else "--full",
                                                                      *(["--only", a.only] if a.only else []),
                                                                      "--section", repr(a.section)]))
        Path(output).write_text(md)
        print(f"\nwrote {output}" + (f" (section {a.section!r})" if a.section else ""))
    if a.json:
        Path(a.json).write_text(json.dumps({"machine": info, "mode": "quick" if quick else "full", "started": started,
                                            "load": [load_before, load()], "total_s": total,
                                            "cases": [r.__dict__ | {"rows": [x.__dict__ for x in r.rows]}
                                                      for r in results]}, indent=1, default=str))
    crashed = [r.case for r in results if r.error]
    if crashed:
        print(f"crashed: {', '.join(crashed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
