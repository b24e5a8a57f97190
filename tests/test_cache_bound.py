"""The cache-bound replays: LRU against a plain list model, Belady against an exhaustive search."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

from hobbit_py.cache_bound import (Step, decode_steps, miss_mib, replay_belady, replay_lru, replay_static,
                                   reuse_next_token)
from hobbit_py.trace import RouteEvent, write_trace


def one_route_steps(sequence: list[tuple[int, int]]) -> list[Step]:
    return [Step(layer, ((expert, 0.6),)) for layer, expert in sequence]


def fewest_misses(sequence: list[tuple[int, int]], slots: int, bypass: bool) -> int:
    """The least misses any eviction choice (and, with bypass, any choice not to cache) gives."""
    @lru_cache(maxsize=None)
    def best(i: int, cache: frozenset[tuple[int, int]]) -> int:
        if i == len(sequence):
            return 0
        key = sequence[i]
        if key in cache:
            return best(i + 1, cache)
        options = []
        if len(cache) < slots:
            options.append(cache | {key})
        else:
            options += [(cache - {victim}) | {key} for victim in cache]
        if bypass or not options:
            options.append(cache)
        return 1 + min(best(i + 1, c) for c in options)
    return best(0, frozenset())


def lru_by_list(sequence: list[tuple[int, int]], slots: int) -> int:
    order: list[tuple[int, int]] = []
    hits = 0
    for key in sequence:
        if key in order:
            hits += 1
            order.remove(key)
        elif len(order) == slots:
            order.pop(0)
        order.append(key)
    return hits


@pytest.mark.parametrize("seed", range(12))
def test_belady_is_the_optimum_and_lru_matches_a_list(seed: int) -> None:
    rng = random.Random(seed)
    keys = [(rng.randrange(2), rng.randrange(3)) for _ in range(5)]
    sequence = [rng.choice(keys) for _ in range(14)]
    steps = one_route_steps(sequence)
    for slots in (1, 2, 3):
        assert replay_lru(steps, slots).hits == lru_by_list(sequence, slots)
        for bypass in (False, True):
            replay = replay_belady(steps, slots, bypass)
            assert len(replay.miss_shares) == fewest_misses(sequence, slots, bypass), (sequence, slots, bypass)
            assert replay.hits + len(replay.miss_shares) == len(sequence)


def test_a_loop_one_longer_than_the_cache() -> None:
    # A B C A B C ... with two slots: LRU never hits; after the first two, Belady misses one
    # access in two (it keeps the one needed next)
    sequence = [(0, e) for e in (0, 1, 2) * 6]
    steps = one_route_steps(sequence)
    assert replay_lru(steps, 2).hits == 0
    assert replay_belady(steps, 2, bypass=True).hits == 10 == len(sequence) - fewest_misses(sequence, 2, True)
    assert replay_static(steps, 2).hits == 12  # two of the three pinned: 2/3 of the routes


def test_the_routes_of_a_layer_are_not_evicted_for_each_other() -> None:
    # one slot, a layer with two routes: the second route may not evict the first one's expert
    steps = [Step(0, ((1, 0.7), (2, 0.3))), Step(0, ((1, 0.8), (3, 0.2)))]
    replay = replay_lru(steps, 1)
    assert replay.hits == 1 and replay.miss_shares == (0.7, 0.3, 0.2)
    assert miss_mib(replay, hi_mib=20.0, lo_mib=10.0, hi_threshold=0.5) == 40.0


def test_reuse_at_the_next_token() -> None:
    # layer 0: {1, 2} then {1, 3} then {4, 5}: 1 of 2, then 0 of 2 routed again; layer 1 always the same
    steps = [Step(0, ((1, 0.5), (2, 0.5))), Step(1, ((0, 0.5), (7, 0.5))),
             Step(0, ((1, 0.5), (3, 0.5))), Step(1, ((0, 0.5), (7, 0.5))),
             Step(0, ((4, 0.5), (5, 0.5))), Step(1, ((7, 0.5), (0, 0.5)))]
    assert reuse_next_token(steps) == (1 + 0 + 2 + 2) / 8


def test_decode_steps_order_and_phase() -> None:
    events = [RouteEvent(5, 1, 2, 0.4, "hit_hi", "decode"), RouteEvent(5, 0, 3, 0.6, "load_hi", "decode"),
              RouteEvent(0, 0, 1, 1.0, "load_hi", "prefill"), RouteEvent(6, 0, 4, 1.0, "cpu_hi", "decode")]
    assert decode_steps(events) == [Step(0, ((3, 0.6),)), Step(1, ((2, 0.4),)), Step(0, ((4, 1.0),))]


def test_cli_prints_both_cache_sizes(tmp_path: Path) -> None:
    events = [RouteEvent(t, layer, (t + layer) % 4, 0.6, "load_hi", "decode")
              for t in range(8) for layer in range(2)]
    path = tmp_path / "t.jsonl"
    write_trace(path, events, {"n_layer": 2, "n_expert": 4, "n_expert_used": 1})
    proc = subprocess.run([sys.executable, "-m", "hobbit_py.cache_bound", str(path), "--budget", "0.25",
                           "--hi-mib", "2", "--lo-mib", "1"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| 2 |") or line.startswith("| 4 |")]
    assert len(rows) == 8  # four caches at 2 entries (hi) and at 4 (lo)
    proc = subprocess.run([sys.executable, "-m", "hobbit_py.cache_bound", str(tmp_path / "none.jsonl")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 1 and "not found" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("unbuffered", ["", "1"])
def test_cli_ends_quietly_when_its_reader_goes_away(tmp_path: Path, unbuffered: str) -> None:
    events = [RouteEvent(t, layer, (t*3 + layer) % 8, 0.6, "load_hi", "decode")
              for t in range(64) for layer in range(4)]
    path = tmp_path / "t.jsonl"
    write_trace(path, events, {"n_layer": 4, "n_expert": 8, "n_expert_used": 1})
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = unbuffered
    proc = subprocess.Popen([sys.executable, "-m", "hobbit_py.cache_bound", str(path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the tool prints a line (as `| head -0`)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1 and err == "", err
