"""Run the validation cases.

``python -m validation.run --full`` simulates every case's full number of datasets, keeps each
case's figures in ``validation/results/<analysis>__<case>.json`` and writes VALIDATION.md from
all the kept results (``--only`` reruns some cases and rewrites the file with the others' kept
figures, each row saying the commit it was measured at). ``--quick`` (CI) simulates a few
datasets per case, keeps nothing and prints the table.

Options: ``--only bias,impact`` (analyses or case names), ``--datasets N`` (override the count;
then nothing is kept), ``--jobs N`` (worker processes; default: the cores)."""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import importlib
import json
import os
import pkgutil
import platform
import subprocess
import sys
import time
from pathlib import Path

from . import core

ROOT = Path(__file__).resolve().parent.parent


def all_cases() -> list[core.Case]:
    cases = []
    pkg = Path(__file__).resolve().parent
    for m in sorted(pkgutil.iter_modules([str(pkg)]), key=lambda m: m.name):
        if m.name.startswith("cases_"):
            cases += importlib.import_module(f"validation.{m.name}").CASES
    return cases


def _one(args):
    analysis, name, n, seed = args
    case = next(c for c in all_cases() if c.analysis == analysis and c.name == name)
    return core.run_case(case, n, seed)


RESULTS = Path(__file__).resolve().parent / "results"


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip() or "?"


def to_json(res: core.CaseResult, commit: str) -> dict:
    return {"analysis": res.analysis, "case": res.name, "truth": res.truth, "datasets": res.datasets,
            "seconds": round(res.seconds, 1), "commit": commit,
            "date": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}",
            "rates": [{"name": r.name, "kind": r.kind, "k": r.k, "n": r.n, "goal": r.goal} for r in res.rates],
            "extra": res.extra}


def _fmt(r: dict) -> str:
    rate = core.Rate(r["name"], r["kind"], r["k"], r["n"], r["goal"])
    lo, hi = core.wilson(rate.k, rate.n)
    goal = "" if rate.goal is None else (f" (goal <= {rate.goal:.2f})" if rate.kind == "false positives" else
                                         f" (goal >= {rate.goal:.2f})")
    mark = "" if rate.met is None else ("" if rate.met else " **MISSED**")
    return f"{rate.name}: {rate.value:.3f} [{lo:.3f}, {hi:.3f}]{goal}{mark}"


def _met(entry: dict) -> bool:
    return all(core.Rate(r["name"], r["kind"], r["k"], r["n"], r["goal"]).met is not False for r in entry["rates"])


def report(entries: list[dict], header: str) -> str:
    lines = [
        "# moakit validation",
        "",
        header,
        "",
        "Every analysis of `moakit.analysis` is run on simulated datasets whose truth is known. For each "
        "case: the **false-positive rate** of each test whose null hypothesis holds in the simulation "
        f"(rejections at alpha = {core.ALPHA}; goal <= {core.FPR_GOAL}), the **power** of each test whose "
        "alternative holds, and the **coverage** of each 95% interval (share of datasets whose interval "
        f"holds the true value; goal >= {core.COVERAGE_GOAL}). Brackets: the Monte Carlo 95% interval "
        "(Wilson) of each rate. Dataset i of a case is simulated from `numpy.random.default_rng([0, i])`: "
        "rerun a case with `python -m validation.run --full --only NAME`. The simulations and what each "
        "case's truth is are in `validation/cases_*.py`.",
        "",
        "| analysis | case | truth | datasets | false-positive rate | coverage | power | seconds | measured at | met |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        cols = {kind: "<br>".join(_fmt(r) for r in e["rates"] if r["kind"] == kind) or "-"
                for kind in ("false positives", "coverage", "power")}
        lines.append(f"| {e['analysis']} | {e['case']} | {e['truth']} | {e['datasets']} | {cols['false positives']} | "
                     f"{cols['coverage']} | {cols['power']} | {e['seconds']:.0f} | {e['commit']}, {e['date']} | "
                     f"{'yes' if _met(e) else '**no**'} |")
    extras = [(e, k, v) for e in entries for k, v in e["extra"].items()]
    if extras:
        lines += ["", "## Averages over the datasets", "", "| analysis | case | quantity | mean |", "|---|---|---|---|"]
        lines += [f"| {e['analysis']} | {e['case']} | {k} | {v:.4g} |" for e, k, v in extras]
    lines.append("")
    return "\n".join(lines)


def write_report(commit: str, what: str) -> None:
    """VALIDATION.md from every kept result of a case that still exists, in the cases' order."""
    order = {(c.analysis, c.name): i for i, c in enumerate(all_cases())}
    kept = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(RESULTS.glob("*.json"))]
    kept = sorted((e for e in kept if (e["analysis"], e["case"]) in order),
                  key=lambda e: order[(e["analysis"], e["case"])])
    missing = len(order) - len(kept)
    header = (f"Written by `python -m validation.run` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} "
              f"UTC (commit {commit}): {what}. {len(kept)} of {len(order)} cases have kept figures"
              + (f" ({missing} not yet run at full size)." if missing else "."))
    (ROOT / "VALIDATION.md").write_text(report(kept, header), encoding="utf-8")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m validation.run", description=__doc__)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--full", action="store_true")
    mode.add_argument("--quick", action="store_true")
    mode.add_argument("--report", action="store_true", help="rewrite VALIDATION.md from the kept results, run nothing")
    ap.add_argument("--only", default="")
    ap.add_argument("--datasets", type=int, default=None)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    if args.report:
        write_report(_commit(), "rewrote it from the kept results (no case run)")
        return 0
    wanted = {w.strip() for w in args.only.split(",") if w.strip()}
    cases = [c for c in all_cases() if not wanted or c.analysis in wanted or c.name in wanted]
    if not cases:
        print("no case matches --only", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    jobs = [(c.analysis, c.name, args.datasets or (c.datasets if args.full else c.quick), 0) for c in cases]
    results: list[core.CaseResult] = []
    if args.jobs > 1 and len(jobs) > 1:
        with concurrent.futures.ProcessPoolExecutor(args.jobs) as ex:
            for res in ex.map(_one, jobs):
                results.append(res)
                print(f"{res.analysis}/{res.name}: {res.datasets} datasets, {res.seconds:.1f} s, "
                      f"{'met' if res.met else 'MISSED'}", flush=True)
    else:
        for j in jobs:
            res = _one(j)
            results.append(res)
            print(f"{res.analysis}/{res.name}: {res.datasets} datasets, {res.seconds:.1f} s, "
                  f"{'met' if res.met else 'MISSED'}", flush=True)
    seconds = time.perf_counter() - t0
    commit = _commit()
    if args.full and not args.datasets:
        RESULTS.mkdir(exist_ok=True)
        for res in results:
            path = RESULTS / f"{res.analysis}__{res.name}.json"
            path.write_text(json.dumps(to_json(res, commit), indent=1) + "\n", encoding="utf-8")
        write_report(commit, f"this invocation ran {len(results)} cases in {seconds / 60:.1f} minutes on "
                             f"{os.cpu_count()} cores ({platform.python_implementation()} {platform.python_version()})")
        print(f"wrote {ROOT / 'VALIDATION.md'}")
    else:
        print(report([to_json(r, commit) for r in results], f"`--quick`: {seconds:.0f} s (not kept)."))
        if not all(r.met for r in results) and args.full:
            print("some goals were missed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
