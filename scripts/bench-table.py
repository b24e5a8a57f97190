#!/usr/bin/env python3
"""Turn the markdown of `hobbit-gpu bench` into BENCHMARKS.md's table: each row's figures, the
fields of its median run's note (VRAM hits, CPU and split shares, bytes, times per token) and
the decode rate of each run.

    python3 scripts/bench-table.py BENCH.md [BENCH.md ...]
"""
import re
import sys

NOTE = {
    "VRAM hits": r"VRAM hits ([\d.]+)",
    "routes on the CPU": r"CPU ([\d.]+), split",
    "routes split": r"split ([\d.]+)",
    "MiB copied / token": r"([\d.]+) MiB copied",
    "MiB read by the CPU / token": r"([\d.]+) MiB read by the CPU path",
    "stall ms / token": r"([\d.]+) ms stalled",
    "between layers ms / token": r"([\d.]+) ms between layers",
    "of it until the inputs are on the host": r"\(([\d.]+) until the host had",
    "CPU experts ms / token": r"and ([\d.]+) on CPU experts",
    "layers warmed": r"(\d+) layers warmed",
    "of them computed by the CPU": r"layers warmed \((\d+) used\)",
}


def table(path: str) -> str:
    lines = open(path, encoding="utf-8").read().splitlines()
    head = ["configuration", "decode tok/s", "x B-cpu-moe", "x B-n-cpu-moe", "x B-lru-gpu", "prefill tok/s",
            "top-1", "KL", *NOTE, "decode runs"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|"*len(head)]
    for i, line in enumerate(lines):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("| ") or len(cells) < 9 or cells[0] in ("configuration",) or cells[0].startswith("---"):
            continue
        note = cells[8]
        fields = [(m.group(1) if (m := re.search(rx, note)) else "—") for rx in NOTE.values()]
        runs = "—"
        for nxt in lines[i + 1:i + 3]:
            if m := re.search(r"decode ([\d. ]+), prefill", nxt):
                runs = ", ".join(m.group(1).split())
        out.append("| " + " | ".join(cells[:8] + fields + [runs]) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    for p in sys.argv[1:]:
        print(table(p))
        print()
