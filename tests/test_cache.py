"""The expert cache on the real inference path: equivalence, counters, budgets, errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from hobbit_py._lib import HobbitError
from hobbit_py.fixtures import write_fixture
from hobbit_py.model import Model
from hobbit_py.policy import Policy
from tests.conftest import assert_one_line_error, run_hobbit
from tests.pagecache import drop_from_page_cache, resident_fraction
from tests.test_equivalence import stock_tokens

PROMPT = "The cache holds the experts that the router picks most often, and"
N_TOKENS = 24
HI, LO = "q8_0", "q4_0"

FORCE_HI = dict(hi_threshold=0.0, skip_threshold=0.0, upgrade_threshold=0.0)
FORCE_LO = dict(hi_threshold=2.0, skip_threshold=0.0, upgrade_threshold=2.0)


@pytest.fixture(scope="module", params=["mixtral", "qwen3moe"])
def arch(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def files(arch: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A two-level (q8_0, q4_0) model and the plain q8_0 and q4_0 models of the same weights."""
    d = tmp_path_factory.mktemp(f"cache-{arch}")
    out = {
        "mixed": write_fixture(d / "mixed.gguf", arch, expert_types=(HI, LO)),
        "hi": write_fixture(d / "hi.gguf", arch, expert_types=(HI,)),
        "lo": write_fixture(d / "lo.gguf", arch, expert_types=(LO,)),
    }
    return out


def ours(path: Path, policy: Policy, tmp_path: Path) -> tuple[list[int], np.ndarray, dict]:
    with Model(path, policy=policy, n_ctx=512, n_threads=2, logits_all=True) as model:
        assert model.hobbit_active == (policy.expert_budget is not None)
        tokens = model.tokenize_text(PROMPT)
        model.eval(tokens)
        logits = np.array(model.scores[: len(tokens)], dtype=np.float32)
        generated = model.generate_text(PROMPT, max_tokens=N_TOKENS).tokens
        return generated, logits, model.hobbit_stats()


@pytest.mark.parametrize("level", ["hi", "lo"])
def test_forced_level_with_full_budget_equals_stock_plain_file(
        files: dict[str, Path], level: str, tmp_path: Path) -> None:
    force = FORCE_HI if level == "hi" else FORCE_LO
    policy = Policy(expert_budget="100%", policy="hobbit", **force)
    tokens, logits, stats = ours(files["mixed"], policy, tmp_path)

    stock_logits_path = tmp_path / "stock.npy"
    reference = stock_tokens(files[level], PROMPT, N_TOKENS, stock_logits_path)
    assert tokens == reference
    np.testing.assert_array_equal(logits, np.load(stock_logits_path))
    loads = stats["loads_hi"] if level == "hi" else stats["loads_lo"]
    assert loads > 0
    assert (stats["loads_lo"] if level == "hi" else stats["loads_hi"]) == 0


def test_hi_only_cache_equals_stock(files: dict[str, Path], tmp_path: Path) -> None:
    tokens, logits, stats = ours(files["mixed"], Policy(expert_budget="100%", policy="hi-only"),
                                 tmp_path)
    assert tokens == stock_tokens(files["hi"], PROMPT, N_TOKENS)
    assert stats["loads_lo"] == 0 and stats["expert_slots_lo"] == 0


def test_full_budget_holds_every_hi_expert(files: dict[str, Path], tmp_path: Path) -> None:
    """100% is the bytes of the hi experts, and it holds every one of them at hi (slots of a hi
    expert's size, not spans of lo units, whose rounding would leave a few out): nothing is
    loaded at lo or twice, and the default policy generates what stock llama.cpp does."""
    import gguf

    n_experts = sum(int(t.shape[-1]) for t in gguf.GGUFReader(files["mixed"]).tensors
                    if re.fullmatch(r"blk\.\d+\.ffn_up_exps\.weight", t.name))
    assert n_experts > 0
    tokens, _, stats = ours(files["mixed"], Policy(expert_budget="100%"), tmp_path)
    assert stats["expert_slots_hi"] >= n_experts
    assert stats["loads_lo"] == 0
    assert 0 < stats["loads_hi"] <= n_experts
    assert tokens == stock_tokens(files["hi"], PROMPT, N_TOKENS)


def test_small_budget_counters_are_consistent(files: dict[str, Path], tmp_path: Path) -> None:
    policy = Policy(expert_budget="20%", policy="hobbit", hi_threshold=0.6, skip_threshold=0.1)
    tokens, _, stats = ours(files["mixed"], policy, tmp_path)
    assert len(tokens) == N_TOKENS
    assert stats["routes_total"] > 0
    assert stats["routes_total"] == (stats["hits_hi"] + stats["hits_lo"] + stats["loads_hi"]
                                     + stats["loads_lo"] + stats["skipped"])
    assert stats["loads_hi"] > 0 and stats["loads_lo"] > 0 and stats["skipped"] > 0
    assert 0 < stats["expert_cache_peak_bytes"] <= stats["expert_budget_bytes"]
    assert stats["expert_cache_capacity_bytes"] <= stats["expert_budget_bytes"]


def test_bytes_loaded_is_the_sum_of_loaded_expert_sizes(files: dict[str, Path],
                                                         tmp_path: Path) -> None:
    import gguf

    reader = gguf.GGUFReader(files["mixed"])
    size = {HI: 0, LO: 0}
    for t in reader.tensors:
        if t.name.startswith("blk.0.ffn_") and "_exps" in t.name:
            size[LO if f".{LO}." in t.name else HI] += int(t.n_bytes) // int(t.shape[-1])
    policy = Policy(expert_budget="20%", policy="hobbit", hi_threshold=0.6)
    _, _, stats = ours(files["mixed"], policy, tmp_path)
    expected = stats["loads_hi"] * size[HI] + stats["loads_lo"] * size[LO]
    # upgrades evict the lo copy but its load was counted once: bytes still match the loads,
    # and what prefetches read (served later as hits) is counted apart
    assert stats["bytes_loaded"] - stats["bytes_prefetched"] == expected
    assert stats["bytes_prefetched"] <= stats["prefetch_issued"] * size[HI]


def expert_bytes(path: Path) -> dict[str, int]:
    """Bytes of one expert (gate+up+down of one layer) per level, and all hi experts, from the GGUF."""
    import gguf

    reader = gguf.GGUFReader(path)
    size = {HI: 0, LO: 0, "all_hi": 0}
    for t in reader.tensors:
        if "_exps" not in t.name:
            continue
        level = LO if f".{LO}." in t.name else HI
        if t.name.startswith("blk.0.ffn_"):
            size[level] += int(t.n_bytes) // int(t.shape[-1])
        if level == HI:
            size["all_hi"] += int(t.n_bytes)
    return size


def test_cli_reports_expert_stats(files: dict[str, Path], tmp_path: Path) -> None:
    n_predict = 8
    stats_path = tmp_path / "s.json"
    proc = run_hobbit("run", str(files["mixed"]), "-p", PROMPT, "-n", str(n_predict), "-t", "2",
                      "--expert-budget", "30%", "--hi-threshold", "0.5",
                      "--skip-threshold", "0.05", "--policy", "lru",
                      "--stats-json", str(stats_path))
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(stats_path.read_text())
    assert stats["policy"] == "lru"
    assert stats["tokens_generated"] == n_predict

    # every (token, selected expert) pair of every MoE layer evaluation is one route. The
    # prompt is one batch; in it the last layer runs only on the token whose logits are
    # read (llama.cpp's out_ids), and the last generated token is never evaluated.
    with Model(files["mixed"], n_ctx=256, n_threads=2) as model:
        n_prompt = len(model.tokenize_text(PROMPT))
        n_layer, k = model.summary.n_layer, model.summary.n_expert_used
    assert stats["prompt_tokens"] == n_prompt
    assert stats["routes_total"] == k * ((n_layer - 1) * n_prompt + 1 + n_layer * (n_predict - 1))
    outcomes = ("hits_hi", "hits_lo", "loads_hi", "loads_lo", "skipped")
    assert sum(stats[o] for o in outcomes) == stats["routes_total"]
    assert all(stats[o] > 0 for o in ("loads_hi", "loads_lo", "skipped"))

    size = expert_bytes(files["mixed"])
    assert stats["expert_budget_bytes"] == int(size["all_hi"] * 0.30)
    demand = stats["bytes_loaded"] - stats["bytes_prefetched"]
    assert demand == stats["loads_hi"] * size[HI] + stats["loads_lo"] * size[LO]
    assert 0 < stats["expert_cache_peak_bytes"] <= stats["expert_cache_capacity_bytes"]
    assert stats["expert_cache_capacity_bytes"] <= stats["expert_budget_bytes"]
    assert stats["peak_rss_bytes"] > 0

    # the human summary on stderr says the same as the JSON
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("experts:"))
    numbers = [int(n) for n in re.findall(r"\d+", line)[:6]]  # routes, hits hi/lo, loads hi/lo, skipped
    assert numbers == [stats["routes_total"], stats["hits_hi"], stats["hits_lo"], stats["loads_hi"],
                       stats["loads_lo"], stats["skipped"]], line


def test_impossible_budget_names_the_minimum(files: dict[str, Path]) -> None:
    proc = run_hobbit("run", str(files["mixed"]), "-p", "hi", "-n", "2",
                      "--expert-budget", "1KiB")
    assert_one_line_error(proc, "below the minimum", f"one expert at {HI}")


@pytest.mark.parametrize("budget", ["abc", "0", "150%", "-5MiB"])
def test_bad_budget_values(files: dict[str, Path], budget: str) -> None:
    proc = run_hobbit("run", str(files["mixed"]), "-p", "hi", "-n", "2",
                      "--expert-budget", budget)
    assert_one_line_error(proc, "budget")


def test_bad_policy_name(files: dict[str, Path]) -> None:
    proc = run_hobbit("run", str(files["mixed"]), "-p", "hi", "-n", "2",
                      "--expert-budget", "50%", "--policy", "fifo")
    assert_one_line_error(proc, "unknown policy")


def test_direct_io_reads_the_same_experts(files: dict[str, Path], tmp_path: Path) -> None:
    # a fixed depth: the auto depth follows measured timings, which differ between the two
    common = {"expert_budget": "20%", "prefetch_depth": 2}
    buffered = ours(files["mixed"], Policy(**common, direct_io=False), tmp_path)
    direct = ours(files["mixed"], Policy(**common, direct_io=True), tmp_path)
    assert direct[0] == buffered[0]
    np.testing.assert_array_equal(direct[1], buffered[1])
    # the same decisions, so the same demand reads (how much of a prefetch was read before it
    # was taken back depends on the disk's timing)
    demand = [r[2]["bytes_loaded"] - r[2]["bytes_prefetched"] for r in (direct, buffered)]
    assert demand[0] == demand[1] > 0
    assert direct[2]["prefetch_issued"] == buffered[2]["prefetch_issued"]


def min_budget(path: Path, hi_only: bool) -> int:
    """The smallest budget, computed from the file independently of the engine: room for one
    expert at hi. Slots are cut in units of one lo expert (each projection padded to 64
    bytes); a hi copy spans as many whole units as its largest projection needs."""
    import gguf

    per_expert: dict[str, dict[str, int]] = {HI: {}, LO: {}}
    for t in gguf.GGUFReader(path).tensors:
        if t.name.startswith("blk.0.ffn_") and "_exps." in t.name:
            level = LO if f".{LO}." in t.name else HI
            per_expert[level][t.name.split(".")[2]] = int(t.n_bytes) // int(t.shape[-1])
    pad = {lvl: {p: -(-n // 64) * 64 for p, n in d.items()} for lvl, d in per_expert.items()}
    if hi_only:
        return sum(pad[HI].values())
    hi_span = max(-(-per_expert[HI][p] // pad[LO][p]) for p in pad[LO])
    return hi_span * sum(pad[LO].values())


LONG_PROMPT = ("The cache holds the experts that the router picks most often, and the policy decides "
               "which precision each missed expert is loaded at, so that prefill touches most experts")


def test_prefill_larger_than_the_slots_is_served_in_waves(files: dict[str, Path], tmp_path: Path) -> None:
    """hi-only at the smallest budget: a prompt needs every expert of a layer, the slots hold
    one; served in waves, nothing skipped, exactly the output of a budget that holds all."""
    budget = min_budget(files["mixed"], hi_only=True)
    results = {}
    for name, b in (("min", budget), ("all", "100%")):
        with Model(files["mixed"], policy=Policy(expert_budget=b, policy="hi-only"), n_ctx=512,
                   n_threads=2, logits_all=True) as model:
            tokens = model.tokenize_text(LONG_PROMPT)
            assert len(tokens) > 16
            model.eval(tokens)
            logits = np.array(model.scores[: len(tokens)], dtype=np.float32)
            stats = model.hobbit_stats()
            results[name] = (model.generate_text(LONG_PROMPT, max_tokens=8).tokens, logits, stats)
    with pytest.raises(HobbitError, match="below the minimum"):
        Model(files["mixed"], policy=Policy(expert_budget=budget - 64, policy="hi-only"), n_ctx=64)
    tokens, logits, stats = results["min"]
    assert stats["expert_slots_hi"] == 1
    assert stats["skipped"] == 0
    assert stats["n_waves"] > stats["n_calls"]  # the prompt needed several rounds per layer
    assert tokens == results["all"][0]
    np.testing.assert_array_equal(logits, results["all"][1])


def test_minimum_budget_never_skips_a_route(files: dict[str, Path], tmp_path: Path) -> None:
    budget = min_budget(files["mixed"], hi_only=False)
    with pytest.raises(HobbitError, match="below the minimum"):
        Model(files["mixed"], policy=Policy(expert_budget=budget - 64), n_ctx=64)
    policy = Policy(expert_budget=budget, policy="hobbit", skip_threshold=0.0)
    tokens, _, stats = ours(files["mixed"], policy, tmp_path)
    assert len(tokens) == N_TOKENS
    assert stats["skipped"] == 0
    assert stats["routes_total"] == (stats["hits_hi"] + stats["hits_lo"] + stats["loads_hi"]
                                     + stats["loads_lo"])
    # the leading route of every token (share >= 0.5 with top-2) is loaded at hi, never demoted
    assert stats["loads_hi"] >= stats["loads_lo"] > 0


def test_skip_threshold_drops_misses_only(files: dict[str, Path]) -> None:
    with Model(files["mixed"], policy=Policy(expert_budget="100%", skip_threshold=0.45), n_ctx=512,
               n_threads=2) as model:
        model.generate_text(PROMPT, max_tokens=N_TOKENS)
        cold = model.hobbit_stats()
        assert cold["skipped"] > 0  # misses below the threshold were dropped
        # every expert the prompt selects is now cached: the same run skips nothing
        model.reset_hobbit_stats()
        model.generate_text(PROMPT, max_tokens=N_TOKENS)
        warm = model.hobbit_stats()
    assert warm["skipped"] < cold["skipped"]
    assert warm["loads_hi"] + warm["loads_lo"] < cold["loads_hi"] + cold["loads_lo"]


def test_unknown_hobbit_setting_is_refused(files: dict[str, Path]) -> None:
    from hobbit_py import capi
    from hobbit_py._lib import load_llama_cpp

    llama_cpp = load_llama_cpp()
    with pytest.raises(ValueError):
        llama_cpp.Llama(model_path=str(files["mixed"]), n_ctx=64, verbose=False,
                        kv_overrides={"hobbit.budget_bytes": 10**7, "hobbit.budjet": 1})
    assert "unknown setting hobbit.budjet" in capi.last_error()


def test_a_load_error_is_not_reported_by_the_next_load(files: dict[str, Path], tmp_path: Path) -> None:
    from hobbit_py import capi
    from hobbit_py._lib import load_llama_cpp

    llama_cpp = load_llama_cpp()
    with pytest.raises(ValueError):
        llama_cpp.Llama(model_path=str(files["mixed"]), n_ctx=64, verbose=False,
                        kv_overrides={"hobbit.budget_bytes": 1})
    assert "below the minimum" in capi.last_error()
    # a load that fails for another reason starts from a clean slate
    short = tmp_path / "short.gguf"
    short.write_bytes(files["mixed"].read_bytes()[:100_000])
    with pytest.raises(ValueError):
        llama_cpp.Llama(model_path=str(short), n_ctx=64, verbose=False)
    assert capi.last_error() == ""
    # and a successful HOBBIT load too
    llm = llama_cpp.Llama(model_path=str(files["mixed"]), n_ctx=64, verbose=False,
                          kv_overrides={"hobbit.budget_bytes": 10**7})
    assert capi.active(llm.model) and capi.last_error() == ""
    llm.close()


@pytest.mark.parametrize("direct_io", [True, False])
def test_direct_io_bypasses_the_page_cache(files: dict[str, Path], direct_io: bool) -> None:
    """With O_DIRECT no expert page enters the page cache; buffered loads do bring them in
    (which shows the check can see them). Weights are copied at load (no mmap), so after the
    pages are dropped only expert loads can read the file."""
    import gguf

    path = files["mixed"]
    experts = [(int(t.data_offset), int(t.data_offset) + int(t.n_bytes))
               for t in gguf.GGUFReader(path).tensors if "_exps" in t.name]
    policy = Policy(expert_budget="20%", direct_io=direct_io)
    with Model(path, policy=policy, n_ctx=256, n_threads=2, use_mmap=False) as model:
        drop_from_page_cache(path)
        assert resident_fraction(path, experts) == 0.0
        model.generate_text(PROMPT, max_tokens=N_TOKENS)
        assert model.hobbit_stats()["bytes_loaded"] > 0
        resident = resident_fraction(path, experts)
    if direct_io:
        assert resident == 0.0
    else:
        assert resident > 0.25


def test_load_time_policy_settings(files: dict[str, Path]) -> None:
    """hobbit.policy and hobbit.prefetch_depth set the policy a model starts with (what
    llama.cpp's own programs use, through --override-kv); a CPU build is on the CPU tier."""
    from hobbit_py import capi
    from hobbit_py._lib import load_llama_cpp

    llama_cpp = load_llama_cpp()
    llm = llama_cpp.Llama(model_path=str(files["mixed"]), n_ctx=64, verbose=False, n_gpu_layers=99,
                          kv_overrides={"hobbit.budget_bytes": 10**7, "hobbit.policy": "fld",
                                        "hobbit.prefetch_depth": 2, "hobbit.warm": 1})
    policy = capi.get_policy(llm.model)
    assert policy["eviction"] == capi.EVICTION["fld"] and policy["prefetch_depth"] == 2
    llm.eval(llm.tokenize(b"The cache"))
    stats = capi.get_stats(llm.model)
    assert stats["tier"] == 0 and stats["host_tier_bytes"] == 0
    assert stats["bytes_read"] == stats["bytes_loaded"] > 0
    assert stats["gpu_gap_ms"] == 0.0  # no hand-overs from a GPU on the CPU tier
    assert stats["warm_posted"] == stats["warm_used"] == 0  # hobbit.warm is the GPU tier's (hobbit-warm.h)
    for bad, message in (({"hobbit.policy": "fifo"}, "unknown hobbit.policy fifo"),
                         ({"hobbit.prefetch_depth": 7}, "invalid policy"),
                         ({"hobbit.split_cpu_pct": 0}, "hobbit.split_cpu_pct must be between 1 and 99, got 0"),
                         ({"hobbit.split_cpu_pct": 100}, "hobbit.split_cpu_pct must be between 1 and 99, got 100"),
                         ({"hobbit.warm": 3}, "hobbit.warm must be 0, 1 or 2, got 3")):
        with pytest.raises(ValueError):
            llama_cpp.Llama(model_path=str(files["mixed"]), n_ctx=64, verbose=False,
                            kv_overrides={"hobbit.budget_bytes": 10**7, **bad})
        assert message in capi.last_error()
