"""Asynchronous loads, prefetch and the eviction policies on the real inference path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hobbit_py.fixtures import FixtureShape, write_fixture
from hobbit_py.model import Model
from hobbit_py.policy import POLICY_NAMES, Policy
from tests.test_cache import min_budget
from tests.test_equivalence import stock_tokens

PROMPT = "The cache holds the experts that the router picks most often, and"
N_TOKENS = 24
FORCE_HI = dict(hi_threshold=0.0, skip_threshold=0.0, upgrade_threshold=0.0)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("prefetch")
    # six MoE layers: prefetches three layers ahead have layers to take room from
    shape = FixtureShape(n_layer=6)
    return {"mixed": write_fixture(d / "mixed.gguf", "mixtral", shape, expert_types=("q8_0", "q4_0")),
            "hi": write_fixture(d / "hi.gguf", "mixtral", shape, expert_types=("q8_0",))}


def run(path: Path, policy: Policy, n: int = N_TOKENS, prompt: str = PROMPT) -> tuple[list[int], np.ndarray, dict]:
    with Model(path, policy=policy, n_ctx=1024, n_threads=2, logits_all=True) as model:
        tokens = model.tokenize_text(prompt)
        model.eval(tokens)
        logits = np.array(model.scores[: len(tokens)], dtype=np.float32)
        return model.generate_text(prompt, max_tokens=n).tokens, logits, model.hobbit_stats()


@pytest.mark.parametrize("depth", [0, 3])
@pytest.mark.parametrize("name", POLICY_NAMES)
def test_every_policy_with_and_without_prefetch_equals_stock(files: dict[str, Path], tmp_path: Path,
                                                            name: str, depth: int) -> None:
    """A budget that holds every hi expert and thresholds that force hi: stock llama.cpp's
    tokens and logits on the plain hi file, whatever the eviction rule and prefetch."""
    tokens, logits, stats = run(files["mixed"], Policy(expert_budget="100%", policy=name, prefetch_depth=depth,
                                                       **FORCE_HI))
    stock_logits = tmp_path / "stock.npy"
    assert tokens == stock_tokens(files["hi"], PROMPT, N_TOKENS, stock_logits)
    np.testing.assert_array_equal(logits, np.load(stock_logits))
    assert stats["loads_lo"] == 0 and stats["loads_hi"] > 0
    if depth == 0:
        assert stats["prefetch_issued"] == 0
    else:
        assert stats["prefetch_issued"] > 0


def test_stress_smallest_budget_deep_prefetch_many_io_threads(files: dict[str, Path]) -> None:
    """The smallest legal budget, prefetch 3 layers ahead, 8 I/O threads, a few hundred tokens:
    it finishes, every copy a graph read was whole (the tokens and logits equal a budget that
    holds everything: an overwritten or half-read slot would change them), and the counters
    add up."""
    n = 300
    small = Policy(expert_budget=min_budget(files["mixed"], hi_only=False), prefetch_depth=3, prefetch_width=2,
                   io_threads=8, **FORCE_HI)
    tokens, logits, s = run(files["mixed"], small, n=n)
    ref_tokens, ref_logits, _ = run(files["mixed"], Policy(expert_budget="100%", prefetch_depth=0, **FORCE_HI), n=n)
    assert len(tokens) == len(ref_tokens) > 100
    assert tokens == ref_tokens
    np.testing.assert_array_equal(logits, ref_logits)
    assert s["routes_total"] == s["hits_hi"] + s["hits_lo"] + s["loads_hi"] + s["loads_lo"] + s["skipped"]
    assert s["skipped"] == 0
    assert s["prefetch_used"] <= s["prefetch_issued"]
    assert s["prefetch_used"] + s["prefetch_wasted"] <= s["prefetch_issued"]
    assert s["bytes_prefetched"] <= s["bytes_loaded"]
    assert s["io_threads"] == 8
    assert s["expert_cache_peak_bytes"] <= s["expert_cache_capacity_bytes"]
    assert s["prefetch_issued"] > 0 and s["n_waves"] > s["n_calls"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Our trained model (real routing, unlike the random fixtures) as q8_0 + q4_k."""
    from hobbit_convert.convert import convert

    root = Path(__file__).resolve().parent.parent
    return convert(str(root / "models" / "hobbit-mixtral-tiny"), "q8_0,q4_k",
                   tmp_path_factory.mktemp("trained") / "tiny.gguf").output


def test_prefetch_predicts_and_is_used(trained: Path) -> None:
    """The next layers' routers on this layer's input predict most of their routes (depth 1
    best), and used prefetches turn misses into hits."""
    prompt = "The documentation explains how the server stores each table on disk, and"
    _, _, off = run(trained, Policy(expert_budget="30%", prefetch_depth=0), n=64, prompt=prompt)
    _, _, on = run(trained, Policy(expert_budget="30%", prefetch_depth=3), n=64, prompt=prompt)
    assert off["prefetch_issued"] == 0 and off["predicted_d1"] == 0
    assert on["prefetch_issued"] > 0 and on["prefetch_used"] > 0
    accuracy = [on[f"predicted_right_d{d}"] / on[f"predicted_d{d}"] for d in (1, 2, 3)]
    assert accuracy[0] > 0.7, accuracy
    assert accuracy[0] >= accuracy[1] >= accuracy[2] - 0.05, accuracy
    hits = {k: (s["hits_hi"] + s["hits_lo"]) / s["routes_total"] for k, s in (("off", off), ("on", on))}
    assert hits["on"] > hits["off"] + 0.1, hits


def test_a_depth_change_rebuilds_the_decode_graph(trained: Path) -> None:
    """At depth 0 the graph applies no router to the next layers' inputs; once the depth is
    set to 3, the next one-token decodes predict and prefetch (a graph built without
    predictions is not reused), and set back to 0 they stop."""
    from hobbit_py import capi

    policy = Policy(expert_budget="30%", prefetch_depth=0)
    with Model(trained, policy=policy, n_ctx=512, n_threads=2) as model:
        tokens = model.tokenize_text("The documentation explains how the server stores each table on disk")
        model.eval(tokens[:4])

        def decode_one_by_one(n: int) -> dict:
            for t in tokens[4:4 + n]:
                model.eval([t])  # a ubatch of one token: the decode graph, reused while it may be
            stats = model.hobbit_stats()
            model.reset_hobbit_stats()
            return stats

        off = decode_one_by_one(4)
        assert off["prefetch_issued"] == 0 and off["predicted_d1"] == 0, off
        capi.set_policy(model.model, **{**policy.engine_policy(), "prefetch_depth": 3})
        on = decode_one_by_one(4)
        # each of the 4 decodes predicts layers 1..4 at depth 1: 2 routes each
        assert on["predicted_d1"] == 4 * 4 * 2, on
        assert on["prefetch_issued"] > 0 and on["prefetch_depth"] == 3, on
        capi.set_policy(model.model, **policy.engine_policy())
        off_again = decode_one_by_one(4)
        assert off_again["prefetch_issued"] == 0 and off_again["predicted_d1"] == 0, off_again
        assert off_again["prefetch_depth"] == 0, off_again


@pytest.mark.parametrize("name", ["lru", "lfu", "fld", "least-stale", "hobbit"])
def test_eviction_rules_differ_and_keep_the_books(files: dict[str, Path], name: str) -> None:
    _, _, s = run(files["mixed"], Policy(expert_budget="25%", policy=name, prefetch_depth=0), n=48)
    assert s["routes_total"] == s["hits_hi"] + s["hits_lo"] + s["loads_hi"] + s["loads_lo"] + s["skipped"]
    assert 0 < s["hits_hi"] + s["hits_lo"] < s["routes_total"]
    assert s["expert_cache_peak_bytes"] <= s["expert_cache_capacity_bytes"]


def test_eviction_rules_are_not_all_the_same(files: dict[str, Path]) -> None:
    """The rules decide differently: not every one evicts what LRU evicts."""
    loads = {}
    for name in ("lru", "lfu", "fld", "least-stale", "hobbit"):
        _, _, s = run(files["mixed"], Policy(expert_budget="25%", policy=name, prefetch_depth=0), n=48)
        loads[name] = (s["loads_hi"], s["loads_lo"], s["bytes_loaded"])
    assert len(set(loads.values())) >= 3, loads


def test_bad_prefetch_and_io_settings_are_refused(files: dict[str, Path]) -> None:
    from hobbit_py._lib import HobbitError

    for bad in (dict(prefetch_depth=4), dict(prefetch_depth=-1), dict(prefetch_width=-1), dict(io_threads=0),
                dict(w_distance=-1.0)):
        with pytest.raises(HobbitError):
            Model(files["mixed"], policy=Policy(expert_budget="50%", **bad), n_ctx=64)


def test_trace_records_every_route_as_the_counters_do(files: dict[str, Path]) -> None:
    from collections import Counter

    from hobbit_py import capi

    with Model(files["mixed"], policy=Policy(expert_budget="25%", skip_threshold=0.1), n_ctx=512,
               n_threads=2) as model:
        capi.trace_enable(model.model, True)
        model.reset_hobbit_stats()
        model.generate_text(PROMPT, max_tokens=16)
        events, dropped = capi.trace_read(model.model)
        capi.trace_enable(model.model, False)
        stats = model.hobbit_stats()
    assert dropped == 0
    assert len(events) == stats["routes_total"]
    counts = Counter(e["outcome"] for e in events)
    assert counts["hit_hi"] == stats["hits_hi"] and counts["hit_lo"] == stats["hits_lo"]
    assert counts["load_hi"] == stats["loads_hi"] and counts["load_lo"] == stats["loads_lo"]
    assert counts["skip"] == stats["skipped"] > 0
    # skips are misses whose share was under the threshold; every route of a token shares its weight
    assert all(e["share"] < 0.1 for e in events if e["outcome"] == "skip")
    # a prefetched copy is used for the first time once (by one or more routes of a ubatch)
    first_uses = {(e["ubatch"], e["layer"], e["expert"]) for e in events if e["prefetched"]}
    assert len(first_uses) == stats["prefetch_used"] > 0
    assert {e["layer"] for e in events} == set(range(6))
    assert stats["n_calls"] == len({(e["ubatch"], e["layer"]) for e in events})
    # one walk through the layers per ubatch: the prompt, then one per generated token but the last
    assert len({e["ubatch"] for e in events}) == 1 + 16 - 1


def test_run_trace_file_matches_the_counters(files: dict[str, Path], tmp_path: Path) -> None:
    import json
    from collections import Counter

    from hobbit_py.trace import read_trace
    from tests.conftest import run_hobbit

    trace, stats_path = tmp_path / "t.jsonl", tmp_path / "s.json"
    n = 12
    proc = run_hobbit("run", str(files["mixed"]), "-p", PROMPT, "-n", str(n), "-t", "2",
                      "--expert-budget", "25%", "--trace", str(trace), "--stats-json", str(stats_path))
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(stats_path.read_text())
    t = read_trace(trace)
    assert t.header["n_layer"] == 6 and t.header["dropped"] == 0
    assert len(t.events) == stats["routes_total"]
    outcomes = Counter(e.outcome for e in t.events)
    assert outcomes["hit_hi"] + outcomes["prefetch_hi"] == stats["hits_hi"]
    assert outcomes["hit_lo"] + outcomes["prefetch_lo"] == stats["hits_lo"]
    assert outcomes["load_hi"] == stats["loads_hi"] and outcomes["load_lo"] == stats["loads_lo"]
    # positions: the prompt, then each generated token but the last (never evaluated)
    positions = {e.token for e in t.events}
    assert positions == set(range(stats["prompt_tokens"] + n - 1))
    assert {e.phase for e in t.events if e.token < stats["prompt_tokens"]} == {"prefill"}
    # every decoded position has every layer's k routes
    decode = Counter(e.token for e in t.events if e.phase == "decode")
    assert set(decode.values()) == {6 * 2}


def test_run_trace_needs_the_cache(files: dict[str, Path], tmp_path: Path) -> None:
    from tests.conftest import assert_one_line_error, run_hobbit

    proc = run_hobbit("run", str(files["mixed"]), "-p", PROMPT, "-n", "2", "--expert-budget", "off",
                      "--trace", str(tmp_path / "t.jsonl"))
    assert_one_line_error(proc, "--trace")
    assert not (tmp_path / "t.jsonl").exists()
