#!/usr/bin/env python3
"""Check `--expert-budget auto` against the largest budget that really runs under a memory cap.

    .venv/bin/python scripts/auto_budget_check.py MODEL.gguf --limit-mib 600 \\
        --budgets-mib 200,250,300,350,400,450,500

Inside one memory cap (a cgroup made by hobbit_py.memcap, no swap), it runs
`hobbit run MODEL --expert-budget auto` and then each fixed budget, and prints for each:
the outcome (ok, or the exit status: an OOM kill is -9), decode tok/s, peak RSS and major
page faults (re-reads of evicted file pages: the "swapping" of a machine without swap). The
page cache is dropped before each run where allowed. Not a test: it needs a model with large
experts (BENCHMARKS.md says how to make the widened one) and minutes.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hobbit_py.bench import drop_page_cache  # noqa: E402
from hobbit_py.memcap import cap_memory  # noqa: E402

MiB = 2**20
RUSAGE = ("import json, resource, runpy, sys; sys.argv = ['hobbit'] + sys.argv[1:]\n"
          "try:\n    runpy.run_module('hobbit_py.cli', run_name='__main__')\n"
          "finally:\n    r = resource.getrusage(resource.RUSAGE_SELF)\n"
          "    print(json.dumps({'majflt': r.ru_majflt}), file=sys.stderr)\n")


def run_once(model: Path, budget: str, cap, n: int, ctx: int, threads: int) -> dict:  # noqa: ANN001
    with tempfile.TemporaryDirectory() as tmp:
        stats = Path(tmp) / "stats.json"
        drop_page_cache()
        argv = cap.wrap([sys.executable, "-c", RUSAGE, "run", str(model), "-p",
                         "The documentation explains how the database server stores tables on disk, and",
                         "-n", str(n), "-c", str(ctx), "-t", str(threads), "--expert-budget", budget,
                         "--stats-json", str(stats)])
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
        out = {"budget": budget, "rc": proc.returncode}
        auto = re.search(r"expert budget auto: ([0-9.]+ [MG]iB)", proc.stderr)
        if auto:
            out["auto"] = auto.group(1)
        faults = re.findall(r'\{"majflt": (\d+)\}', proc.stderr)
        out["major_faults"] = int(faults[-1]) if faults else None
        if proc.returncode == 0 and stats.exists():
            s = json.loads(stats.read_text())
            out.update(decode=s["decode_tokens_per_s"], rss_mib=s["peak_rss_bytes"] / MiB,
                       budget_mib=s["expert_budget_bytes"] / MiB, policy=s["policy"])
        elif proc.returncode != 0:
            out["error"] = (proc.stderr.strip().splitlines() or ["killed"])[-2 if faults else -1][:160]
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--limit-mib", type=int, required=True)
    parser.add_argument("--budgets-mib", required=True, help="comma-separated fixed budgets")
    parser.add_argument("-n", type=int, default=32)
    parser.add_argument("-c", "--ctx", type=int, default=512)
    parser.add_argument("-t", "--threads", type=int, default=2)
    args = parser.parse_args()
    cap = cap_memory(args.limit_mib * MiB)
    if not cap.capped:
        sys.exit(f"no memory cap on this machine: {cap.reason}")
    print(f"memory cap: {cap.describe()}")
    try:
        rows = [run_once(args.model, "auto", cap, args.n, args.ctx, args.threads)]
        for b in args.budgets_mib.split(","):
            rows.append(run_once(args.model, f"{b}MiB", cap, args.n, args.ctx, args.threads))
    finally:
        cap.close()
    print("| budget | outcome | budget MiB | decode tok/s | peak RSS MiB | major faults |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        outcome = "ok" if r["rc"] == 0 else f"exit {r['rc']}" + (" (OOM kill)" if r["rc"] in (-9, 137) else "")
        print(f"| {r['budget']}{' = ' + r['auto'] if 'auto' in r else ''} | {outcome} "
              f"| {r.get('budget_mib', 0):.0f} | {r.get('decode', 0):.2f} | {r.get('rss_mib', 0):.0f} "
              f"| {r.get('major_faults')} |")
    ok = [r["budget_mib"] for r in rows[1:] if r["rc"] == 0 and "budget_mib" in r]
    if rows[0]["rc"] == 0 and ok:
        print(f"auto chose {rows[0]['budget_mib']:.0f} MiB; the largest fixed budget that ran: "
              f"{max(ok):.0f} MiB ({100 * rows[0]['budget_mib'] / max(ok):.0f}% of it)")


if __name__ == "__main__":
    main()
