"""What an expert cache of a given size could at best have served, from a route trace.

Replays the decode routes of a trace (`hobbit run --trace`) through caches of whole experts, all
of one size, with eviction by recency (LRU, what B-lru-gpu does), by the offline optimum
(Belady: the entry used again furthest ahead goes, which no online policy beats on hits) and
Belady with bypass (a miss whose next use is further ahead than every cached one's is served
without being cached, as a miss computed on the CPU is), and with the best static placement
(the most used experts pinned, no eviction). The bytes a token takes from the host are its
misses, each at the level the policy loads it at (hi from a share of `hi_threshold` on, lo
below, as `llama_hobbit_miss_level`).

    python -m hobbit_py.cache_bound TRACE [--budget 0.25] [--hi-mib 25.5] [--lo-mib 13.5]

Two cache sizes are replayed: as many experts as the budget holds at hi, and as many as it holds
at lo. No cache of the budget holds more entries than the second, so Belady with bypass over it
bounds what any mix of hi and lo copies can hit. Belady keeps the number of misses least, not
their bytes: its MiB a token is near the least a cache of that size could take, not a strict floor.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from hobbit_py._lib import HobbitError
from hobbit_py.trace import RouteEvent, read_trace

Key = tuple[int, int]  # (layer, expert)


@dataclass(frozen=True)
class Step:
    """One layer evaluation of one decoded token: its routed experts and their shares."""

    layer: int
    routes: tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class Replay:
    """Hits and misses of one cache over the steps; miss_shares for the miss bytes."""

    policy: str
    hits: int
    routes: int
    miss_shares: tuple[float, ...]

    @property
    def hit_rate(self) -> float:
        return self.hits/self.routes if self.routes else 0.0


def decode_steps(events: list[RouteEvent]) -> list[Step]:
    """The decode routes in evaluation order (token, then layer)."""
    by_step: dict[tuple[int, int], list[tuple[int, float]]] = {}
    for e in events:
        if e.phase == "decode":
            by_step.setdefault((e.token, e.layer), []).append((e.expert, e.weight))
    return [Step(layer, tuple(by_step[(token, layer)])) for token, layer in sorted(by_step)]


def _n_routes(steps: list[Step]) -> int:
    return sum(len(s.routes) for s in steps)


def replay_lru(steps: list[Step], slots: int) -> Replay:
    cache: OrderedDict[Key, None] = OrderedDict()
    hits, misses = 0, []
    for s in steps:
        current = {(s.layer, e) for e, _ in s.routes}
        for e, share in s.routes:
            key = (s.layer, e)
            if key in cache:
                hits += 1
                cache.move_to_end(key)
                continue
            misses.append(share)
            victims = [k for k in cache if k not in current]
            if len(cache) >= slots and victims:
                del cache[victims[0]]
            if len(cache) < slots:
                cache[key] = None
    return Replay("lru", hits, _n_routes(steps), tuple(misses))


def _next_uses(steps: list[Step]) -> list[dict[Key, int]]:
    """For each step, the step at which each of its experts is used next (len(steps): never)."""
    nxt: dict[Key, int] = {}
    out: list[dict[Key, int]] = [{} for _ in steps]
    for i in range(len(steps) - 1, -1, -1):
        s = steps[i]
        for e, _ in s.routes:
            out[i][(s.layer, e)] = nxt.get((s.layer, e), len(steps))
        for e, _ in s.routes:
            nxt[(s.layer, e)] = i
    return out


def replay_belady(steps: list[Step], slots: int, bypass: bool) -> Replay:
    nexts = _next_uses(steps)
    cache: dict[Key, int] = {}  # key -> step of its next use
    hits, misses = 0, []
    for i, s in enumerate(steps):
        current = {(s.layer, e) for e, _ in s.routes}
        for e, share in s.routes:
            key = (s.layer, e)
            following = nexts[i][key]
            if key in cache:
                hits += 1
                cache[key] = following
                continue
            misses.append(share)
            if len(cache) < slots:
                cache[key] = following
                continue
            victims = [k for k in cache if k not in current]
            if not victims:
                continue
            furthest = max(victims, key=lambda k: cache[k])
            if bypass and cache[furthest] <= following:
                continue  # this one is needed later than any cached one: serve it uncached
            del cache[furthest]
            cache[key] = following
    name = "belady with bypass" if bypass else "belady"
    return Replay(name, hits, _n_routes(steps), tuple(misses))


def replay_static(steps: list[Step], slots: int) -> Replay:
    uses: dict[Key, int] = {}
    for s in steps:
        for e, _ in s.routes:
            uses[(s.layer, e)] = uses.get((s.layer, e), 0) + 1
    pinned = set(sorted(uses, key=lambda k: (-uses[k], k))[:slots])
    hits, misses = 0, []
    for s in steps:
        for e, share in s.routes:
            if (s.layer, e) in pinned:
                hits += 1
            else:
                misses.append(share)
    return Replay("static (most used pinned)", hits, _n_routes(steps), tuple(misses))


def reuse_next_token(steps: list[Step]) -> float:
    """How often an expert routed at a token is routed again at the same layer of the next token."""
    by_layer: dict[int, list[set[int]]] = {}
    for s in steps:
        by_layer.setdefault(s.layer, []).append({e for e, _ in s.routes})
    again = total = 0
    for sets in by_layer.values():
        for now, following in zip(sets, sets[1:]):
            total += len(now)
            again += len(now & following)
    return again/total if total else 0.0


def miss_mib(replay: Replay, hi_mib: float, lo_mib: float, hi_threshold: float) -> float:
    """The MiB the misses take from the host tier at the policy's levels."""
    return sum(hi_mib if share >= hi_threshold else lo_mib for share in replay.miss_shares)


def report(steps: list[Step], n_tokens: int, slots: int, hi_mib: float, lo_mib: float,
           hi_threshold: float) -> list[str]:
    """Markdown rows, one per cache, for caches of `slots` entries."""
    rows = []
    for r in (replay_lru(steps, slots), replay_belady(steps, slots, False), replay_belady(steps, slots, True),
              replay_static(steps, slots)):
        rows.append(f"| {slots} | {r.policy} | {r.hit_rate:.3f} | {len(r.miss_shares)/n_tokens:.2f} | "
                    f"{miss_mib(r, hi_mib, lo_mib, hi_threshold)/n_tokens:.1f} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("trace", type=Path)
    ap.add_argument("--budget", type=float, default=0.25, help="cache size as a share of the hi experts' bytes")
    ap.add_argument("--hi-mib", type=float, default=25.5, help="one expert's MiB at hi (the benchmark model's q8_0)")
    ap.add_argument("--lo-mib", type=float, default=13.5, help="one expert's MiB at lo (q4_k)")
    ap.add_argument("--hi-threshold", type=float, default=0.5, help="share from which a miss is loaded at hi")
    args = ap.parse_args(argv)
    if not 0.0 < args.budget < 1.0 or not 0.0 < args.lo_mib <= args.hi_mib:
        print("cache_bound: need 0 < --budget < 1 and 0 < --lo-mib <= --hi-mib", file=sys.stderr)
        return 1
    try:
        trace = read_trace(args.trace)
    except HobbitError as exc:
        print(f"cache_bound: {exc}", file=sys.stderr)
        return 1
    steps = decode_steps(trace.events)
    if not steps:
        print(f"cache_bound: {args.trace} has no decode routes", file=sys.stderr)
        return 1
    n_tokens = len({e.token for e in trace.events if e.phase == "decode"})
    budget_mib = args.budget*trace.n_layer*trace.n_expert*args.hi_mib
    hi_slots, lo_slots = int(budget_mib/args.hi_mib + 1e-9), int(budget_mib/args.lo_mib + 1e-9)
    used = max((len(s.routes) for s in steps), default=0)
    print(f"{args.trace}: {n_tokens} decoded tokens, {trace.n_layer} layers x {trace.n_expert} experts; "
          f"a {budget_mib:.0f} MiB budget holds {hi_slots} experts at hi or {lo_slots} at lo. "
          f"MiB a token: each miss at the policy's level (hi from a share of {args.hi_threshold}). "
          f"An expert routed at a token is routed again at the next: {reuse_next_token(steps):.3f} "
          f"(by chance: {used/trace.n_expert:.3f})")
    print()
    print("| entries | cache | hit rate | misses / token | MiB / token |")
    print("|---|---|---|---|---|")
    for slots in sorted({hi_slots, lo_slots}):
        print("\n".join(report(steps, n_tokens, slots, args.hi_mib, args.lo_mib, args.hi_threshold)))
    return 0


def run() -> int:
    """main(), ending quietly when the reader of the output goes away (`... | head`)."""
    try:
        status = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # what is left to print goes nowhere, so that the exit's flush does not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return status


if __name__ == "__main__":
    sys.exit(run())
