"""`hobbit bench`: HOBBIT against the baselines, side by side in one run, on this machine.

Every measurement is a fresh process. Offloading variants (B-mmap, B-lru, HOBBIT) run in one
memory cgroup capped to the same total (non-expert bytes + expert budget + overhead), with the
page cache dropped before each run, so the slow tier really is the disk:

- B-resident: stock llama.cpp (build-stock), plain hi GGUF read fully into RAM (the ceiling)
- B-mmap: stock llama.cpp, plain hi GGUF through mmap, under the cap
- B-lru: our cache, hi copies only, plain LRU, same budget, under the cap
- HOBBIT: our cache, mixed precision, same budget, under the cap
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hobbit_py._lib import HobbitError, stock_lib_dir
from hobbit_py.memcap import MemoryCap, cap_memory
from hobbit_py.policy import Policy

CAP_OVERHEAD = 256 * 2**20  # interpreter, bindings, compute buffers, KV cache


@dataclass(frozen=True)
class Variant:
    """One column of the benchmark."""

    name: str
    stock: bool           # run on build-stock with the plain hi GGUF
    capped: bool          # inside the memory cgroup
    policy: str | None    # our policy name, or None for stock
    use_mmap: bool = True


VARIANTS = (
    Variant("B-resident", stock=True, capped=False, policy=None, use_mmap=False),
    Variant("B-mmap", stock=True, capped=True, policy=None),
    Variant("B-lru", stock=False, capped=True, policy="hi-only"),
    Variant("HOBBIT", stock=False, capped=True, policy="hobbit"),
)


def drop_page_cache() -> bool:
    """Drop the page cache (root only); False if not allowed."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def run_worker(variant: Variant, model: Path, plain_hi: Path, policy: Policy, prompt: str,
               n_predict: int, threads: int, cap: MemoryCap | None) -> dict:
    """One measurement in a fresh process; returns the worker's JSON report."""
    spec = {
        "model": str(plain_hi if variant.stock else model), "stock": variant.stock,
        "use_mmap": variant.use_mmap, "prompt": prompt, "n_predict": n_predict,
        "threads": threads,
        "policy": None if variant.policy is None else {
            "expert_budget": policy.expert_budget, "policy": variant.policy,
            "hi_threshold": policy.hi_threshold, "skip_threshold": policy.skip_threshold,
            "upgrade_threshold": policy.upgrade_threshold, "direct_io": policy.direct_io},
    }
    argv = [sys.executable, "-m", "hobbit_py.bench_worker", json.dumps(spec)]
    if cap is not None and variant.capped:
        argv = cap.wrap(argv)
    env = dict(os.environ)
    if variant.stock:
        env["LLAMA_CPP_LIB_PATH"] = str(stock_lib_dir())
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise HobbitError(f"{variant.name} run failed (exit {proc.returncode}): {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine_description() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.node() or 'host'}: {cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()}"


def median_of(runs: list[dict], key: str) -> float:
    return statistics.median(float(r.get(key, 0.0)) for r in runs)


def timestamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime())


def _non_expert_bytes(path: Path) -> int:
    import gguf  # noqa: PLC0415

    return sum(int(t.n_bytes) for t in gguf.GGUFReader(path).tensors if "_exps." not in t.name)


@dataclass
class BenchResult:
    """Medians and quality per variant, with what is needed to reproduce them."""

    command: str
    machine: str
    model: str
    budget_bytes: int
    cap_bytes: int
    cap_description: str
    hi_expert_bytes: int
    runs: int
    n_predict: int
    page_cache_dropped: bool
    rows: dict[str, dict]


def bench(model: Path, plain_hi: Path, policy: Policy, *, prompt: str, n_predict: int, runs: int,
          threads: int, text: str, eval_tokens: int, command: str,
          progress=print) -> BenchResult:  # noqa: ANN001
    """Measure every variant `runs` times (interleaved) and its quality; see the module doc."""
    from hobbit_py.evaluate import evaluate  # noqa: PLC0415
    from hobbit_py.gguf_check import inspect_model  # noqa: PLC0415

    summary = inspect_model(model)
    inspect_model(plain_hi)
    budget = policy.budget_bytes(summary.hi_expert_bytes) or 0
    if budget <= 0:
        raise HobbitError("bench needs an --expert-budget")
    cap = cap_memory(_non_expert_bytes(model) + budget + CAP_OVERHEAD)
    if not cap.capped:
        progress(f"bench: no memory cap on this machine, the offloading variants run uncapped "
                 f"({cap.reason})")
    samples: dict[str, list[dict]] = {v.name: [] for v in VARIANTS}
    dropped = True
    try:
        for run in range(runs):
            for variant in VARIANTS:
                dropped = drop_page_cache() and dropped
                progress(f"run {run + 1}/{runs}: {variant.name}")
                samples[variant.name].append(run_worker(variant, model, plain_hi, policy, prompt,
                                                        n_predict, threads, cap))
    finally:
        cap.close()

    reference_tokens = samples["B-resident"][0]["tokens"]
    rows: dict[str, dict] = {}
    for variant in VARIANTS:
        runs_v = samples[variant.name]
        decode = [float(r["decode_tokens_per_s"]) for r in runs_v]
        row = {
            "decode_tok_s": statistics.median(decode), "decode_min": min(decode),
            "decode_max": max(decode), "prefill_tok_s": median_of(runs_v, "prefill_tokens_per_s"),
            "peak_rss_bytes": median_of(runs_v, "peak_rss_bytes"),
            "same_tokens_as_resident": sum(a == b for a, b in zip(runs_v[0]["tokens"], reference_tokens))
            / max(len(reference_tokens), 1),
        }
        if not variant.stock:
            r0 = runs_v[-1]
            served = max(int(r0["routes_total"]), 1)
            row.update({
                "bytes_loaded": median_of(runs_v, "bytes_loaded"),
                "hit_rate": (int(r0["hits_hi"]) + int(r0["hits_lo"])) / served,
                "lo_share": (int(r0["hits_lo"]) + int(r0["loads_lo"])) / served,
                "skipped_share": int(r0["skipped"]) / served,
                "load_stall_ms": median_of(runs_v, "load_stall_ms"),
            })
            progress(f"quality: {variant.name}")
            q = evaluate(model, Policy(expert_budget=budget, policy=variant.policy,  # type: ignore[arg-type]
                                       hi_threshold=policy.hi_threshold,
                                       skip_threshold=policy.skip_threshold,
                                       upgrade_threshold=policy.upgrade_threshold),
                         text, threads=threads, max_tokens=eval_tokens)
            row.update({"perplexity": q.perplexity, "kl_mean": q.kl_mean,
                        "top1_agreement": q.top1_agreement,
                        "reference_perplexity": q.reference_perplexity})
        rows[variant.name] = row
    ref_ppl = next((r["reference_perplexity"] for r in rows.values() if "reference_perplexity" in r), None)
    for variant in VARIANTS:
        if variant.stock:
            rows[variant.name].update({"perplexity": ref_ppl, "kl_mean": 0.0, "top1_agreement": 1.0})
    return BenchResult(command=command, machine=machine_description(), model=str(model),
                       budget_bytes=budget, cap_bytes=cap.limit_bytes,
                       cap_description=cap.describe(),
                       hi_expert_bytes=summary.hi_expert_bytes, runs=runs, n_predict=n_predict,
                       page_cache_dropped=dropped, rows=rows)


def to_markdown(res: BenchResult) -> str:
    """The BENCHMARKS.md section for one run."""
    mib = 2**20
    base_lru = res.rows["B-lru"]["decode_tok_s"] or float("nan")
    base_mmap = res.rows["B-mmap"]["decode_tok_s"] or float("nan")
    lines = [
        f"## {Path(res.model).name} — {timestamp()}",
        "",
        f"- command: `{res.command}`",
        f"- machine: {res.machine}",
        f"- hi expert bytes {res.hi_expert_bytes / mib:.0f} MiB, expert budget "
        f"{res.budget_bytes / mib:.0f} MiB ({res.hi_expert_bytes / res.budget_bytes:.1f}x smaller); "
        f"memory cap of the offloading variants: {res.cap_description}; "
        f"page cache dropped before each run: {'yes' if res.page_cache_dropped else 'NO'}",
        f"- decode of {res.n_predict} tokens after the prompt, median of {res.runs} runs "
        "(min-max), variants interleaved; quality on the held-out text against all-hi",
        "",
        "| variant | decode tok/s | vs B-lru | vs B-mmap | prefill tok/s | MiB loaded | hit rate "
        "| lo share | skipped | perplexity | KL vs all-hi | top-1 agreement | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in res.rows.items():
        def opt(key: str, fmt: str) -> str:
            return format(r[key], fmt) if r.get(key) is not None else "—"
        loaded = f"{r['bytes_loaded'] / mib:.0f}" if "bytes_loaded" in r else "—"
        lines.append(
            f"| {name} | {r['decode_tok_s']:.2f} ({r['decode_min']:.2f}-{r['decode_max']:.2f}) "
            f"| {r['decode_tok_s'] / base_lru:.2f}x | {r['decode_tok_s'] / base_mmap:.2f}x "
            f"| {r['prefill_tok_s']:.1f} | {loaded} | {opt('hit_rate', '.2f')} "
            f"| {opt('lo_share', '.2f')} | {opt('skipped_share', '.3f')} | {opt('perplexity', '.3f')} "
            f"| {opt('kl_mean', '.4f')} | {opt('top1_agreement', '.3f')} "
            f"| {r['peak_rss_bytes'] / mib:.0f} |")
    return "\n".join(lines) + "\n"
