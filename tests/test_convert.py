"""`hobbit convert` against stock llama.cpp: same bytes as llama-quantize, same tokens.

For each architecture a tiny random checkpoint in real HF format is converted at one
precision and compared with what the pinned tree's convert_hf_to_gguf.py + llama-quantize
make: every tensor must be byte-identical, and greedy generation in stock llama.cpp (and
the patched build, once built) must give the same tokens. Expert copies of multi-precision
files are checked against the source with gguf-py's own dequantisers.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, quants

sys.path.insert(0, str(Path(__file__).parent))
import hf_fixtures as F  # noqa: E402

from tests.conftest import require  # noqa: E402

require((F.STOCK_BIN / "llama-quantize").exists(), "llama-quantize of the stock build (make build-stock)")

# relative RMS error a type may add on N(0, s) weights (a loose multiple of the typical error)
MAX_REL_RMSE = {"F32": 0.0, "F16": 1e-3, "BF16": 8e-3, "Q8_0": 0.01, "Q6_K": 0.03, "Q5_K": 0.05,
                "Q5_0": 0.06, "Q5_1": 0.06, "Q4_K": 0.1, "Q4_0": 0.12, "Q4_1": 0.12,
                "IQ4_NL": 0.1, "IQ4_XS": 0.1, "Q3_K": 0.2, "Q2_K": 0.45}


@pytest.fixture(scope="session")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hf")


def tensors(path: Path) -> dict[str, Any]:
    return {t.name: t for t in GGUFReader(path).tensors}


def field(path: Path, key: str) -> Any:
    f = GGUFReader(path).get_field(key)
    return None if f is None else f.contents()


def assert_same_tensors(ours: Path, ref: Path) -> None:
    a, b = tensors(ours), tensors(ref)
    assert sorted(a) == sorted(b)
    diff = [n for n in a if a[n].tensor_type != b[n].tensor_type or a[n].data.tobytes() != b[n].data.tobytes()]
    assert not diff, f"tensors differ from llama-quantize's: {diff}"


def assert_same_generation(ours: Path, ref: Path) -> None:
    """Prompt ids, greedy ids and first logits of our file on the stock and the patched
    library equal stock llama.cpp's on the llama-quantize reference, exactly.

    (Token ids through llama-cpp-python, not llama-completion's text: the pinned
    llama-completion can lose the end of its stdout at exit.)"""
    g_ref = F.greedy_tokens(F.STOCK_BIN, ref)
    assert g_ref is not None and len(g_ref["tokens"]) > 0
    for bin_dir in (F.STOCK_BIN, F.PATCHED_BIN):
        if (bin_dir / "libllama.so").exists():
            assert F.greedy_tokens(bin_dir, ours) == g_ref, f"generation on {bin_dir} differs"


def convert_ok(*args: str) -> str:
    r = F.run_cli("convert", *args)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    return r.stdout


@pytest.mark.parametrize("kind", F.ARCHS)
def test_one_precision_matches_llama_quantize(kind: str, base: Path, tmp_path: Path) -> None:
    ckpt = F.checkpoint(base, kind)
    ours = tmp_path / "ours.gguf"
    r = F.run_cli("convert", str(ckpt), "--bits", "8", "-o", str(ours))
    assert r.returncode == 0, r.stderr
    # the fixture's tokenizer is unknown to convert_hf_to_gguf.py: one warning says what was assumed
    assert [ln for ln in r.stderr.splitlines() if ln.strip()] == [
        "warning: convert_hf_to_gguf.py does not know this BPE tokenizer; using pre-tokenizer "
        "'gpt-2' because its split regex is gpt-2's"]
    assert "8 bits -> q8_0" in r.stdout
    ref = F.llama_quantize(F.intermediate(base, kind), tmp_path / "ref.gguf", "Q8_0")
    assert_same_tensors(ours, ref)

    reader = GGUFReader(ours)
    assert field(ours, "general.architecture") == F.EXPECTED[kind][0]
    assert field(ours, "hobbit.format_version") == 1
    assert field(ours, "hobbit.expert_types") == ["q8_0"]
    assert field(ours, "general.alignment") == 4096
    assert field(ours, "tokenizer.ggml.pre") == "gpt-2"
    assert reader.data_offset % 4096 == 0
    assert all(t.data_offset % 4096 == 0 for t in reader.tensors)
    assert_same_generation(ours, ref)


@pytest.mark.parametrize("kind", ["qwen2_moe", "deepseek_v2"])
def test_k_quant_matches_llama_quantize_pure(kind: str, base: Path, tmp_path: Path) -> None:
    """--bits 4: q4_k everywhere (q5_0 where rows are not multiples of 256), output q6_k."""
    inter = F.intermediate(base, kind)
    ours = tmp_path / "ours.gguf"
    convert_ok(str(inter), "--bits", "4", "-o", str(ours))
    ref = F.llama_quantize(inter, tmp_path / "ref.gguf", "Q4_K_S", "--pure", "--output-tensor-type", "q6_k")
    assert_same_tensors(ours, ref)
    assert_same_generation(ours, ref)


def rel_rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(b ** 2)))


def check_levels(src: Path, out: Path, names: list[str]) -> dict[str, set[str]]:
    """Every expert copy has its source's shape, dequantises close to it, expert by expert."""
    s, o = tensors(src), tensors(out)
    assert field(out, "hobbit.expert_types") == names
    experts = [n for n in s if n.endswith("_exps.weight") and len(s[n].shape) == 3]
    assert experts
    extra = {f"{n[:-len('.weight')]}.{lv}.weight" for n in experts for lv in names[1:]}
    assert set(o) == set(s) | extra
    used: dict[str, set[str]] = {lv: set() for lv in names}
    for n in experts:
        ref = quants.dequantize(s[n].data, s[n].tensor_type).astype(np.float32)
        for i, lv in enumerate(names):
            t = o[n if i == 0 else f"{n[:-len('.weight')]}.{lv}.weight"]
            assert list(t.shape) == list(s[n].shape)
            used[lv].add(t.tensor_type.name)
            deq = quants.dequantize(t.data, t.tensor_type)
            assert deq.shape == ref.shape
            err = rel_rmse(deq, ref)
            assert err <= MAX_REL_RMSE[t.tensor_type.name], (n, lv, t.tensor_type.name, err)
            # expert e is one contiguous byte range: its bytes alone give expert e
            raw = t.data.reshape(-1).view(np.uint8)
            per = raw.nbytes // int(t.shape[2])
            e = int(t.shape[2]) - 1
            one = raw[e * per:(e + 1) * per]
            if t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
                one = one.view(np.float32 if t.tensor_type == GGMLQuantizationType.F32 else np.float16)
            part = quants.dequantize(one.reshape(deq.shape[1], -1), t.tensor_type)
            assert np.array_equal(part, deq[e])
    return used


@pytest.mark.parametrize("kind", F.ARCHS)
def test_two_precisions_dequantise_close(kind: str, base: Path, tmp_path: Path) -> None:
    inter = F.intermediate(base, kind)
    out = tmp_path / "two.gguf"
    stdout = convert_ok(str(inter), "--bits", "4,8", "-o", str(out))
    used = check_levels(inter, out, ["q8_0", "q4_k"])
    assert used["q8_0"] == {"Q8_0"}
    assert used["q4_k"] <= {"Q4_K", "Q5_0"}
    assert ("Q5_0" in used["q4_k"]) == ("written as q5_0" in stdout)


def test_every_width_with_fallbacks(base: Path, tmp_path: Path) -> None:
    """OLMoE's expert FFN is 128 wide: down_exps rows do not fit K-quants and fall back."""
    inter = F.intermediate(base, "olmoe")
    out = tmp_path / "all.gguf"
    stdout = convert_ok(str(inter), "--bits", "2,3,4,5,6,8,16", "-o", str(out))
    names = ["f16", "q8_0", "q6_k", "q5_k", "q4_k", "q3_k", "q2_k"]
    used = check_levels(inter, out, names)
    assert used["q6_k"] == {"Q6_K", "Q8_0"} and used["q5_k"] == {"Q5_K", "Q5_1"}
    assert used["q4_k"] == {"Q4_K", "Q5_0"} and used["q3_k"] == {"Q3_K", "Q4_0"}
    assert used["q2_k"] == {"Q2_K", "Q4_0"}
    for want, got in [("q6_k", "q8_0"), ("q5_k", "q5_1"), ("q4_k", "q5_0"), ("q3_k", "q4_0"), ("q2_k", "q4_0")]:
        assert f"{want}: blk.*.ffn_down_exps.weight (2 tensors) written as {got}" in stdout
    assert "16 bits -> f16" in stdout and "2 bits -> q2_k" in stdout


def test_type_names_and_base_type(base: Path, tmp_path: Path) -> None:
    inter = F.intermediate(base, "qwen3_moe")
    out = tmp_path / "names.gguf"
    convert_ok(str(inter), "--bits", "IQ4_NL,q5_0", "--base-type", "f16", "-o", str(out))
    check_levels(inter, out, ["q5_0", "iq4_nl"])
    t = tensors(out)
    assert t["blk.0.attn_q.weight"].tensor_type == GGMLQuantizationType.F16
    assert t["blk.0.ffn_gate_inp.weight"].tensor_type == GGMLQuantizationType.F32
    assert t["blk.0.attn_norm.weight"].tensor_type == GGMLQuantizationType.F32


def test_fused_gate_up_experts(base: Path, tmp_path: Path) -> None:
    """A GGUF with fused ffn_gate_up_exps tensors converts too (one range per expert)."""
    inter = F.fuse_gate_up(F.intermediate(base, "deepseek_v2"), tmp_path / "fused.gguf")
    assert "blk.1.ffn_gate_up_exps.weight" in tensors(inter)
    ours = tmp_path / "fused8.gguf"
    convert_ok(str(inter), "--bits", "8", "-o", str(ours))
    ref = F.llama_quantize(inter, tmp_path / "ref.gguf", "Q8_0")
    assert_same_tensors(ours, ref)
    assert_same_generation(ours, ref)
    two = tmp_path / "fused84.gguf"
    convert_ok(str(inter), "--bits", "8,4", "-o", str(two))
    check_levels(inter, two, ["q8_0", "q4_k"])
    assert "blk.1.ffn_gate_up_exps.q4_k.weight" in tensors(two)


def test_requantise_quantised_gguf(base: Path, tmp_path: Path) -> None:
    src = F.llama_quantize(F.intermediate(base, "mixtral"), tmp_path / "q8.gguf", "Q8_0")
    out = tmp_path / "re.gguf"
    r = F.run_cli("convert", str(src), "--bits", "8,4", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "already quantised (q8_0)" in r.stderr and "second rounding error" in r.stderr
    s, o = tensors(src), tensors(out)
    # same type: level 0 is the source's bytes; q4_k comes from the dequantised q8_0
    assert o["blk.0.ffn_down_exps.weight"].data.tobytes() == s["blk.0.ffn_down_exps.weight"].data.tobytes()
    check_levels(src, out, ["q8_0", "q4_k"])


def test_hub_repo_from_offline_cache_sharded(base: Path, tmp_path: Path) -> None:
    """A repo id resolves through huggingface_hub (offline: the local cache); shards work."""
    ckpt = F.checkpoint(base, "mixtral", shards=True)
    assert (ckpt / "model.safetensors.index.json").exists()
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--hobbit-test--tiny-mixtral"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(ckpt, repo / "snapshots" / commit)
    env = F.lib_env({"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"})
    work = tmp_path / "cwd"
    work.mkdir()
    r = F.run_cli("convert", "hobbit-test/tiny-mixtral", "--bits", "8", env=env, cwd=work)
    assert r.returncode == 0, r.stderr
    out = work / "tiny-mixtral-hobbit-q8_0.gguf"  # the default name, in the current directory
    assert out.exists() and sorted(p.name for p in work.iterdir()) == [out.name]
    ref = F.llama_quantize(F.intermediate(base, "mixtral"), tmp_path / "ref.gguf", "Q8_0")
    assert_same_tensors(out, ref)
    r = F.run_cli("convert", "hobbit-test/not-cached", "--bits", "8", env=env, cwd=work)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "not in the Hugging Face cache" in r.stderr
