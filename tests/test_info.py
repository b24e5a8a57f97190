"""`hobbit info` reports the right numbers for HOBBIT and plain MoE GGUFs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader

sys.path.insert(0, str(Path(__file__).parent))
import hf_fixtures as F  # noqa: E402

from tests.conftest import require  # noqa: E402

require((F.STOCK_BIN / "llama-quantize").exists(), "llama-quantize of the stock build (make build-stock)")

Q = GGMLQuantizationType


@pytest.fixture(scope="session")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hf")


def row_bytes(t: GGMLQuantizationType, n: int) -> int:
    block, size = GGML_QUANT_SIZES[t]
    return n // block * size


def run_info(path: Path) -> dict:
    r = F.run_cli("info", str(path), "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_two_precision_file(base: Path, tmp_path: Path) -> None:
    """Qwen2-MoE: hidden 256, expert FFN 128, 8 experts (2 used), 1 shared expert, 2 layers."""
    inter = F.intermediate(base, "qwen2_moe")
    out = tmp_path / "two.gguf"
    r = F.run_cli("convert", str(inter), "--bits", "8,4", "-o", str(out))
    assert r.returncode == 0, r.stderr
    info = run_info(out)
    hidden, ff, n_exp = 256, 128, 8
    # one expert of one layer: gate and up are [ff rows x hidden], down is [hidden rows x ff]
    hi = 2 * ff * row_bytes(Q.Q8_0, hidden) + hidden * row_bytes(Q.Q8_0, ff)
    lo = 2 * ff * row_bytes(Q.Q4_K, hidden) + hidden * row_bytes(Q.Q5_0, ff)  # down: q4_k -> q5_0
    assert (hi, lo) == (104448, 59392)
    assert info["architecture"] == "qwen2moe"
    assert info["layers"] == 2 and info["expert_layers"] == [0, 1]
    assert info["experts_per_layer"] == 8 and info["experts_used_per_token"] == 2
    assert info["hobbit_format_version"] == 1
    assert [lv["name"] for lv in info["levels"]] == ["q8_0", "q4_k"]
    assert info["levels"][0]["types"] == {"q8_0": 6}
    assert info["levels"][1]["types"] == {"q4_k": 4, "q5_0": 2}
    assert info["levels"][0]["bytes_per_expert"] == [{"layer": 0, "bytes": hi}, {"layer": 1, "bytes": hi}]
    assert info["levels"][1]["bytes_per_expert"] == [{"layer": 0, "bytes": lo}, {"layer": 1, "bytes": lo}]
    assert info["levels"][0]["offloadable_bytes"] == 2 * n_exp * hi
    assert info["levels"][1]["offloadable_bytes"] == 2 * n_exp * lo
    # resident = what llama-quantize writes for everything but the routed experts
    ref = GGUFReader(F.llama_quantize(inter, tmp_path / "ref.gguf", "Q8_0"))
    resident = sum(int(t.n_bytes) for t in ref.tensors if "_exps." not in t.name)
    assert info["resident_bytes"] == resident
    assert info["file_bytes"] == out.stat().st_size

    r = F.run_cli("info", str(out))
    assert r.returncode == 0, r.stderr
    text = r.stdout
    assert "qwen2moe" in text and "HOBBIT v1, 2 precision(s)" in text
    assert "8 per layer, 2 used per token, 1 shared (resident)" in text
    assert "q4_k  (tensors: q4_k x4, q5_0 x2)" in text
    assert "102.0 KiB" in text and "58.0 KiB" in text  # hi and lo bytes per expert
    assert "0-1" in text


def test_plain_mixed_gguf(base: Path, tmp_path: Path) -> None:
    """A plain llama-quantize Q4_K_M file: one precision, named after its commonest expert type."""
    ref = F.llama_quantize(F.intermediate(base, "olmoe"), tmp_path / "q4km.gguf", "Q4_K_M")
    info = run_info(ref)
    assert info["hobbit_format_version"] is None
    assert len(info["levels"]) == 1
    types = {t.tensor_type.name.lower() for t in GGUFReader(ref).tensors if "_exps." in t.name}
    lv = info["levels"][0]
    assert set(lv["types"]) == types and sum(lv["types"].values()) == 6
    assert lv["name"] == max(lv["types"], key=lambda k: lv["types"][k])
    assert lv["offloadable_bytes"] == sum(int(t.n_bytes) for t in GGUFReader(ref).tensors if "_exps." in t.name)


def test_info_errors(base: Path, tmp_path: Path) -> None:
    for path, match in [(tmp_path / "missing.gguf", "no such file"),
                        (F.intermediate(base, "qwen2_dense"), "not a Mixture-of-Experts model")]:
        r = F.run_cli("info", str(path))
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode != 0 and "Traceback" not in r.stderr
        assert len(lines) == 1 and match in lines[0], r.stderr
