"""`hobbit bench`: HOBBIT against the baselines, side by side in one run, for several budgets.

Every speed measurement is a fresh process, variants interleaved, the page cache dropped
before each where allowed. Per expert budget, under one memory cap (non-expert bytes + budget
+ overhead, see memcap.py):

- B-mmap: stock llama.cpp, plain hi GGUF through mmap, under the cap
- B-lru: our cache, hi copies only, plain LRU, no prefetch, the budget, under the cap
- B-lru + prefetch: the same with HOBBIT's prefetch (what mixed precision adds is the rest)
- HOBBIT no prefetch: mixed precision and the policy's eviction, prefetch off
- HOBBIT: the policy as given (mixed precision, prefetch, multidimensional eviction)
- with --ablations, one row per other eviction rule (lru, lfu, fld, least-stale)

Once, uncapped (all weights resident; their memory is the file):

- B-resident: stock llama.cpp on the plain hi GGUF (the speed ceiling and the reference)
- B-static: stock llama.cpp on each uniform low-bit GGUF given (the "just use Q3" user);
  each budget's table says whether it fits that budget's memory

Quality of every row (perplexity, KL and top-1 against the all-hi model on held-out text) is
computed in this process on the patched library with HOBBIT off for the stock rows (stock
and patched agree logit for logit with the cache off, tests/test_equivalence.py).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hobbit_py._lib import HobbitError, stock_lib_dir
from hobbit_py.memcap import MemoryCap, cap_memory
from hobbit_py.policy import Policy, parse_budget

CAP_OVERHEAD = 256 * 2**20  # interpreter, bindings, compute buffers, KV cache
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Variant:
    """One kind of row: which build, which file, capped or not, which policy."""

    name: str
    stock: bool            # run on build-stock
    capped: bool           # inside the budget's memory cap
    policy: str | None     # our policy name, or None for stock
    use_mmap: bool = True
    file: Path | None = None  # B-static's file
    overrides: tuple[tuple[str, Any], ...] = ()  # Policy fields this row sets (prefetch off, ...)


@dataclass
class BenchSpec:
    """Everything `hobbit bench` was asked to do."""

    model: Path
    plain_hi: Path
    static: list[Path]
    budgets: list[str]
    policy: Policy
    prompt: str
    n_predict: int
    runs: int
    threads: int
    text: str
    eval_tokens: int
    command: str
    ablations: bool = False


@dataclass
class Row:
    """One variant at one budget (budget None: measured once, uncapped)."""

    variant: str
    budget: str | None
    budget_bytes: int | None
    memory_bytes: int       # the cap, or the file for resident rows
    decode_tok_s: float
    decode_min: float
    decode_max: float
    prefill_tok_s: float
    peak_rss_bytes: float
    major_faults: float
    same_tokens_as_resident: float
    perplexity: float | None = None
    kl_mean: float | None = None
    top1_agreement: float | None = None
    cache: dict[str, float] = field(default_factory=dict)
    fits: dict[str, bool] = field(default_factory=dict)  # B-static: fits each budget's memory
    decode_bytes_per_token: float | None = None  # expert bytes read per decoded token


@dataclass
class BenchResult:
    """All rows, with what is needed to reproduce and read them."""

    command: str
    machine: str
    model: str
    date: str
    hi_expert_bytes: int
    non_expert_bytes: int
    runs: int
    n_predict: int
    eval_tokens: int
    page_cache_dropped: bool
    read_bandwidth: float     # bytes/s of expert reads as HOBBIT makes them (O_DIRECT, 4 threads)
    caps: dict[str, str]      # budget -> how it was capped
    reference_perplexity: float
    rows: list[Row]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def row(self, variant: str, budget: str | None) -> Row:
        return next(r for r in self.rows if r.variant == variant and r.budget == budget)


def drop_page_cache() -> bool:
    """Drop the page cache (root only); False if not allowed."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def variant_policy(variant: Variant, spec: BenchSpec, budget_bytes: int | None) -> Policy:
    """The Policy a row runs with: the bench's, its name's rule, and the row's overrides."""
    fields = {**asdict(spec.policy), "expert_budget": budget_bytes, "policy": variant.policy,
              **dict(variant.overrides)}
    return Policy(**fields)


def run_worker(variant: Variant, spec: BenchSpec, budget_bytes: int | None,
               cap: MemoryCap | None) -> dict:
    """One measurement in a fresh process; returns the worker's JSON report."""
    model = variant.file or (spec.plain_hi if variant.stock else spec.model)
    worker = {
        "model": str(model), "stock": variant.stock, "use_mmap": variant.use_mmap,
        "prompt": spec.prompt, "n_predict": spec.n_predict, "threads": spec.threads,
        "policy": None if variant.policy is None else asdict(variant_policy(variant, spec, budget_bytes)),
    }
    argv = [sys.executable, "-m", "hobbit_py.bench_worker", json.dumps(worker)]
    if cap is not None and variant.capped:
        argv = cap.wrap(argv)
    env = dict(os.environ)
    if variant.stock:
        env["LLAMA_CPP_LIB_PATH"] = str(stock_lib_dir())
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        where = f" at budget {budget_bytes / 2**20:.0f} MiB" if budget_bytes else ""
        raise HobbitError(f"{variant.name} run{where} failed (exit {proc.returncode}): {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_read_bandwidth(path: Path, threads: int = 4, chunk: int = 8 << 20, total: int = 1 << 30) -> float:
    """Bytes/s of reading `path` as HOBBIT's loader does: O_DIRECT (buffered where the file
    system refuses it), `threads` reads of `chunk` bytes in flight, from a dropped page cache."""
    import mmap  # noqa: PLC0415
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    drop_page_cache()
    block = 4096
    chunk = max(block, min(chunk, path.stat().st_size // threads // block * block))
    size = max(chunk, min(path.stat().st_size, total) // chunk * chunk)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECT", 0))
    except OSError:
        fd = os.open(path, os.O_RDONLY)
    bufs = [mmap.mmap(-1, chunk) for _ in range(threads)]  # page-aligned

    def read(i: int) -> int:
        done = 0
        for off in range(i * chunk, size, threads * chunk):
            done += max(os.preadv(fd, [bufs[i]], off), 0)
        return done

    try:
        start = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            nbytes = sum(pool.map(read, range(threads)))
        if nbytes == 0:
            raise HobbitError(f"cannot measure reads of {path}: nothing could be read")
        return nbytes / (time.perf_counter() - start)
    finally:
        os.close(fd)


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


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(float(r.get(key, 0.0)) for r in runs)


def _row(variant: str, budget: str | None, budget_bytes: int | None, memory: int,
         runs: list[dict], reference_tokens: list[int]) -> Row:
    decode = [float(r["decode_tokens_per_s"]) for r in runs]
    same = sum(a == b for a, b in zip(runs[0]["tokens"], reference_tokens))
    row = Row(variant=variant, budget=budget, budget_bytes=budget_bytes, memory_bytes=memory,
              decode_tok_s=statistics.median(decode), decode_min=min(decode), decode_max=max(decode),
              prefill_tok_s=_median(runs, "prefill_tokens_per_s"),
              peak_rss_bytes=_median(runs, "peak_rss_bytes"), major_faults=_median(runs, "major_faults"),
              same_tokens_as_resident=same / max(len(reference_tokens), 1))
    if "routes_total" in runs[-1]:
        last = runs[-1]
        served = max(int(last["routes_total"]), 1)
        row.cache = {
            "bytes_loaded": _median(runs, "bytes_loaded"),
            "hit_rate": (int(last["hits_hi"]) + int(last["hits_lo"])) / served,
            "lo_share": (int(last["hits_lo"]) + int(last["loads_lo"])) / served,
            "skipped_share": int(last["skipped"]) / served,
            "load_stall_ms": _median(runs, "load_stall_ms"),
            "prefetch_issued": int(last["prefetch_issued"]),
            "prefetch_used": int(last["prefetch_used"]),
            **{f"accuracy_d{d}": int(last[f"predicted_right_d{d}"]) / int(last[f"predicted_d{d}"])
               for d in (1, 2, 3) if int(last[f"predicted_d{d}"]) > 0},
        }
        decoded = max(int(last["tokens_generated"]) - 1, 1)
        row.decode_bytes_per_token = _median(runs, "decode_bytes_loaded") / decoded
    return row


def run_bench(spec: BenchSpec, progress: Progress = print) -> BenchResult:
    """Measure every variant at every budget `spec.runs` times, interleaved, and its quality."""
    from hobbit_py.evaluate import reference, score  # noqa: PLC0415
    from hobbit_py.gguf_check import inspect_model  # noqa: PLC0415

    summary = inspect_model(spec.model)
    inspect_model(spec.plain_hi)
    for path in spec.static:
        inspect_model(path)
    budgets = {b: parse_budget(b, summary.hi_expert_bytes) for b in spec.budgets}
    resident = [Variant("B-resident", stock=True, capped=False, policy=None, use_mmap=False)]
    resident += [Variant(f"B-static {p.stem}", stock=True, capped=False, policy=None,
                         use_mmap=False, file=p) for p in spec.static]
    no_prefetch = (("prefetch_depth", 0),)
    capped = [Variant("B-mmap", stock=True, capped=True, policy=None),
              Variant("B-lru", stock=False, capped=True, policy="hi-only", overrides=no_prefetch),
              Variant("B-lru + prefetch", stock=False, capped=True, policy="hi-only"),
              Variant("HOBBIT no prefetch", stock=False, capped=True, policy=spec.policy.policy,
                      overrides=no_prefetch),
              Variant("HOBBIT", stock=False, capped=True, policy=spec.policy.policy)]
    if spec.ablations:
        capped += [Variant(f"eviction {rule}", stock=False, capped=True, policy=rule)
                   for rule in ("lru", "lfu", "fld", "least-stale") if rule != spec.policy.policy]
    progress("bench: measuring the read bandwidth of the model file")
    bandwidth = measure_read_bandwidth(spec.model, threads=spec.policy.io_threads)

    caps: dict[str, MemoryCap] = {}
    samples: dict[tuple[str, str | None], list[dict]] = {}
    dropped = True
    try:
        for i, (label, nbytes) in enumerate(budgets.items()):
            caps[label] = cap_memory(summary.non_expert_bytes + nbytes + CAP_OVERHEAD,
                                     name=f"hobbit-bench-{os.getpid()}-{i}")
            if not caps[label].capped:
                progress(f"bench: no memory cap on this machine, the offloading variants run "
                         f"uncapped ({caps[label].reason})")
        for run in range(spec.runs):
            plan = [(v, None) for v in resident] + [(v, b) for b in budgets for v in capped]
            for variant, label in plan:
                dropped = drop_page_cache() and dropped
                where = f" at {label}" if label else ""
                progress(f"run {run + 1}/{spec.runs}: {variant.name}{where}")
                samples.setdefault((variant.name, label), []).append(run_worker(
                    variant, spec, budgets.get(label) if label else None,
                    caps.get(label) if label else None))
    finally:
        for cap in caps.values():
            cap.close()

    reference_tokens = samples[("B-resident", None)][0]["tokens"]
    rows: list[Row] = []
    for variant in resident:
        memory = (variant.file or spec.plain_hi).stat().st_size
        rows.append(_row(variant.name, None, None, memory, samples[(variant.name, None)],
                         reference_tokens))
    for label, nbytes in budgets.items():
        for variant in capped:
            rows.append(_row(variant.name, label, nbytes, caps[label].limit_bytes,
                             samples[(variant.name, label)], reference_tokens))

    progress("quality: the all-hi reference")
    ref = reference(spec.plain_hi, Policy(expert_budget=None), spec.text, threads=spec.threads,
                    max_tokens=spec.eval_tokens)
    ref_ppl = None
    for row in rows:
        if row.variant in ("B-resident", "B-mmap"):
            continue  # the reference itself
        progress(f"quality: {row.variant}" + (f" at {row.budget}" if row.budget else ""))
        if row.budget is None:
            path, policy = next(v.file for v in resident if v.name == row.variant), Policy(expert_budget=None)
        else:
            variant = next(v for v in capped if v.name == row.variant)
            path, policy = spec.model, variant_policy(variant, spec, row.budget_bytes)
        q = score(ref, path, policy, threads=spec.threads)  # type: ignore[arg-type]
        row.perplexity, row.kl_mean, row.top1_agreement = q.perplexity, q.kl_mean, q.top1_agreement
        ref_ppl = q.reference_perplexity
    if ref_ppl is None:
        ref_ppl = score(ref, spec.plain_hi, Policy(expert_budget=None), threads=spec.threads).perplexity
    for row in rows:
        if row.variant in ("B-resident", "B-mmap"):
            row.perplexity, row.kl_mean, row.top1_agreement = ref_ppl, 0.0, 1.0
        if row.variant.startswith("B-static"):
            row.fits = {label: row.memory_bytes <= summary.non_expert_bytes + nbytes
                        for label, nbytes in budgets.items()}
    return BenchResult(command=spec.command, machine=machine_description(), model=str(spec.model),
                       date=time.strftime("%Y-%m-%d %H:%M", time.localtime()),
                       hi_expert_bytes=summary.hi_expert_bytes,
                       non_expert_bytes=summary.non_expert_bytes, runs=spec.runs,
                       n_predict=spec.n_predict, eval_tokens=spec.eval_tokens,
                       page_cache_dropped=dropped, read_bandwidth=bandwidth,
                       caps={label: cap.describe() for label, cap in caps.items()},
                       reference_perplexity=ref_ppl, rows=rows)


def _fmt(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def to_markdown(res: BenchResult, plot_name: str | None = None) -> str:
    """The report: one table per budget, resident rows repeated in each for comparison."""
    mib = 2**20
    lines = [
        f"## {Path(res.model).name} — {res.date}",
        "",
        f"- command: `{res.command}`",
        f"- machine: {res.machine}",
        f"- hi expert bytes {res.hi_expert_bytes / mib:.1f} MiB, non-expert {res.non_expert_bytes / mib:.1f} MiB; "
        f"page cache dropped before each run: {'yes' if res.page_cache_dropped else 'NO'}",
        f"- decode of {res.n_predict} tokens after the prompt, median of {res.runs} run(s) "
        f"(min-max), variants interleaved; quality on {res.eval_tokens} held-out tokens against "
        f"the all-hi model (perplexity {res.reference_perplexity:.3f})",
    ]
    if plot_name:
        lines += ["", f"![decode speed against KL divergence, every variant and budget]({plot_name})"]
    for label, cap in res.caps.items():
        base_lru = res.row("B-lru", label).decode_tok_s or float("nan")
        lines += [
            "", f"### expert budget {label} (memory cap {cap})", "",
            "| variant | memory MiB | decode tok/s | vs B-lru | prefill tok/s | MiB loaded | hit rate "
            "| lo share | skipped | perplexity | KL vs all-hi | top-1 agreement | peak RSS MiB |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        rows = [r for r in res.rows if r.budget is None] + [r for r in res.rows if r.budget == label]
        for r in rows:
            name = r.variant
            if r.fits:
                name += " (fits)" if r.fits[label] else " (does not fit)"
            c = r.cache
            lines.append(
                f"| {name} | {r.memory_bytes / mib:.0f} | {r.decode_tok_s:.2f} ({r.decode_min:.2f}-"
                f"{r.decode_max:.2f}) | {r.decode_tok_s / base_lru:.2f}x | {r.prefill_tok_s:.1f} "
                f"| {_fmt(c.get('bytes_loaded', None) and c['bytes_loaded'] / mib, '.0f')} "
                f"| {_fmt(c.get('hit_rate'), '.2f')} | {_fmt(c.get('lo_share'), '.2f')} "
                f"| {_fmt(c.get('skipped_share'), '.3f')} | {_fmt(r.perplexity, '.3f')} "
                f"| {_fmt(r.kl_mean, '.4f')} | {_fmt(r.top1_agreement, '.3f')} "
                f"| {r.peak_rss_bytes / mib:.0f} |")
        lines += time_table(res, label)
    return "\n".join(lines) + "\n"


def time_table(res: BenchResult, label: str) -> list[str]:
    """Where a decoded token's time goes, per cache variant: the I/O bound (expert bytes read
    per token over the measured read bandwidth), compute (a token's time all in RAM,
    B-resident), and how far the measured time is above the larger of the two."""
    mib = 2**20
    compute_ms = 1000.0 / res.row("B-resident", None).decode_tok_s
    lines = [
        "", f"Decode time per token at {label}: read bandwidth {res.read_bandwidth / mib:.0f} MiB/s "
        f"(O_DIRECT, the loader's reads in flight), compute {compute_ms:.1f} ms (B-resident).", "",
        "| variant | ms/token | MiB read/token | I/O bound ms | measured / max(I/O, compute) "
        "| prefetches used/issued | prediction accuracy d1/d2/d3 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res.rows:
        if r.budget != label or r.decode_bytes_per_token is None:
            continue
        ms = 1000.0 / r.decode_tok_s
        io_ms = 1000.0 * r.decode_bytes_per_token / res.read_bandwidth
        c = r.cache
        accuracy = "/".join(_fmt(c.get(f"accuracy_d{d}"), ".2f") for d in (1, 2, 3))
        lines.append(f"| {r.variant} | {ms:.1f} | {r.decode_bytes_per_token / mib:.1f} | {io_ms:.1f} "
                     f"| {ms / max(io_ms, compute_ms):.2f}x | {int(c.get('prefetch_used', 0))}/"
                     f"{int(c.get('prefetch_issued', 0))} | {accuracy} |")
    return lines
